"""The Hydra plugin that puts the sweeper's configs (conf/hydra/sweeper/ beside this file) on every app's search
path. Hydra imports it at every start, so it imports Hydra alone."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class Task1OptunaSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="task1-optuna", path="pkg://hydra_plugins.task1_optuna.conf")
