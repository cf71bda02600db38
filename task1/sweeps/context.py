"""What a sweep job needs to know about the sweep it runs in: its share of the machine's cores, and whether it
is a trial of task1's Optuna search (without importing Optuna); and what a process that runs job after job does
for the next one."""

import gc
import os

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from task1.io import override_key

SEARCH = "hydra_plugins.task1_optuna.sweeper.OptunaSweeper"  # the sweeper's _target_


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def thread_budget(threads: int | None) -> int | None:
    """Torch threads for this job: `threads` when set on the command line; under the joblib launcher, the
    cores shared out among its parallel jobs (so n_jobs jobs never run more threads than there are cores)."""
    if not HydraConfig.initialized():
        return threads
    hc = HydraConfig.get()
    if any(override_key(o) == "threads" for o in hc.overrides.task):
        return threads
    n_jobs = OmegaConf.select(hc, "launcher.n_jobs")
    if n_jobs is None or "joblib" not in str(OmegaConf.select(hc, "launcher._target_")):
        return threads
    cores = _cores()
    parallel = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib: -1 is all cores, -2 all but one
    return max(1, cores // min(parallel, cores))


def in_sweep() -> bool:
    """Whether this process runs a job of a multirun (whatever its sweeper)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def is_search(hydra: DictConfig) -> bool:
    """Whether `hydra` (a config's hydra node) is that of a job of task1's Optuna search."""
    return hydra.get("mode") == RunMode.MULTIRUN and OmegaConf.select(hydra, "sweeper._target_") == SEARCH


def in_search() -> bool:
    """Whether this process runs a job of task1's Optuna search (task1.sweeps.trial finds its trial)."""
    return HydraConfig.initialized() and is_search(HydraConfig.get())


def keep_imports_out_of_gc() -> None:
    """After a sweep's first job in a process: what it imported (torch, Lightning: a million objects that live on)
    is moved out of the cyclic garbage collector's reach, after one full collection (gc.freeze). A full
    collection otherwise scans all of them, 0.2-0.3 s every few jobs (about 40 ms a job, measured); garbage of
    later jobs is collected as before. (Once, by a flag: gc.get_freeze_count() walks the frozen objects, 50 ms.)"""
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True


_frozen = False
