"""What a job needs to know about the sweep it runs in: its thread budget, DDP re-launch, the HParams record."""

import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, read_write
from torch import distributed as dist
from torch.utils.tensorboard.summary import hparams

from task1 import Task1Error


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def thread_budget(threads: int | None) -> int | None:
    """Torch threads for this job: `threads` when set on the command line; under the joblib launcher, the
    cores shared out among its parallel jobs (so n_jobs jobs never run more threads than there are cores)."""
    if not HydraConfig.initialized():
        return threads
    hc = HydraConfig.get()
    if any(o.split("=", 1)[0].lstrip("+~") == "threads" for o in hc.overrides.task):
        return threads
    n_jobs = OmegaConf.select(hc, "launcher.n_jobs")
    if n_jobs is None or "joblib" not in str(OmegaConf.select(hc, "launcher._target_")):
        return threads
    cores = _cores()
    parallel = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib: -1 is all cores, -2 all but one
    return max(1, cores // min(parallel, cores))


# what Lightning's DDP launcher sets in the environment of the process that starts the other ranks
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_env_before_ddp: dict[str, str | None] | None = None


def prepare_ddp_relaunch(output_dir: Path) -> None:
    """Make Lightning's DDP launcher start the other ranks as this one job writing into `output_dir`.

    Lightning re-runs `python -m task1.train <this process's argv> hydra.run.dir=<hydra.run.dir>`. Inside a
    multirun that argv is the whole sweep and run.dir is not the job's folder: each rank would start a sweep of
    its own. So the ranks get this job's overrides only, and run.dir is pointed at the job's folder. A previous
    DDP job of the same sweep left its process group and environment behind: both are cleared first, or this
    job would take itself for a rank started by someone else and talk to the finished job's ranks.
    """
    global _env_before_ddp
    if _env_before_ddp is not None:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for k, v in _env_before_ddp.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _env_before_ddp = None
    if not HydraConfig.initialized() or "LOCAL_RANK" in os.environ:  # not Hydra, or a rank started by a launcher
        return
    hc = HydraConfig.get()
    entry = getattr(getattr(sys.modules["__main__"], "__spec__", None), "name", None)
    if hc.mode == RunMode.MULTIRUN and entry != "task1.train" and "SLURM_JOB_ID" not in os.environ:
        raise Task1Error("trainer=ddp in a multirun needs the default launcher (jobs one after the other): Lightning "
                         "starts the other ranks by running `python -m task1.train` again, which a joblib or "
                         "submitit_local worker is not. On SLURM, use hydra/launcher=slurm with tasks_per_node set "
                         "to trainer.devices.")
    _env_before_ddp = {k: os.environ.get(k) for k in _DDP_ENV}
    if hc.mode == RunMode.MULTIRUN:
        sys.argv = [sys.argv[0], *hc.overrides.task]
    with read_write(hc):
        hc.run.dir = str(output_dir)


# not choices: where files go, and model.net/model.loss, which only repeat model.* by interpolation
_NOT_HPARAMS = ("output_dir", "optimized_metric", "logger/", "model/net/", "model/loss/", "data/root", "data/download")


def hparams_record(config: dict, final: dict, choices: dict | None = None) -> tuple[dict, dict]:
    """The HParams tab's view of a run: the config groups chosen (model=mlp) and the config's scalars as
    hyperparameters, the final metrics as hparams/*."""
    flat = {k: str(v) for k, v in (choices or {}).items() if not k.startswith("hydra/") and v is not None}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + "/")
            elif k not in ("_target_", "_partial_") and not key.startswith(_NOT_HPARAMS):
                flat[key] = v if isinstance(v, (int, float, str, bool)) else str(v)

    walk(config, "")
    return flat, {f"hparams/{k}": v for k, v in final.items()}


def log_hparams(logger, config: dict, final: dict, step: int) -> None:
    """Record this run in the HParams tab of a Lightning TensorBoardLogger: hyperparameters and final metrics.

    Only the session is written, no experiment summary: TensorBoard then builds the table from every run's
    session, so jobs with different keys (optimizer=sgd,adam) all show theirs (given one summary per run, it
    takes the first run's columns for all).
    """
    choices = OmegaConf.to_container(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else None
    params, metrics = hparams_record(config, final, choices)
    logger.log_metrics(metrics, step)
    _, start, end = hparams(params, metrics)
    writer = logger.experiment._get_file_writer()
    writer.add_summary(start, step)
    writer.add_summary(end, step)
    writer.flush()
