"""`hydra/launcher=joblib` as task1's launcher (launcher.py): hydra-joblib-launcher's config, every field of it,
under its name, with task1's _target_, put into Hydra's ConfigStore by `register`.

When: Hydra imports (and runs again) every module under hydra_plugins at each start, in the order of the folders
on sys.path, so hydra-joblib-launcher's config module, which registers `joblib`, may run after this one. Search
path plugins are asked after all of them, before any config is composed: SearchPath below registers then. (A
YAML file of the same name instead would be "validated against ConfigStore schema with the same name", with
Hydra's deprecation warning from every process of a sweep.)"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.search_path_plugin import SearchPathPlugin


def register() -> None:
    try:
        from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
    except ImportError:  # without hydra-joblib-launcher there is no joblib launcher to replace
        return
    node = {**vars(JobLibLauncherConf()), "_target_": "hydra_plugins.task1_joblib.launcher.JoblibLauncher"}
    ConfigStore.instance().store(group="hydra/launcher", name="joblib", node=node, provider="task1_joblib")


class SearchPath(SearchPathPlugin):
    """Adds no folder to the search path: it is Hydra's call, after every plugin module has run, to register."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        register()
