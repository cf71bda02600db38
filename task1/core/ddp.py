"""DDP under Hydra: Lightning re-launches this command for the other ranks; make that relaunch this one job."""

import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write
from torch import distributed as dist

from task1 import Task1Error

# what Lightning's DDP launcher sets in the environment of the process that starts the other ranks
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_before: tuple[dict[str, str | None], list[str]] | None = None  # the environment and argv a DDP job changed


def prepare_ddp_relaunch(output_dir: Path, resume: str | None = None) -> None:
    """Make Lightning's DDP launcher start the other ranks as this one job writing into `output_dir`.

    Lightning re-runs `python -m task1.train <this process's argv> hydra.run.dir=<hydra.run.dir>`. Inside a
    multirun that argv is the whole sweep and run.dir is not the job's folder: each rank would start a sweep of
    its own. So the ranks get this job's config (its config path and name: a sweep of a saved run's config
    composes that one) and overrides only, and run.dir is pointed at the job's folder. `restore()` undoes what
    this changes once the job is over, so that the next job of the sweep starts clean.
    """
    global _before
    restore()
    if not HydraConfig.initialized() or "LOCAL_RANK" in os.environ:  # not Hydra, or a rank started by a launcher
        return
    hc = HydraConfig.get()
    entry = getattr(getattr(sys.modules["__main__"], "__spec__", None), "name", None)
    relaunchable = entry in ("task1.train", "task1.tools.rerun")  # what Lightning can start again with -m
    if hc.mode == RunMode.MULTIRUN and not relaunchable and "SLURM_JOB_ID" not in os.environ:
        raise Task1Error("trainer=ddp in a multirun needs the default launcher (jobs one after the other): Lightning "
                         "starts the other ranks by running `python -m task1.train` again, which a joblib or "
                         "submitit_local worker is not. On SLURM, use hydra/launcher=slurm (its jobs get one task "
                         "per device).")
    _before = ({k: os.environ.get(k) for k in _DDP_ENV}, list(sys.argv))
    if hc.mode == RunMode.MULTIRUN:  # a job of a sweep started again may resume: its ranks too
        main = [s.path for s in hc.runtime.config_sources if s.provider == "main" and s.schema == "file"]
        config = ["--config-path", main[0], "--config-name", hc.job.config_name] if main else []
        sys.argv = [sys.argv[0], *config, *hc.overrides.task, *([f"++resume={resume}"] if resume else [])]
    with read_write(hc):
        hc.run.dir = str(output_dir)


def restore() -> None:
    """End what a DDP job left in this process: its process group, the environment Lightning set for its ranks,
    the argv its ranks were started with."""
    global _before
    if _before is None:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    env, argv = _before
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    sys.argv[:] = argv
    _before = None
