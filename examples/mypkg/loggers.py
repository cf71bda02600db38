"""A Lightning logger of its own: every metric as a JSON line, the hyperparameters as one JSON file."""

import json
from pathlib import Path

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only


class JSONLinesLogger(Logger):
    """<save_dir>/metrics.jsonl: {"step": s, "train/loss_step": ...} per call; <save_dir>/hparams.json."""

    def __init__(self, save_dir: str):
        super().__init__()
        self.dir = Path(save_dir)

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def version(self) -> str:
        return ""

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "hparams.json").write_text(json.dumps(dict(params), default=str))

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")
