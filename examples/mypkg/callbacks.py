"""A Lightning callback of its own: the norm of the weights after every training epoch, one JSON line each."""

import json
from pathlib import Path

import lightning as L
import torch


class WeightNorms(L.Callback):
    """Appends {"epoch": e, "norm": ||w||} to `path` after every training epoch."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            norm = torch.sqrt(sum((p.detach() ** 2).sum() for p in pl_module.parameters()))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps({"epoch": trainer.current_epoch + 1, "norm": float(norm)}) + "\n")
