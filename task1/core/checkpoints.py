"""Checkpoints that survive faults: periodic and on SIGTERM, never non-finite, loaded without running code."""

import pickle
import re
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from task1 import Task1Error
from task1.core.callbacks import DivergedError
from task1.io import atomic_open


class LastCheckpoint(Checkpoint):
    """Writes `path` (checkpoints/last.ckpt) every `every_n_steps` optimizer steps, at each epoch end, and when
    the process receives SIGTERM, so a killed run resumes from where it was.

    A Checkpoint subclass, so Lightning runs its epoch-end hook after the LightningModule's (whose history the
    file must hold). Every checkpoint save, of any callback, passes `on_save_checkpoint`: weights that are
    not finite are refused, so a diverged run never overwrites a good file.
    """

    def __init__(self, path: Path, every_n_steps: int | None = 100):
        self.path, self.every_n_steps = Path(path), every_n_steps
        self.started, self.before = time.perf_counter(), 0.0  # before: the earlier starts' time, when resuming

    @property
    def wall_time_s(self) -> float:
        """The run's time through all its starts: each start counted up to the checkpoint the next resumed from."""
        return self.before + time.perf_counter() - self.started

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.before = float(checkpoint.get("wall_time_s", 0.0))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches  # the epoch-end save follows
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0  # no gradients half accumulated
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and stepped and not last_of_epoch:
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Lightning raises SIGTERMException between two training batches: a consistent state to save
        if isinstance(exception, SIGTERMException) and trainer.training and not trainer.sanity_checking:
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        bad = [k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise DivergedError(trainer.current_epoch, trainer.global_step,
                                f"the weights {', '.join(bad)} are not finite")
        checkpoint["wall_time_s"] = self.wall_time_s


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to a temporary file beside the target, then renames it: a crash leaves the old file or the new one.

    (Lightning's own save stages the file in the system's temp folder, which a rename cannot cross when that
    is another file system: the file is then copied into place.)
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as f:
            torch.save(checkpoint, f)


def load_checkpoint(path: str | Path) -> dict:
    """torch.load with weights_only=True: tensors and plain data only, so a crafted file cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise Task1Error(f"ckpt_path={path}: no such file. Give the path of a .ckpt file written by task1 "
                         f"(a run's checkpoints/last.ckpt or checkpoints/best.ckpt).")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = re.findall(r"GLOBAL (\S+)", str(e))  # torch's words for a pickle that names other objects
        if names:
            raise Task1Error(f"{path} was refused: it holds objects other than tensors and plain data "
                             f"({', '.join(names)}), which could run code when loaded. "
                             f"Only load checkpoints written by task1.") from None
        raise Task1Error(f"{path} is not a checkpoint: torch.load cannot read it as tensors and plain data. "
                         f"Give the path of a .ckpt file written by task1.") from None
    except Exception as e:
        raise Task1Error(f"{path} is not a checkpoint (torch.load failed: {type(e).__name__}: {e}).") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise Task1Error(f"{path} is not a Lightning checkpoint (no state_dict in it).")
    return checkpoint


def check_compatible(path: str | Path, checkpoint: dict, model: torch.nn.Module) -> None:
    """Raise Task1Error unless `checkpoint` holds exactly `model`'s parameters, with the same shapes."""
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items() if isinstance(v, torch.Tensor)}
    if ours == theirs:
        return
    def names(keys) -> str:
        keys = sorted(keys)
        return ", ".join(keys[:4]) + (" ..." if len(keys) > 4 else "")

    diff = [f"{what} {names(keys)}" for what, keys in (("the model has", set(ours) - set(theirs)),
                                                         ("the checkpoint has", set(theirs) - set(ours))) if keys]
    diff += [f"{k} is {theirs[k]} in the checkpoint, {ours[k]} in the model" for k in ours
             if k in theirs and ours[k] != theirs[k]][:2]
    model_cfg = checkpoint.get("hyper_parameters", {}).get("config", {}).get("model", {})
    made_by = f" (it was written for model.net={model_cfg['net']['_target_']})" if "net" in model_cfg else ""
    raise Task1Error(f"{path} is not a checkpoint of this model{made_by}: {'; '.join(diff)}. Choose the model "
                     f"it was trained with, or another checkpoint.")
