"""How a search launches its trials: asynchronously (n_jobs in flight, a new one as soon as any ends), one after
the other, or in batches of n_jobs.

Hydra's `Launcher.launch(overrides, initial_job_idx)` returns when every job it was given has ended, so a
sweeper that hands it n_jobs trials at a time waits, batch after batch, for the slowest trial of each (what
hydra-optuna-sweeper does; facebookresearch/hydra #3091). With `asynchronous: true` and a launcher that runs its
jobs in other processes (joblib, submitit_local, submitit_slurm, task1's slurm), the search keeps n_jobs calls of
`launch()` in flight instead, each of one trial, each waiting in a thread of its own; the main thread alone asks Optuna
for trials and tells it how each ended, as each ends.

Why threads around `launch()` rather than each launcher's executor (loky's futures, submitit's jobs): it is one
way, through the launchers' public interface, for all three. It is safe because these launchers run the job
itself (Hydra's run_job, which sets HydraConfig, configures logging, may change the working directory and
installs signal handlers) in another process. In this process `launch()` only reads Hydra's singletons to send
them to the job, makes the sweep folder, and (joblib) configures the sweeper's logging again, the same way
each time. The basic launcher runs the job in this process, where two jobs would share HydraConfig, the logging
config and the working directory, and where only the main thread takes signals: it runs one trial at a time, in
the main thread. task1's SLURM launcher composes and submits one launch at a time (a lock) and waits for its
jobs side by side; Ctrl-C ends every wait (the jobs go on). task1's joblib launcher (hydra/launcher=joblib) stops
its jobs where they stand on Ctrl-C, and they return. A launcher not known here gets batches, as Hydra's own
sweepers give it; so does task1's packed launcher (hydra/launcher=packed), on purpose: a batch of n_jobs trials
is what it trains as one pack, in this process and thread (task1.pack.launcher); and so does task1's SLURM
launcher with `hydra.launcher.pack` > 1, whose batch is one SLURM job per pack (task1.sweeps.slurm_packs).
Trials that an earlier start left unfinished are launched again in runs of consecutive numbers, a batch at most,
so that a pack stopped mid-run goes on as one pack. Whatever ends a launch, a trial is told what its job's
folder says (task1.sweeps.search).
"""

import itertools
import logging
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.utils import JobReturn, configure_log
from hydra.types import HydraContext
from omegaconf import DictConfig

from task1 import Task1Error

log = logging.getLogger("task1")
# the launchers whose jobs run in processes of their own (their modules, as the plugins name them)
ELSEWHERE = ("hydra_plugins.hydra_joblib_launcher.", "hydra_plugins.hydra_submitit_launcher.",
             "hydra_plugins.task1_slurm.", "hydra_plugins.task1_joblib.")


def mode(launcher: Any, asynchronous: bool) -> str:
    """`asynchronous`, `one at a time` (the basic launcher: jobs in this process) or `batches`."""
    if not asynchronous:
        return "batches"
    if type(launcher).__name__ == "BasicLauncher":
        return "one at a time"
    if getattr(launcher, "pack_size", 1) > 1:  # trials that are to share a pack are launched together
        return "batches"
    return "asynchronous" if type(launcher).__module__.startswith(ELSEWHERE) else "batches"


def stopped(config: DictConfig, hydra_context: HydraContext) -> NoReturn:
    """Ctrl-C of a sweep whose jobs run in this command's processes (basic, joblib), once each job under way has
    stopped where it stood (checkpoint written, metrics.json `interrupted`): the report of every job as it stands,
    one line that says how to go on, exit status 130."""
    hydra_context.callbacks.on_multirun_end(config=config)
    log.error("Interrupted: the jobs under way stopped where they stood (%s says where each one stands). Go on: "
              "run this command again (finished jobs are kept, the others resume from their checkpoints).",
              Path(str(config.hydra.sweep.dir)) / "summary.md")
    sys.exit(130)


class Inline:
    """An executor that runs each call at once, in this thread (the basic launcher's jobs, batches)."""

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as e:
            future.set_exception(e)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


