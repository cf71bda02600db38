"""Hyperparameter search with Optuna (`-m hparams_search=optuna`): Hydra's Sweeper interface to a stored study.

Optuna proposes each trial's parameters, decides which trials to prune and keeps the study in a storage; Hydra's
launcher (basic, joblib, SLURM) runs the trials as jobs. Each job reaches its trial through the storage
(`+optuna.storage=... +optuna.study_name=... +optuna.trial=N`, opened by task1.sweeps.trial), reports its
metric there after every epoch and stops when the pruner says so. The search space is written in Hydra's sweep
syntax (`choice(a, b)`, `range(1, 5)`, `interval(0.1, 1.0)`, `tag(log, interval(1e-4, 1.0))`, and
`tag(int, interval(16, 512))` for integers), read by Hydra's own override parser; any other override goes to
every trial as it is.

By default the study is Optuna's journal file `<sweep dir>/optuna_journal.log`, which works on shared file
systems (SLURM). The same command with the same `hydra.sweep.dir` goes on with the study up to `n_trials` in
all. Job folders are named by trial number. One sweeper runs a study at a time.
"""

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus, configure_log
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import Trial, TrialState

from task1 import Task1Error, cli
from task1.io import write_atomic

log = logging.getLogger("task1")
JOURNAL = "optuna_journal.log"  # the study's default storage, in the sweep folder
RESULTS = "optimization_results.yaml"


def open_storage(spec: str) -> BaseStorage:
    """An RDB URL (`sqlite:///optuna.db`, `postgresql://...`) as Optuna's RDB storage; a file path as its
    journal file (written under a lock that works on NFS too, where SQLite's may not)."""
    if "://" in spec:
        return RDBStorage(spec)
    return JournalStorage(JournalFileBackend(spec))


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override: `choice` -> categorical, `range` -> stepped int or
    float (stop excluded, as in Hydra), `interval` -> uniform float (Hydra reads its ends as floats),
    `tag(int, interval(...))` -> uniform int, `tag(log, ...)` -> log-uniform."""
    sweep = override.value()
    if override.is_interval_sweep():
        if "int" in sweep.tags:
            return IntDistribution(math.ceil(sweep.start), math.floor(sweep.end), log="log" in sweep.tags)
        return FloatDistribution(sweep.start, sweep.end, log="log" in sweep.tags)
    if isinstance(sweep, Glob) or not (override.is_choice_sweep() or override.is_range_sweep()):
        raise Task1Error(f"{override.input_line}: Optuna searches choice(...), range(...) and interval(...) "
                         f"sweeps, not this one.")
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    if not values:
        raise Task1Error(f"{override.input_line}: this sweep has no values.")
    if override.is_range_sweep() and not sweep.shuffle:
        kind = FloatDistribution if any(isinstance(v, float) for v in values) else IntDistribution
        return kind(min(values), max(values), step=abs(sweep.step))
    return CategoricalDistribution(values)


def search_space(overrides: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The sweeps among `overrides` as distributions, and the other overrides as given; a later override of a
    key replaces an earlier one (the command line wins over the preset)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise Task1Error(f"the search space does not parse: {e}") from None
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for o in parsed:
        key = o.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if o.is_sweep_override():
            space[key] = distribution(o)
        else:
            fixed[key] = o.input_line
    return space, list(fixed.values())


def override_value(value: Any) -> str:
    """A sampled value as an override's value: quoted when Hydra would read it otherwise."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    text = str(value)
    if isinstance(value, str):
        try:
            if OverridesParser.create().parse_override(f"k={text}").value() == value:
                return text
        except HydraException:
            pass
        return "'" + text.replace("'", "\\'") + "'"
    return text


