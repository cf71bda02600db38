"""Train one configured model: `python -m task1.train [overrides]`, or `train(cfg)` from Python."""

import json
import logging
import os
import sys
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from task1 import Task1Error
from task1.models import System
from task1.sweep import log_hparams, prepare_ddp_relaunch, thread_budget

log = logging.getLogger("task1")


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def build_system(cfg: DictConfig) -> System:
    """The LightningModule for `cfg.model`, `cfg.optimizer` and `cfg.scheduler`."""
    scheduler = OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else {}
    interval, frequency = scheduler.pop("interval", "epoch"), scheduler.pop("frequency", 1)
    return System(
        net=instantiate(cfg.model.net),
        loss=instantiate(cfg.model.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(scheduler) if scheduler else None,
        loss_reduction=cfg.model.loss_reduction,
        task=cfg.model.task,
        scheduler_interval=interval,
        scheduler_frequency=frequency,
    )


def summary_table(final: dict) -> str:
    """The final metrics as a small text table: one row per split."""
    columns = [c for c in ("loss", "acc") if any(k.endswith("/" + c) for k in final)]
    lines = ["split  " + "".join(f"{c:>10}" for c in columns)]
    for split in ("train", "val", "test"):
        if f"{split}/loss" in final:
            row = (final.get(f"{split}/{c}", float("nan")) for c in columns)
            lines.append(f"{split:<7}" + "".join(f"{v:>10.4f}" for v in row))
    return "\n".join(lines)


def train(cfg: DictConfig) -> dict:
    """Fit, then test, the configured model; write `metrics.json` into `cfg.output_dir`; return its contents."""
    start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = thread_budget(cfg.threads)
    if threads is not None:
        torch.set_num_threads(threads)
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    system = build_system(cfg)
    # checkpoints carry the resolved config as plain data: no pickled objects (loadable with weights_only)
    system.hparams["config"] = OmegaConf.to_container(cfg, resolve=True)
    monitor, mode = system.monitor
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=monitor, mode=mode,
                                 save_last=True, save_top_k=1, auto_insert_metric_name=False)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    if str(cfg.trainer.get("strategy", "")).startswith("ddp"):
        prepare_ddp_relaunch(out)
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=[checkpoint], default_root_dir=str(out),
                          deterministic=cfg.seed is not None)
    trainer.fit(system, datamodule=datamodule)
    test = trainer.test(system, datamodule=datamodule, verbose=False)[0]

    final = {k: v for k, v in (system.history[-1] if system.history else {}).items() if isinstance(v, float)}
    final.update({k: float(v) for k, v in test.items()})
    metrics = {"status": "completed", "seed": cfg.seed, "epochs": len(system.history),
               "wall_time_s": round(time.perf_counter() - start, 3), "threads": torch.get_num_threads(), "final": final,
               "history": system.history}
    if hasattr(system.net, "get_w_b"):  # linear regression: the learned parameters against the true ones
        w, b = system.net.get_w_b()
        true_w, true_b = datamodule.true_w, datamodule.true_b
        metrics.update(w=w.tolist(), b=float(b), true_w=true_w, true_b=true_b,
                       w_error=[t - v for t, v in zip(true_w, w.tolist(), strict=True)], b_error=true_b - float(b))
    if trainer.world_size > 1:  # every rank says what it ended with: they must agree (metrics are reduced)
        log.info("rank %d/%d final %s", trainer.global_rank, trainer.world_size, json.dumps(final, sort_keys=True))
    if trainer.is_global_zero:
        write_json(out / "metrics.json", metrics)
        for lg in trainer.loggers:  # the HParams tab: this run's hyperparameters with its final metrics
            if isinstance(lg, TensorBoardLogger):
                log_hparams(lg, system.hparams["config"], final, trainer.global_step)
        log.info("final metrics (%s)\n%s", out, summary_table(final))
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    start = time.perf_counter()
    try:
        metrics = train(cfg)
    except Exception as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # one failed job must not end the sweep
            return _record_failure(cfg, e, time.perf_counter() - start)
        if not isinstance(e, Task1Error):
            raise
        log.error("%s", e)
        sys.exit(1)
    metric = cfg.get("optimized_metric")
    return metrics["final"].get(metric) if metric else None


def _record_failure(cfg: DictConfig, e: Exception, seconds: float) -> None:
    """Log a failed sweep job and leave its status and error in its metrics.json, for the sweep report."""
    first = str(e).strip().split("\n")[0]
    error = first if isinstance(e, Task1Error) else f"{type(e).__name__}: {first}" if first else type(e).__name__
    log.error("job failed: %s", error, exc_info=not isinstance(e, Task1Error))
    if rank_zero_only.rank == 0:
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", {"status": "failed", "error": error, "seed": cfg.get("seed"),
                                          "wall_time_s": round(seconds, 3), "final": {}})


if __name__ == "__main__":
    main()
