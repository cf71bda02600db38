"""The Hydra plugins of task1's Optuna search: the sweeper `hydra/sweeper=optuna_search`, a thin door to
task1.sweeps.search.Search (searchpath.py lets any Hydra app find its configs: the sweeper and its `sampler` and
`pruner` groups in conf/hydra/sweeper/ beside this file, as hydra-optuna-sweeper's are found).

Hydra imports every module under hydra_plugins at each start, also for `--help` or a single run, so this one
imports Hydra alone; Optuna and task1 come in when a search is set up.
"""

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Optuna 5 samples, prunes and stores the study; Hydra's launcher runs the trials (conf/hydra/sweeper/ here)."""

    def __init__(self, **config: Any) -> None:
        from task1.sweeps.search import Search

        self.search = Search(**config)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        self.search.sweep(arguments)

