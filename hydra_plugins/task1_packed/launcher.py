"""The Hydra plugin `hydra/launcher=packed`: a thin door (task1.sweeps.door) to task1.pack.launcher.PackedLauncher.

Hydra imports every module under hydra_plugins at each start, so this one imports Hydra and the door alone;
task1's packed trainer comes in when a sweep is launched.
"""

from hydra.plugins.launcher import Launcher

from task1.sweeps.door import LauncherDoor


class PackedLauncher(LauncherDoor, Launcher):
    """The jobs that differ only in packable values trained as one pack (conf/hydra/launcher/ beside it)."""

    target = "task1.pack.launcher:PackedLauncher"
