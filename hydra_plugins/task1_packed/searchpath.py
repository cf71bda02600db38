"""The Hydra plugin that puts the launcher's config (conf/hydra/launcher/packed.yaml beside this file) on every
app's search path, so that `hydra/launcher=packed` works in any Hydra app. Hydra imports it at every start, so it
imports Hydra alone."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class PackedSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="task1-packed", path="pkg://hydra_plugins.task1_packed.conf")
