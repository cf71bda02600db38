"""A search job's side of its Optuna trial: opened from the study's storage, reported to, pruned.

Imported only by a job that the Optuna sweeper (task1.sweeps.search) launched, so that training imports Optuna
only then. Relies on Optuna's storage API (`get_study_id_from_name`, `get_trial_id_from_study_id_trial_number`)
and on building an `optuna.Trial(study, trial_id)` for a trial another process asked for, which is what Optuna's
own workers hold in `study.optimize`; tests/test_search.py runs it against a real journal file.
"""

import logging

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig
from optuna.trial import TrialState

from task1 import Task1Error
from task1.sweeps.search import open_storage

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


def open_trial(node: DictConfig) -> StudyTrial | None:
    """The running trial `node` names (`storage`, `study_name`, `trial`: a number), with the pruner and sampler
    of the sweeper that launched this job; None outside that multirun (a rerun of a trial's folder) or when the
    trial has already finished."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        log.info("optuna.trial=%s: this process is not its search's job (a rerun, or a DDP rank that follows "
                 "rank 0), so it does not report to the trial", node.trial)
        return None
    sweeper = HydraConfig.get().sweeper
    storage = open_storage(node.storage)
    try:
        study_id = storage.get_study_id_from_name(node.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, node.trial)
    except KeyError:
        raise Task1Error(f"optuna.storage={node.storage} holds no trial {node.trial} of a study named "
                         f"{node.study_name!r}: this job belongs to another search.") from None
    if storage.get_trial(trial_id).state != TrialState.RUNNING:
        log.info("trial %d of study %r has finished: this run does not report to it", node.trial, node.study_name)
        return None
    study = optuna.load_study(study_name=node.study_name, storage=storage, sampler=instantiate(sweeper.sampler),
                              pruner=instantiate(sweeper.pruner))
    return StudyTrial(optuna.Trial(study, trial_id))
