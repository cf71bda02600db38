"""Train one configured model: `python -m task1.train [overrides]`, or `train(cfg)` from Python."""

import json
import logging
import os
import sys
import time
from functools import partial
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from task1 import Task1Error
from task1.models import System

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
        loss=_plain_partial(instantiate(cfg.model.loss)),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(scheduler) if scheduler else None,
        loss_reduction=cfg.model.loss_reduction,
        task=cfg.model.task,
        scheduler_interval=interval,
        scheduler_frequency=frequency,
    )


def _plain_partial(fn):
    """Hydra's `_partial_` object re-runs its target-policy check on every call (about 0.4 ms, as much as a whole
    softmax step): the loss, called every step, becomes a plain functools.partial of the target Hydra checked."""
    return partial(fn.func, *fn.args, **fn.keywords) if isinstance(fn, partial) else fn


def summary_table(final: dict) -> str:
    """The final metrics as a small text table: one row per split."""
    columns = [c for c in ("loss", "acc") if any(k.endswith("/" + c) for k in final)]
    lines = ["split  " + "".join(f"{c:>10}" for c in columns)]
    for split in ("train", "val", "test"):
        if f"{split}/loss" in final:
            row = (final.get(f"{split}/{c}", float("nan")) for c in columns)
            lines.append(f"{split:<7}" + "".join(f"{v:>10.4f}" for v in row))
    return "\n".join(lines)


def build(cfg: DictConfig, callbacks: tuple[Callback, ...] = ()) -> tuple[L.LightningDataModule, System, L.Trainer]:
    """The data module, system and trainer that `train(cfg)` fits (also what scripts/bench.py times)."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
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
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=[checkpoint, *callbacks], default_root_dir=str(out),
                          deterministic=cfg.seed is not None)
    return datamodule, system, trainer


def train(cfg: DictConfig) -> dict:
    """Fit, then test, the configured model; write `metrics.json` into `cfg.output_dir`; return its contents."""
    start = time.perf_counter()
    out = Path(cfg.output_dir)
    datamodule, system, trainer = build(cfg)
    trainer.fit(system, datamodule=datamodule)
    test = trainer.test(system, datamodule=datamodule, verbose=False)[0]

    final = {k: v for k, v in (system.history[-1] if system.history else {}).items() if isinstance(v, float)}
    final.update({k: float(v) for k, v in test.items()})
    metrics = {"status": "completed", "seed": cfg.seed, "epochs": len(system.history),
               "wall_time_s": round(time.perf_counter() - start, 3), "final": final,
               "history": system.history}
    if hasattr(system.net, "get_w_b"):  # linear regression: the learned parameters against the true ones
        w, b = system.net.get_w_b()
        true_w, true_b = datamodule.true_w, datamodule.true_b
        metrics.update(w=w.tolist(), b=float(b), true_w=true_w, true_b=true_b,
                       w_error=[t - v for t, v in zip(true_w, w.tolist(), strict=True)], b_error=true_b - float(b))
    if trainer.is_global_zero:
        write_json(out / "metrics.json", metrics)
        for lg in trainer.loggers:  # the HParams tab: this run's hyperparameters with its final metrics
            if isinstance(lg, TensorBoardLogger):
                lg.log_hyperparams(_flat(system.hparams["config"]), {f"hparams/{k}": v for k, v in final.items()})
        log.info("final metrics (%s)\n%s", out, summary_table(final))
    return metrics


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested config -> {"optimizer/lr": 0.1, ...} with scalar values, as the HParams tab wants."""
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flat(v, key + "/"))
        elif k not in ("_target_", "_partial_"):
            flat[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except Task1Error as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweep records this job as failed and goes on
        log.error("%s", e)
        sys.exit(1)
    metric = cfg.get("optimized_metric")
    return metrics["final"].get(metric) if metric else None


if __name__ == "__main__":
    main()
