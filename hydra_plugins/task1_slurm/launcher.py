"""The Hydra plugin `hydra/launcher=slurm`: a thin door (task1.sweeps.door) to task1.sweeps.slurm.SlurmLauncher.

Hydra imports every module under hydra_plugins at each start, so this one imports Hydra and the door alone;
submitit and task1's launcher come in when a sweep is launched.
"""

from hydra.plugins.launcher import Launcher

from task1.sweeps.door import LauncherDoor


class SlurmLauncher(LauncherDoor, Launcher):
    """SLURM through submitit, with task1 owning requeue, resume and waiting (conf/hydra/launcher/ beside it)."""

    target = "task1.sweeps.slurm:SlurmLauncher"
