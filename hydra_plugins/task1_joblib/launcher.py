"""The Hydra plugin `hydra/launcher=joblib`: hydra-joblib-launcher's launcher, with a Ctrl-C that loses nothing.

Hydra's own, on Ctrl-C, leaves joblib to kill its worker processes (SIGKILL): the jobs under way stop without a
word in their metrics.json, the command ends in a traceback through joblib and writes no report. Here a Ctrl-C
of the command (from the terminal, which signals the workers too, or a SIGINT to the command alone) is passed
to the workers as a terminal's would be: each job under way stops at the end of its batch with its checkpoint
written and metrics.json `interrupted` (a job takes one Ctrl-C however many come), no other job starts (its
folder's metrics.json says it never began), and then the command writes the sweep report and ends in one line
that says how to go on (task1.sweeps.launching.stopped), with status 130. The same command again reuses the
jobs that finished and resumes the others from their checkpoints.

In a search whose trials wait in threads (task1.sweeps.launching), the main thread takes the Ctrl-C and calls
`interrupted`; the search then tells the study what each trial's folder says, and ends the same way.

Hydra imports every module under hydra_plugins at each start, so this one imports Hydra alone; joblib and task1
come in when a sweep is launched.
"""

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class JoblibLauncher(Launcher):
    """hydra-joblib-launcher's JoblibLauncher (the same fields), stopped by Ctrl-C as the module says."""

    def __init__(self, **params: Any) -> None:
        from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as HydraJoblib

        self.joblib, self.stopping = HydraJoblib(**params), False
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.stop_file = Path()

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        # what tells the workers that this command was stopped: a file of this command's, in the sweep folder
        self.stop_file = Path(str(config.hydra.sweep.dir)) / f".stopped.{os.getpid()}"
        self.joblib.setup(hydra_context=hydra_context, task_function=Job(task_function, str(self.stop_file)),
                          config=config)

    def launch(self, job_overrides, initial_job_idx: int):
        from task1.sweeps import launching

        here = threading.current_thread() is threading.main_thread()  # else a search's thread: it calls interrupted
        before = signal.signal(signal.SIGINT, lambda *_: self.interrupted()) if here else None
        self.stop_file.unlink(missing_ok=True)
        try:
            returns = self.joblib.launch(job_overrides, initial_job_idx)
        except Exception:  # a worker that the Ctrl-C ended between two jobs: its job's folder says where it stands
            if not self.stopping:
                raise
            returns = None
        finally:
            if here:
                signal.signal(signal.SIGINT, before)
        if not self.stopping:
            return returns
        self.stop_file.unlink(missing_ok=True)
        record_stop(Path(str(self.config.hydra.sweep.dir)))
        if here:
            launching.stopped(self.config, self.hydra_context)
        if returns is None:
            raise KeyboardInterrupt
        return returns

    def interrupted(self) -> None:
        """Ctrl-C: no job starts any more, and each under way is given SIGINT, as a terminal's Ctrl-C gives it."""
        if self.stopping:
            return
        self.stopping = True
        self.stop_file.touch()
        for pid in children():  # joblib's workers (its resource tracker ignores SIGINT, as the drawer does)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)


class Job:
    """The task function as a joblib worker runs it: not at all once the command was stopped, and stopped by
    the first Ctrl-C only (the terminal's and the command's both come)."""

    def __init__(self, task_function: TaskFunction, stop_file: str) -> None:
        self.task_function, self.stop_file = task_function, stop_file

    def __call__(self, cfg: DictConfig) -> Any:
        from task1.core.runs import run_dir
        from task1.sweeps import folders

        try:
            if os.path.exists(self.stop_file):
                return None  # the command stopped before this job began: record_stop says so in its folder
            signal.signal(signal.SIGINT, _once())
            sys.unraisablehook = quiet_unraisable
            try:
                return self.task_function(cfg)
            except KeyboardInterrupt:  # before the job's training took it: its folder says where it stands
                return None
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a worker between jobs is no job to stop
            if "output_dir" in cfg:  # task1's job (another Hydra app's job has no folder of task1's to let go)
                folders.release(run_dir(cfg))  # a job that did not get to its folder's hold lets it go (record_stop)


def _once() -> Callable[[int, Any], None]:
    """A SIGINT handler that raises KeyboardInterrupt the first time only. Not SIG_IGN after the first: Lightning,
    having taken that one, puts back the handler it found when its fit began (this one), and the command's SIGINT
    to its workers may come after the terminal's by then (a loaded machine); it would stop the job a second time,
    wherever it stands (in recording how it stopped, or in a __del__ that prints it as a traceback)."""
    taken = []

    def handler(signum: int, frame: Any) -> None:
        if not taken:
            taken.append(signum)
            raise KeyboardInterrupt

    return handler


def quiet_unraisable(unraisable: Any) -> None:
    """A Ctrl-C that lands in a finalizer (a `__del__` of Lightning's run between two jobs) cannot stop anything
    there: Python would print it as a traceback among the job's lines. Say nothing; any other error as Python does."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


def children() -> list[int]:
    """This process's child processes (Linux: /proc/self/task/*/children)."""
    pids = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            pids += [int(pid) for pid in (task / "children").read_text().split()]
    return pids


def record_stop(sweep: Path) -> None:
    """Every job folder of the sweep whose metrics.json holds no end (a job killed before its training, or that
    never began) says that it was stopped, and how it goes on."""
    from task1.sweeps import folders

    for saved in sweep.glob("*/.hydra/overrides.yaml"):
        folders.record_stop(saved.parent.parent, "The sweep was stopped (Ctrl-C)")
