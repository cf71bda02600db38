"""Hyperparameter search with Optuna (`-m hparams_search=optuna`, or `hydra/sweeper=optuna_search` in any Hydra
app): Hydra's Sweeper interface to a stored study, with hydra-optuna-sweeper's config keys.

Optuna proposes each trial's parameters, decides which trials to prune and keeps the study in a storage; Hydra's
launcher (basic, joblib, SLURM) runs the trials as jobs, trial N as job N. A job finds its trial from its own
Hydra config (the sweeper's storage and study, `hydra.job.num`: task1.sweeps.trial), reports its metric there
after every epoch and stops when the pruner says so. The search space is written in Hydra's sweep syntax
(task1.sweeps.space), in `hydra.sweeper.params` or on the command line; `custom_search_space` names a function
that suggests more. Any other override goes to every trial as it is.

By default the study is Optuna's journal file `<sweep dir>/optuna_journal.log`, which works on shared file
systems (SLURM). The same command with the same `hydra.sweep.dir` goes on with the study up to `n_trials` in
all. One sweeper runs a study at a time. How trials are launched (in flight together, or in batches):
task1.sweeps.launching.
"""

import logging
import math
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import yaml
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.samplers import GridSampler
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import Trial, TrialState

from task1 import Task1Error, cli, error_line
from task1.io import holder, write_atomic
from task1.results import read_run
from task1.sweeps import launching
from task1.sweeps.folders import held
from task1.sweeps.space import grid, override_value, search_space

log = logging.getLogger("task1")
JOURNAL = "optuna_journal.log"  # the study's default storage, in the sweep folder
RESULTS = "optimization_results.yaml"
DIRECTIONS = ("minimize", "maximize")


def open_storage(spec: str) -> BaseStorage:
    """An RDB URL (`sqlite:///optuna.db`, `postgresql://...`) as Optuna's RDB storage; a file path as its
    journal file (written under a lock that works on NFS too, where SQLite's may not)."""
    if "://" in spec:
        return RDBStorage(spec)
    return JournalStorage(JournalFileBackend(spec))


def storage_spec(hydra: DictConfig) -> str:
    """The storage of the search that `hydra` (a Hydra config's hydra node) belongs to, as every process opens
    it: an RDB URL, or the journal file's absolute path (by default <sweep dir>/optuna_journal.log). Relative
    paths, also SQLite's, are the command's (hydra.runtime.cwd), also in a job that Hydra moved elsewhere."""
    spec, cwd = hydra.sweeper.get("storage"), Path(hydra.runtime.cwd)
    if spec and "://" in spec:
        sqlite = "sqlite:///"
        if spec.startswith(sqlite) and not spec.startswith(sqlite + "/") and ":memory:" not in spec:
            return sqlite + str(cwd / spec.removeprefix(sqlite))
        return spec
    return str(cwd / (spec or Path(hydra.sweep.dir) / JOURNAL))


