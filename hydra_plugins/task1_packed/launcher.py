"""The Hydra plugin `hydra/launcher=packed`: a thin door to task1.pack.launcher.PackedLauncher.

Hydra imports every module under hydra_plugins at each start, so this one imports Hydra alone; task1's packed
trainer comes in when a sweep is launched.
"""

from typing import Any

from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class PackedLauncher(Launcher):
    """The jobs that differ only in packable values trained as one pack (conf/hydra/launcher/ beside it)."""

    def __init__(self, **params: Any) -> None:
        from task1.pack.launcher import PackedLauncher as Launch

        self.launcher = Launch(**params)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides, initial_job_idx: int):
        return self.launcher.launch(job_overrides, initial_job_idx)
