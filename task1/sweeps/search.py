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
        elsewhere = self._left_running(study)
        total = self.n_trials
        if isinstance(study.sampler, GridSampler):  # each point once
            total = min(total, math.prod(len(v) for v in grid(space).values()))
            if total < self.n_trials:
                log.info("n_trials=%d cut to the grid's %d points", self.n_trials, total)
        done = len(study.get_trials(deepcopy=False))
        log.info("study %r: %d of %d trials done; sampler %s, pruner %s; to watch it: optuna-dashboard %s",
                 study.study_name, done, total, type(study.sampler).__name__, type(study.pruner).__name__, storage)
        run = launching.Run(self, total - done)
        run.go(lambda: self._ask(study, space, fixed, custom), lambda trial, ret: self._tell(study, trial, ret))
        self._collect(study, elsewhere)
        self._write_results(study, storage)
        self._end(run)

    def _left_running(self, study: optuna.Study) -> list[int]:
        """The trials a search that stopped left running: failed, unless their job still holds its folder (a
        SLURM job goes on without the command that launched it): those are waited for at the end (`_collect`)."""
        elsewhere = []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            folder = Path(self.config.hydra.sweep.dir) / str(trial.number)  # job N runs trial N
            if held(folder):
                log.info("trial %d still runs (%s): the search takes its result when it ends", trial.number,
                         holder(folder))
                elsewhere.append(trial.number)
            else:
                log.warning("trial %d was left running by a search that stopped: recorded as failed", trial.number)
                tell(study, trial.number, state=TrialState.FAIL)
        return elsewhere

    def _collect(self, study: optuna.Study, numbers: list[int]) -> None:
        """Wait for the jobs of trials launched by an earlier start, and tell the study how each ended, from its
        metrics.json (a pruned one its job finished itself)."""
        for number in numbers:
            folder = Path(self.config.hydra.sweep.dir) / str(number)
            while held(folder):
                time.sleep(2)
            if frozen(study, number).state != TrialState.RUNNING:
                continue
            run = read_run(folder)
            try:
                values = objective_values(run.final.get(self.config.get("optimized_metric")), len(study.directions))
            except ValueError:
                tell(study, number, state=TrialState.FAIL)
                log.info("trial %d: fail (%s)", number, run.error or "its job recorded no value")
            else:
                tell(study, number, values=values)
                log.info("trial %d: complete (%s)", number, ", ".join(f"{v:.4g}" for v in values))

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
        return trial, [*(f"{k}={override_value(v)}" for k, v in trial.params.items()), *fixed.values()]

    def _tell(self, study: optuna.Study, trial: Trial, ret: JobReturn) -> str | None:
        """Finish a trial its job left running: complete with the values the job returned, else failed, with
        the reason (logged, and the trial's user attribute `fail_reason`). A pruned trial was finished by its
        job (task1.sweeps.trial), as Optuna's own workers do. Returns the reason of a failure."""
        reason = None
        if frozen(study, trial).state == TrialState.RUNNING:
            try:
                if ret.status != JobStatus.COMPLETED:
                    raise ValueError(ret.status.name)
                values = objective_values(ret.return_value, len(study.directions))
            except ValueError as e:
                reason = failure_reason(ret) or str(e)
                trial.set_user_attr("fail_reason", reason)  # shown by optuna-dashboard
                tell(study, trial, state=TrialState.FAIL)
            else:
                tell(study, trial, values=values)
        ended = frozen(study, trial)
        if reason:
            log.warning("trial %d failed: %s", trial.number, reason)
        else:
            log.info("trial %d: %s%s", trial.number, ended.state.name.lower(),
                     f" ({', '.join(f'{v:.4g}' for v in ended.values)})" if ended.values else "")
        return reason

    def _end(self, run: "launching.Run") -> None:
        """Exit with status 1 when the failures stopped the search or every trial failed (after the report)."""
        if not run.stopped_by and not (run.launched and run.failed == run.launched):
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
        cli.fail(Task1Error(f"{why}; trial {trial.number}: {reason}"))

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
