"""A search job's side of its Optuna trial: opened from the study's storage, reported to, pruned.

Imported only by a job of task1's Optuna sweeper (task1.sweeps.search), or by a packed launcher's member that is
one (task1.pack.launcher), so that training imports Optuna only then. The job finds its trial in its own Hydra
config (for a member: while Hydra's run_job prepares it): the sweeper's storage and study (`hydra.sweeper`) and
its job number, which is the trial's number. Relies on Optuna's storage API (`get_study_id_from_name`,
`get_trial_id_from_study_id_trial_number`) and on building an `optuna.Trial(study, trial_id)` for a trial
another process asked for, which is what Optuna's own workers hold in `study.optimize`; tests/test_search.py
runs it against a real journal file.
"""

import logging

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from optuna.trial import TrialState

from task1 import Task1Error
from task1.sweeps.search import open_storage, storage_spec

log = logging.getLogger("task1")


class StudyTrial:
    """A running trial as task1.core.callbacks.Pruning uses it: report a value per step, ask, be pruned."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial

    def report(self, value: float, step: int) -> None:
        self.trial.report(value, step)

    def should_prune(self) -> bool:
        return self.trial.should_prune()

    def prune(self) -> None:
        """Finish the trial as pruned (its last reported value stays its value), as `study.optimize` does."""
        self.trial.study.tell(self.trial, state=TrialState.PRUNED)


def open_trial() -> StudyTrial | None:
    """The running trial of this job (task1.sweeps.context.in_search says whether it is one), with the pruner
    of the sweeper that launched it; None when the trial has already finished or its study has several
    objectives (Optuna prunes single-objective studies only)."""
    hc = HydraConfig.get()
    spec, number = storage_spec(hc), int(hc.job.num)
    storage = open_storage(spec)
    # a RandomSampler: the job only reports, and building the search's sampler (a grid, a GP) costs for nothing
    try:
        study = optuna.load_study(study_name=hc.sweeper.study_name, storage=storage,
                                  sampler=optuna.samplers.RandomSampler(), pruner=instantiate(hc.sweeper.pruner))
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.study_name), number)
    except (KeyError, ValueError):
        raise Task1Error(f"{spec} holds no trial {number} of a study named {hc.sweeper.study_name!r}: this job "
                         f"belongs to another search.") from None
    if storage.get_trial(trial_id).state != TrialState.RUNNING:
        log.info("trial %d of study %r has finished: this run does not report to it", number, study.study_name)
        return None
    if len(study.directions) > 1:
        log.info("study %r has %d objectives: its trials are not pruned", study.study_name, len(study.directions))
        return None
    return StudyTrial(optuna.Trial(study, trial_id))


def pruning(cfg) -> list:
    """The callbacks a job of task1's Optuna search trains with: its trial's reports and pruning."""
    from task1.core.callbacks import Pruning

    return [Pruning(open_trial(), cfg.get("optimized_metric"))]