class Search(Sweeper):
    """Ask Optuna for `n_jobs` trials at a time, launch them, tell Optuna how each ended, until the study holds
    `n_trials`; then write the best trial to optimization_results.yaml."""

    def __init__(self, sampler: DictConfig, pruner: DictConfig, direction: str, study_name: str,
                 storage: str | None, n_trials: int, n_jobs: int, params: DictConfig | None = None) -> None:
        self.sampler_cfg, self.pruner_cfg, self.direction = sampler, pruner, direction
        self.study_name, self.storage, self.n_trials, self.n_jobs = study_name, storage, n_trials, n_jobs
        self.params = params or {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        try:
            self._search(arguments)
        except Task1Error as e:  # a mistake in the search's set-up: one line, as for a job (task1.train.run)
            cli.fail(e)

    def _check(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise Task1Error(f"hydra.sweeper.direction={self.direction} is not allowed: expected maximize or "
                             f"minimize (of optimized_metric).")
        for name in ("n_trials", "n_jobs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise Task1Error(f"hydra.sweeper.{name}={value} is not allowed: expected an integer >= 1.")

    def _build(self, name: str, cfg: DictConfig, **kwargs: Any) -> Any:
        try:
            return instantiate(cfg, **kwargs)
        except Exception as e:
            cause = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise Task1Error(f"hydra.sweeper.{name} ({cfg.get('_target_')}) cannot be built: {cause}") from None

    def _open_study(self, storage: str) -> optuna.Study:
        study = optuna.create_study(storage=open_storage(storage), study_name=self.study_name,
                                    direction=self.direction, load_if_exists=True,
                                    sampler=self._build("sampler", self.sampler_cfg),
                                    pruner=self._build("pruner", self.pruner_cfg))
        if study.direction.name.lower() != self.direction:
            raise Task1Error(f"study {self.study_name!r} in {storage} was made to {study.direction.name.lower()}, "
                             f"not to {self.direction}: give the search another study_name or storage.")
        seed, before = self.sampler_cfg.get("seed"), len(study.get_trials(deepcopy=False))
        if seed is not None and before:  # seeded as at the start, it would draw the first trials' values again
            study.sampler = self._build("sampler", self.sampler_cfg, seed=seed + before)
        return study

    def _storage(self) -> str:
        """The storage as the jobs will open it: an absolute path, or a URL."""
        if self.storage and "://" in self.storage:
            return self.storage
        path = Path(self.storage or Path(self.config.hydra.sweep.dir) / JOURNAL).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)

    def _search(self, arguments: list[str]) -> None:
        self._check()
        preset = [f"{k}={v if isinstance(v, str) else override_value(v)}" for k, v in self.params.items()]
        space, fixed = search_space(preset + list(arguments))
        if not space:
            raise Task1Error("there is nothing to search: hydra.sweeper.params (or the command line) holds no "
                             "choice(...), range(...) or interval(...).")
        storage = self._storage()
        study = self._open_study(storage)
        for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            log.warning("trial %d was left running by a search that stopped: recorded as failed", stale.number)
            study.tell(stale.number, state=TrialState.FAIL)
        log.info("study %r: %d of %d trials done; sampler %s, pruner %s; to watch it: optuna-dashboard %s",
                 self.study_name, len(study.get_trials(deepcopy=False)), self.n_trials,
                 type(study.sampler).__name__, type(study.pruner).__name__, storage)
        while (left := self.n_trials - len(study.get_trials(deepcopy=False))) > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, left))]
            overrides = [self._overrides(t, fixed, storage) for t in trials]
            returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)  # job folder = trial
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)  # off the last job's log
            for trial, ret in zip(trials, returns, strict=True):
                self._tell(study, trial, ret)
        self._write_results(study, storage)

    def _overrides(self, trial: Trial, fixed: list[str], storage: str) -> list[str]:
        where = {"storage": storage, "study_name": self.study_name}
        return [*(f"{k}={override_value(v)}" for k, v in trial.params.items()), *fixed,
                *(f"+optuna.{k}={override_value(v)}" for k, v in where.items()), f"+optuna.trial={trial.number}"]

    def _tell(self, study: optuna.Study, trial: Trial, ret: JobReturn) -> None:
        """Finish a trial its job left running: complete with the value the job returned, else failed. A pruned
        trial was finished by its job (task1.sweeps.trial), as Optuna's own workers do."""
        state = study.get_trials(deepcopy=False)[trial.number].state
        value = ret.return_value if ret.status == JobStatus.COMPLETED else None
        if state == TrialState.RUNNING:
            if isinstance(value, (int, float)) and math.isfinite(value):
                study.tell(trial, float(value))
                state = TrialState.COMPLETE
            else:
                study.tell(trial, state=TrialState.FAIL)
                state = TrialState.FAIL
        log.info("trial %d: %s%s", trial.number, state.name.lower(),
                 f" ({value:.4g})" if state == TrialState.COMPLETE else "")

    def _write_results(self, study: optuna.Study, storage: str) -> None:
        trials = study.get_trials(deepcopy=False)
        results = {"name": "optuna", "study_name": self.study_name, "storage": storage, "direction": self.direction,
                   "n_trials": len(trials), "states": dict(Counter(t.state.name.lower() for t in trials))}
        if any(t.state == TrialState.COMPLETE for t in trials):
            best = study.best_trial
            results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
            log.info("best trial %d: %.4g with %s", best.number, best.value, best.params)
        else:
            log.warning("no trial completed: there is no best one")
        write_atomic(Path(self.config.hydra.sweep.dir) / RESULTS, yaml.safe_dump(results, sort_keys=False))
