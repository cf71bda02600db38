"""The Hydra plugin `hydra/launcher=slurm`: a thin door to task1.sweeps.slurm.SlurmLauncher.

Hydra imports every module under hydra_plugins at each start, so this one imports Hydra alone; submitit and task1
come in when a sweep is launched.
"""

from typing import Any

from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class SlurmLauncher(Launcher):
    """SLURM through submitit, with task1 owning requeue, resume and waiting (conf/hydra/launcher/ beside it)."""

    def __init__(self, **params: Any) -> None:
        from task1.sweeps.slurm import SlurmLauncher as Launch

        self.launcher = Launch(**params)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides, initial_job_idx: int):
        return self.launcher.launch(job_overrides, initial_job_idx)

    def interrupted(self) -> None:
        """Ctrl-C while a search's trials wait in other threads (task1.sweeps.launching)."""
        self.launcher.interrupted()
