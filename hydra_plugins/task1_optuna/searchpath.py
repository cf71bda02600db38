"""The Hydra plugin that puts the sweeper's configs (conf/hydra/sweeper/ beside this file, with its `sampler` and
`pruner` groups) on every app's search path. Hydra imports it at every start, so it imports Hydra alone."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class OptunaSearchPath(SearchPathPlugin):
    """After the app's own configs (which may override ours) and before Hydra's structured configs, where
    hydra-optuna-sweeper registers its `hydra/sweeper/sampler` options: beside it, task1's options are found."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="task1-optuna", path="pkg://hydra_plugins.task1_optuna.conf")