class Run:
    """One command's share of a search: `to_run` trials, launched as `mode` says, and how they ended.

    Failures count as hydra-optuna-sweeper counts them: in batches of n_jobs trials, in the order they were
    launched; when the failed share of a batch passes max_failure_rate, no trial starts any more (`stopped_by`:
    the trial, its JobReturn and why it failed). Asynchronous trials end in any order, so a batch is judged as
    soon as its failures decide it.
    """

    def __init__(self, search: Any, to_run: int, again: list[tuple] = ()) -> None:
        # `again`: (trial, overrides) of trials an earlier start left unfinished, launched first (`_again`), and
        # counted in `to_run`
        self.search, self.to_run, self.again = search, max(0, to_run), list(again)
        self.mode = mode(search.launcher, search.asynchronous)
        self.width = search.n_jobs if self.mode == "asynchronous" else 1  # launches in flight
        self.per_launch = search.n_jobs if self.mode == "batches" else 1  # trials in a launch
        self.launched = self.failed = 0
        self.first_failure: tuple | None = None
        self.stopped_by: tuple | None = None
        self._failures: Counter[int] = Counter()

    def go(self, ask: Callable[[], tuple], tell: Callable[[Any, JobReturn], str | None],
           settle: Callable[[Any, JobReturn | None], None]) -> None:
        """Launch the trials that `ask` gives (trial, overrides) until `to_run` are launched or failures stop
        the search; `tell` each result as it comes (it returns the reason of a failure). When a launch raises,
        or Ctrl-C comes, the launches in flight are waited for and each of their trials is `settle`d (its
        result read from its folder: a trial whose job did not end stays running, for the next start)."""
        if not self.to_run:
            log.info("the study holds the trials asked for: there is nothing to run")
            return
        n_jobs = self.search.n_jobs
        log.info("trials: %s%s (%s)", self.mode, f", {n_jobs} in flight" if self.mode == "asynchronous" else
                 f" of {n_jobs}" if self.mode == "batches" else "", type(self.search.launcher).__name__)
        pool = ThreadPoolExecutor(self.width, thread_name_prefix="trial") if self.width > 1 else Inline()
        running: dict[Future, tuple[int, list]] = {}
        try:
            while True:
                while len(running) < self.width and self.launched < self.to_run and not self.stopped_by:
                    asked = self._again() if self.again else [
                        ask() for _ in range(min(self.per_launch, self.to_run - self.launched))]
                    first = asked[0][0].number
                    if [t.number for t, _ in asked] != list(range(first, first + len(asked))):
                        raise Task1Error(f"another process adds trials to study {self.search.study_name!r}: a batch "
                                         f"needs consecutive trial numbers (job N runs trial N). Run one search at "
                                         f"a time on a study.")
                    future = pool.submit(self.search.launcher.launch, [o for _, o in asked], initial_job_idx=first)
                    running[future] = (self.launched, [t for t, _ in asked])  # job N runs trial N
                    self.launched += len(asked)
                    if isinstance(pool, Inline):  # the job ran here and set up logging its own way
                        hydra = self.search.config.hydra
                        configure_log(hydra.hydra_logging, hydra.verbose)
                if not running:
                    return
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    position, trials = running[future]
                    results = future.result()  # a launch that raised: its trials are settled below, with the rest
                    del running[future]
                    for i, (trial, ret) in enumerate(zip(trials, results, strict=True)):
                        self._count(position + i, trial, ret, tell(trial, ret))
        except KeyboardInterrupt:  # a launcher whose jobs go on without this command says so, and ends its waits
            getattr(self.search.launcher, "interrupted", lambda: None)()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for future, (_, trials) in running.items():  # left by an exception: no trial goes untold
                ended = not future.cancelled() and future.exception() is None
                for trial, ret in itertools.zip_longest(trials, future.result() if ended else []):
                    settle(trial, ret)

    def _again(self) -> list[tuple]:
        """The next launch of trials left unfinished: those whose numbers follow the first's, a launch's worth at
        most (job N runs trial N: the numbers of a launch must follow each other)."""
        asked = [self.again.pop(0)]
        while self.again and len(asked) < self.per_launch and self.again[0][0].number == asked[-1][0].number + 1:
            asked.append(self.again.pop(0))
        return asked

    def _count(self, position: int, trial: Any, ret: JobReturn, reason: str | None) -> None:
        if reason is None:
            return
        self.failed += 1
        self.first_failure = self.first_failure or (trial, ret, reason)
        n_jobs, rate = self.search.n_jobs, self.search.max_failure_rate
        batch = position // n_jobs
        self._failures[batch] += 1
        size = min(n_jobs, self.to_run - batch * n_jobs)
        if self._failures[batch] / size > rate and not self.stopped_by:
            self.stopped_by = (trial, ret, reason)
            log.error("%d of the %d trials of batch %d failed, more than max_failure_rate=%s allows: no trial "
                      "starts any more", self._failures[batch], size, batch, rate)
