"""What task1's Hydra launcher plugins share (hydra_plugins/task1_slurm, hydra_plugins/task1_packed): a thin door
that hands Hydra's calls to task1's own launcher, imported only when a sweep is launched.

Hydra imports every module under hydra_plugins at each start, so this one imports Hydra alone.
"""

import importlib
from typing import Any

from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class LauncherDoor:
    """Mixed in before hydra's Launcher: `target` ("module:Class") is the launcher that does the work."""

    target = ""

    def __init__(self, **params: Any) -> None:
        module, name = self.target.split(":")
        self.launcher = getattr(importlib.import_module(module), name)(**params)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides, initial_job_idx: int):
        return self.launcher.launch(job_overrides, initial_job_idx)

    @property
    def pack_size(self) -> int:
        """The most jobs the launcher trains as one pack (1: it does not pack)."""
        return getattr(self.launcher, "pack_size", 1)

    def interrupted(self) -> None:
        """Ctrl-C while a search's trials wait in other threads (task1.sweeps.launching), where the launcher
        has something to do then."""
        getattr(self.launcher, "interrupted", lambda: None)()
