"""Evaluate a checkpoint on the test split with the config of the run that made it.

    python -m task1.eval ckpt_path=outputs/runs/<run>/checkpoints/last.ckpt [paths.data_dir=... trainer.accelerator=cpu]

Checkpoints carry their run's resolved config (train.py puts it in the hyperparameters), so nothing else is needed;
`key=value` overrides adjust it. The data is read where the run read it, unless `paths.data_dir=<folder>` (or
TASK1_DATA_DIR, or `data.root=`) says it is elsewhere now.
"""

import logging
import os
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from task1 import Task1Error, cli
from task1.core.build import build_system, summary_table
from task1.core.checkpoints import load_checkpoint
from task1.data.module import DataModule

log = logging.getLogger("task1")


def run_checkpoint(ckpt_path: str | Path) -> tuple[DictConfig, dict]:
    """The run's config and the model's state_dict from a task1 checkpoint (no pickled objects are loaded)."""
    ckpt = load_checkpoint(ckpt_path)
    try:
        return OmegaConf.create(ckpt["hyper_parameters"]["config"]), ckpt["state_dict"]
    except (KeyError, TypeError):  # another program's checkpoint
        raise Task1Error(f"ckpt_path={ckpt_path} is not a task1 checkpoint (it has no run config). Pass a "
                         f"checkpoint written by python -m task1.train.") from None


def evaluate(ckpt_path: str | Path, overrides: list[str] = ()) -> dict[str, float]:
    """Test the checkpointed model on its run's test split; return {"test/loss": ..., "test/acc": ...}."""
    cfg, state_dict = run_checkpoint(ckpt_path)
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    keys = {o.split("=", 1)[0] for o in overrides}
    moved = "paths.data_dir" in keys or os.environ.get("TASK1_DATA_DIR")
    if moved and "data.root" not in keys and "root" in cfg.data:  # the run's data.root holds the path it resolved
        cfg.data.root = cli.paths(list(overrides))["data_dir"]
    if cfg.get("threads") is not None:
        torch.set_num_threads(cfg.threads)
    datamodule = DataModule(instantiate(cfg.data))
    system = build_system(cfg)
    system.load_state_dict(state_dict)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_model_summary=False)
    return {k: float(v) for k, v in trainer.test(system, datamodule=datamodule, verbose=False)[0].items()}


@cli.exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    ckpt = [a.split("=", 1)[1] for a in args if a.startswith("ckpt_path=")]
    if len(ckpt) != 1:
        print("usage: python -m task1.eval ckpt_path=<checkpoint> [key=value ...]", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    metrics = evaluate(ckpt[0], [a for a in args if not a.startswith("ckpt_path=")])
    print(f"{ckpt[0]}\n{summary_table(metrics)}")


if __name__ == "__main__":
    main()