def objective_values(value: Any, n: int) -> list[float]:
    """A job's return value as the study's `n` objective values: anything float() takes (a NumPy scalar, a
    0-d tensor, "1.5"), or a sequence of `n` of them; ValueError saying why not."""
    try:
        values = [float(value)] if n == 1 else [float(v) for v in value]
    except (TypeError, ValueError):
        expected = "a number" if n == 1 else f"a list of {n} numbers"
        raise ValueError(f"the job returned {value!r}, not {expected}") from None
    if len(values) != n:
        raise ValueError(f"the job returned {len(values)} values for {n} objectives: {value!r}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"the job returned {value!r}, which is not finite")
    return values


def failure_reason(ret: JobReturn) -> str | None:
    """Why a job failed, in one line: its exception; else what the run folder of a task1 job recorded (a task1
    job in a sweep records its error in metrics.json and returns None)."""
    if ret.status == JobStatus.FAILED:
        return error_line(ret._return_value)
    folder = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg else None
    return read_run(folder or ret.working_dir or ".").error or None


def frozen(study: optuna.Study, trial: Trial | int) -> optuna.trial.FrozenTrial:
    """The trial (or the trial of that number) as the storage has it now: a trial's number is its index."""
    return study.get_trials(deepcopy=False)[trial if isinstance(trial, int) else trial.number]


def tell(study: optuna.Study, trial: Trial | int, **kwargs: Any) -> None:
    """`study.tell`, also for a GridSampler's last grid point: its after_trial calls `study.stop()`, which Optuna
    allows inside `study.optimize` only and refuses with a RuntimeError here, after recording the trial (in a
    `finally`). The grid's end needs no stop: n_trials is cut to the grid's size."""
    try:
        study.tell(trial, **kwargs)
    except RuntimeError:
        if not isinstance(study.sampler, GridSampler) or frozen(study, trial).state == TrialState.RUNNING:
            raise


def may_pass(metrics: dict, folder: Path) -> bool:
    """Whether a task1 job that failed may pass when it runs again, as a sweep's job resumes
    (task1.sweeps.folders.ended): not a seeded divergence (`repeats`), and either its disk was full, or it had
    trained (its last checkpoint: its config is sound, what stopped it lies outside it, such as out of memory or a
    node lost). A job that failed before its first checkpoint for another reason (a config mistake) fails again."""
    if metrics.get("repeats"):
        return False
    error = str(metrics.get("error") or "").lower()
    return (folder / "checkpoints" / "last.ckpt").is_file() or "no space left on" in error


class Search(Sweeper):
    """Ask Optuna for trials, launch them, tell Optuna how each ended, until the study holds `n_trials`; then
    write the best trial (or the Pareto front) to optimization_results.yaml."""

    def __init__(self, sampler: DictConfig, pruner: DictConfig, direction: Any, study_name: str | None,
                 storage: str | None, n_trials: int, n_jobs: int, asynchronous: bool = True,
                 max_failure_rate: float = 0.0, params: DictConfig | None = None,
                 custom_search_space: str | None = None) -> None:
        self.sampler_cfg, self.pruner_cfg, self.direction = sampler, pruner, direction
        # storage is not kept: every process, the jobs' too, reads it from the config (storage_spec)
        self.study_name, self.n_trials, self.n_jobs = study_name, n_trials, n_jobs
        self.asynchronous, self.max_failure_rate = asynchronous, max_failure_rate
        self.params, self.custom_search_space = params or {}, custom_search_space

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        try:
            self._search(arguments)
        except Task1Error as e:  # a mistake in the search's set-up: one line, as for a job (task1.train.run)
            cli.fail(e)

    def _directions(self) -> list[str]:
        given = list(self.direction) if OmegaConf.is_list(self.direction) or isinstance(self.direction, list) \
            else [self.direction]
        if not given or any(d not in DIRECTIONS for d in given):
            raise Task1Error(f"hydra.sweeper.direction={self.direction} is not allowed: expected maximize or "
                             f"minimize, or a list of them (one per value the task returns).")
        return [str(d) for d in given]

    def _check(self) -> None:
        for name in ("n_trials", "n_jobs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise Task1Error(f"hydra.sweeper.{name}={value} is not allowed: expected an integer >= 1.")
        rate = self.max_failure_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise Task1Error(f"hydra.sweeper.max_failure_rate={rate} is not allowed: expected a number from 0 "
                             f"(stop at the first failed trial) to 1 (never stop for failures).")

    def _build(self, name: str, cfg: DictConfig, **kwargs: Any) -> Any:
        try:
            return instantiate(cfg, **kwargs)
        except Exception as e:  # Hydra's message ends in `full_key: ...`: the cause says what is wrong
            raise Task1Error(f"hydra.sweeper.{name} ({cfg.get('_target_')}) cannot be built: "
                             f"{error_line(e.__cause__ or e)}") from None

    def _sampler(self, space: dict, seed_offset: int) -> optuna.samplers.BaseSampler:
        """The configured sampler; a grid from the search space; reseeded past the trials already drawn."""
        kwargs: dict[str, Any] = {}
        if str(self.sampler_cfg.get("_target_", "")).endswith("GridSampler"):
            kwargs = {"search_space": grid(space), "_partial_": False}
        seed = self.sampler_cfg.get("seed")
        if seed is not None and seed_offset:  # seeded as at the start, it would draw the first trials again
            kwargs["seed"] = seed + seed_offset
        return self._build("sampler", self.sampler_cfg, **kwargs)

    def _open_study(self, storage: str, space: dict) -> optuna.Study:
        directions, backend = self._directions(), open_storage(storage)
        name = self.study_name
        if name is None:  # the storage's only study, or a new one
            names = [s.study_name for s in backend.get_all_studies()]
            if len(names) > 1:
                raise Task1Error(f"{storage} holds several studies ({', '.join(names)}): choose one with "
                                 f"hydra.sweeper.study_name=<name>.")
            name = names[0] if names else None
        study = optuna.create_study(storage=backend, study_name=name, directions=directions, load_if_exists=True,
                                    pruner=self._build("pruner", self.pruner_cfg))
        found = [d.name.lower() for d in study.directions]
        if found != directions:
            raise Task1Error(f"study {study.study_name!r} in {storage} was made to {found}, not to {directions}: "
                             f"give the search another study_name or storage.")
        study.sampler = self._sampler(space, len(study.get_trials(deepcopy=False)))
        return study

    def _search(self, arguments: list[str]) -> None:
        self._check()
        preset = [f"{k}={v if isinstance(v, str) else override_value(v)}" for k, v in self.params.items()]
        space, fixed = search_space(preset + list(arguments))
        custom = self._custom()
        if not space and custom is None:
            raise Task1Error("there is nothing to search: hydra.sweeper.params (or the command line) holds no "
                             "choice(...), range(...) or interval(...), and no custom_search_space is set.")
        storage = storage_spec(self.config.hydra)
        if "://" not in storage:
            Path(storage).parent.mkdir(parents=True, exist_ok=True)
        study = self._open_study(storage, space)
        elsewhere, again = self._left_running(study)
        total = self.n_trials
        if isinstance(study.sampler, GridSampler):  # each point once
            total = min(total, math.prod(len(v) for v in grid(space).values()))
            if total < self.n_trials:
                log.info("n_trials=%d cut to the grid's %d points", self.n_trials, total)
        done = len(study.get_trials(deepcopy=False))  # with those to launch again: they keep their numbers
        log.info("study %r: %d of %d trials done; sampler %s, pruner %s; to watch it: optuna-dashboard %s",
                 study.study_name, done - len(again) - len(elsewhere), total, type(study.sampler).__name__,
                 type(study.pruner).__name__, storage)
        again = [(self._trial(study, t.number), self._overrides(t.params, fixed)) for t in again]
        run = launching.Run(self, max(0, total - done) + len(again), again)
        try:
            run.go(lambda: self._ask(study, space, fixed, custom), lambda trial, ret: self._finish(study, trial, ret),
                   lambda trial, ret: self._finish(study, trial, ret, wait=False))
        except KeyboardInterrupt:  # the jobs ran in this command's processes (basic, joblib) and have stopped
            self._write_results(study, storage)
            launching.stopped(self.config, self.hydra_context)
        self._collect(study, elsewhere)
        self._write_results(study, storage)
        self._end(run, [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))])

    def _left_running(self, study: optuna.Study) -> tuple[list[int], list[optuna.trial.FrozenTrial]]:
        """The trials an earlier start left running, each as its job's folder has it (a Ctrl-C, a kill, a
        launch that raised): one whose job ended (meanwhile, perhaps) is told that end; one whose job still holds
        its folder (a SLURM job goes on without the command that launched it) is waited for at the end
        (`_collect`); any other is launched again, with its own number and parameters (returned): its job resumes
        from its checkpoint, or starts if it never did. (A SLURM job still queued from the earlier start finds,
        when it starts, the folder held by the new one, or its result there: it trains nothing.)"""
        elsewhere, again = [], []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            folder = self._folder(trial.number)
            if self._task1() and held(folder):
                log.info("trial %d still runs (%s): the search takes its result when it ends", trial.number,
                         holder(folder))
                elsewhere.append(trial.number)
            elif (outcome := self._outcome(study, trial.number, None, wait=False)) and \
                    outcome[0] != TrialState.RUNNING:
                self._finish(study, self._trial(study, trial.number), None, wait=False)
            else:
                why = f"failed in an earlier start in a way that may pass ({outcome[2]})" if outcome else \
                    "was left running by a search that stopped, before its job ended"
                log.info("trial %d %s: it is launched again (it resumes from %s if there is one)",
                         trial.number, why, folder / "checkpoints" / "last.ckpt")
                again.append(trial)
        return elsewhere, again

    def _collect(self, study: optuna.Study, numbers: list[int]) -> None:
        """Wait for the jobs of trials launched by an earlier start, and tell the study how each ended."""
        for number in numbers:
            self._finish(study, self._trial(study, number), None)

    def _task1(self) -> bool:
        """Whether the jobs are task1's, which write their result to their folder's metrics.json (job N, trial N,
        in folder N); another Hydra app's result is what its task function returns."""
        return "optimized_metric" in self.config

    def _folder(self, number: int) -> Path:
        return Path(self.config.hydra.sweep.dir) / str(number)  # job N runs trial N, in folder N

    @staticmethod
    def _trial(study: optuna.Study, number: int) -> Trial:
        return Trial(study, frozen(study, number)._trial_id)

    def _custom(self):
        if not self.custom_search_space:
            return None
        try:
            return get_method(self.custom_search_space)
        except Exception as e:
            raise Task1Error(f"hydra.sweeper.custom_search_space={self.custom_search_space} cannot be imported "
                             f"({error_line(e.__cause__ or e)}): give module.function, the module importable "
                             f"from where the command runs.") from None

    def _ask(self, study: optuna.Study, space: dict, fixed: dict[str, str], custom) -> tuple[Trial, list[str]]:
        """A new trial and its job's overrides: the sampled values, then the fixed overrides as given (each also
        a user attribute of the trial, as hydra-optuna-sweeper records them)."""
        trial = study.ask(space)
        given = {k: line.split("=", 1)[1] for k, line in fixed.items() if "=" in line and not k.startswith("~")}
        for key, value in given.items():
            trial.set_user_attr(key, value)
        if custom is not None:
            custom(self.config, trial)
        clash = sorted(set(trial.params) & set(given))
        if clash:
            tell(study, trial, state=TrialState.FAIL)
            raise Task1Error(f"hydra.sweeper.custom_search_space={self.custom_search_space} suggests "
                             f"{', '.join(clash)}, which the overrides fix ({', '.join(fixed[k] for k in clash)}): "
                             f"leave them to one of the two.")
        return trial, self._overrides(trial.params, fixed)

    @staticmethod
    def _overrides(params: dict, fixed: dict[str, str]) -> list[str]:
        """A trial's job's overrides: its sampled values, then the fixed overrides as given."""
        return [*(f"{k}={override_value(v)}" for k, v in params.items()), *fixed.values()]

    def _finish(self, study: optuna.Study, trial: Trial, ret: JobReturn | None, wait: bool = True) -> str | None:
        """Finish a trial its job left running, as `_outcome` finds its end: complete with its values, pruned, or
        failed with the reason (logged, and the trial's user attribute `fail_reason`); a trial whose job did not
        end stays running, for the next start, and so does one whose job failed in a way that may pass (its reason is
        returned: it failed in this start). A pruned trial was finished by its job (task1.sweeps.trial), as Optuna's
        own workers do. Returns the reason of a failure."""
        if frozen(study, trial).state == TrialState.RUNNING:
            outcome = self._outcome(study, trial.number, ret, wait)
            if outcome is None or outcome[0] == TrialState.RUNNING:
                log.warning("trial %d %s: it stays running in the study, and the next start of this search launches "
                            "it again (it resumes from its checkpoint)", trial.number,
                            f"failed in a way that may pass ({outcome[2]})" if outcome else "stopped before its end")
                return outcome and outcome[2]
            state, values, reason = outcome
            if reason:
                trial.set_user_attr("fail_reason", reason)  # shown by optuna-dashboard
            tell(study, trial, values=values, state=state)
        ended = frozen(study, trial)
        reason = ended.user_attrs.get("fail_reason") if ended.state == TrialState.FAIL else None
        if reason:
            log.warning("trial %d failed: %s", trial.number, reason)
        else:
            log.info("trial %d: %s%s", trial.number, ended.state.name.lower(),
                     f" ({', '.join(f'{v:.4g}' for v in ended.values)})" if ended.values else "")
        return reason

    def _outcome(self, study: optuna.Study, number: int, ret: JobReturn | None,
                 wait: bool) -> tuple[TrialState, list[float] | None, str | None] | None:
        """How trial `number` ended: (state, values, reason of a failure), or None while its job has not ended.

        A task1 job's end is what its folder's metrics.json says, whatever the launch returned or whether it
        returned at all (a launch that raised, a command that was stopped): completed (its optimized_metric),
        pruned or failed; `interrupted`, or no record, is no end (it resumes). A failure that may pass (`may_pass`)
        is RUNNING with its reason: failed in this start, but not over: the next start launches it again. A folder
        that a live process holds is waited for (`wait`), else no end yet. Another app's end is its job's return
        value."""
        n = len(study.directions)
        if self._task1():
            ran = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret and ret.hydra_cfg else None
            folder = Path(ran) if ran else self._folder(number)
            if held(folder):
                if not wait:
                    return None
                while held(folder):
                    time.sleep(2)
            run = read_run(folder)
            if run.status == "completed":
                try:
                    return TrialState.COMPLETE, objective_values(run.final.get(self.config.optimized_metric), n), None
                except ValueError as e:
                    return TrialState.FAIL, None, str(e)
            if run.status == "pruned":
                return TrialState.PRUNED, None, None
            if run.status == "failed":  # no end yet where it may pass: it resumes, as a sweep's job does
                return (TrialState.RUNNING if may_pass(run.data, folder) else TrialState.FAIL), None, \
                    run.error or "its job failed"
            if ret is not None and ret.status == JobStatus.FAILED:  # it raised before it recorded anything
                return TrialState.FAIL, None, failure_reason(ret)
            return None
        if ret is None:
            return None
        try:
            if ret.status != JobStatus.COMPLETED:
                raise ValueError(ret.status.name)
            return TrialState.COMPLETE, objective_values(ret.return_value, n), None
        except ValueError as e:
            return TrialState.FAIL, None, failure_reason(ret) or str(e)

    def _end(self, run: "launching.Run", left: list[int]) -> None:
        """Say which trials are `left` to go on (stopped, or failed in a way that may pass); exit with status 1
        when the failures stopped the search (max_failure_rate) or every trial failed for good (after the report),
        else 0: a trial left to go on is a sweep's failed job, which the next start resumes."""
        go_on = (f"{len(left)} trial{'s' if len(left) > 1 else ''} left to go on ({', '.join(map(str, left))}): run "
                 f"this command again, and they resume from their checkpoints" if left else "")
        if not run.stopped_by and not (run.launched and run.failed == run.launched and not left):
            if go_on:
                log.warning("%s", go_on[0].upper() + go_on[1:])
            return
        trial, ret, reason = run.stopped_by or run.first_failure
        if ret.status == JobStatus.FAILED:  # the job's own traceback, as Hydra would show it
            error = ret._return_value
            log.error("trial %d (%s) raised:\n%s", trial.number, " ".join(ret.overrides or []),
                      "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip())
        why = (f"{run.failed} of {run.launched} trials failed" if not run.stopped_by else
               f"the search stopped: more than hydra.sweeper.max_failure_rate={self.max_failure_rate} of a batch "
               f"of {self.n_jobs} trials failed ({run.failed} of {run.launched} launched)")
        self.hydra_context.callbacks.on_multirun_end(config=self.config)  # the sweep report, before the exit
        cli.fail(Task1Error(f"{why}; trial {trial.number}: {reason}" + (f"; {go_on}" if go_on else "")))

    def _write_results(self, study: optuna.Study, storage: str) -> None:
        trials = study.get_trials(deepcopy=False)
        directions = [d.name.lower() for d in study.directions]
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "storage": storage,
                                   "direction": directions[0] if len(directions) == 1 else directions}
        if self.config.get("optimized_metric"):  # a task1 search: what the sweep report ranks as the study does
            results["optimized_metric"] = self.config.optimized_metric
        results.update(n_trials=len(trials), states=dict(Counter(t.state.name.lower() for t in trials)))
        if not any(t.state == TrialState.COMPLETE for t in trials):
            log.warning("no trial completed: there is no best one")
        elif len(directions) == 1:
            best = study.best_trial
            results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
            log.info("best trial %d: %.4g with %s", best.number, best.value, best.params)
        else:
            front = sorted(study.best_trials, key=lambda t: t.number)
            results["solutions"] = [{"number": t.number, "params": t.params, "values": t.values} for t in front]
            log.info("Pareto front: %d trials (%s)", len(front), ", ".join(str(t.number) for t in front))
        sweep = Path(self.config.hydra.sweep.dir)
        sweep.mkdir(parents=True, exist_ok=True)  # a search with nothing left to run launched no job into it
        write_atomic(sweep / RESULTS, yaml.safe_dump(results, sort_keys=False))
