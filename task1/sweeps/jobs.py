"""What a sweep job needs to know about the sweep it runs in: its share of the machine's cores."""

import os

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf


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
