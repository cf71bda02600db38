"""`hydra/launcher=packed`: the jobs of a sweep that can share a pack (task1.pack.grouping) train as one pack in
this process, `pack` members at most; the others run one after the other, as the basic launcher runs them.

Every member is a job like any other (DESIGN.md rule 21): its folder is found or claimed by the job-folder
resolver (task1.sweeps.folders), Hydra writes its `.hydra/` and its log, it holds its folder while the pack
trains, and it ends with the files a job writes. A job whose folder says it is over is reused, one held by
another process is left to it, and one that a run of its own left with a checkpoint to resume resumes alone;
a member of a pack that was stopped goes on from its state after its latest epoch (checkpoints/pack_state.ckpt).

In task1's Optuna search (hparams_search=optuna), the trials of a launch (a batch of n_jobs:
task1.sweeps.launching) are its jobs: each member opens its own trial in its job's Hydra config, reports to it
after each epoch and leaves the pack when it is pruned (task1.pack.member).
"""

import contextlib
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from task1 import Task1Error, cli
from task1.io import FolderInUseError
from task1.pack import PACK_STATE
from task1.pack.grouping import check_stack, packs, unpackable
from task1.sweeps import folders
from task1.sweeps.context import in_search

log = logging.getLogger("task1")


@dataclass
class Job:
    num: int
    overrides: list[str]
    cfg: DictConfig  # with its hydra node, as the sweep composed it
    folder: Path
    ret: JobReturn | None = None
    prepared: dict = field(default_factory=dict)  # its resolved config and its config choices, once prepared


def alone_reason(job: Job) -> str | None:
    """Why `job` trains on its own now (None: it goes in a pack)."""
    reason = unpackable(job.cfg)
    if reason:
        return reason
    metrics = folders.read_metrics(job.folder)
    if folders.ended(metrics):
        return "over in an earlier start (reused)"
    if folders.held(job.folder):
        return "held by another process"
    if (job.folder / "checkpoints" / "last.ckpt").is_file() and not (job.folder / "checkpoints" / PACK_STATE).is_file():
        return "it resumes from its own checkpoint"
    return None


class PackedLauncher(Launcher):
    """Hydra's launcher interface: packs in this process, `pack` members at most (see the module's docstring)."""

    def __init__(self, pack: int = 16, stack: str = "loop") -> None:
        self.pack, self.stack = int(pack), str(stack)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    @property
    def pack_size(self) -> int:
        return self.pack

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        return self.run([(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)])

    def run(self, numbered: list[tuple[int, list[str]]]) -> list[JobReturn]:
        """The jobs (number, overrides) in packs, and alone those that cannot be packed; their results in order.
        A SLURM job of a packed sweep runs its pack with this (task1.sweeps.slurm)."""
        try:
            check_stack(self.stack)
        except Task1Error as e:
            cli.fail(e)
        if self.pack < 1:
            cli.fail(Task1Error(f"hydra.launcher.pack={self.pack} is not allowed: expected the most members in a "
                                f"pack, 1 or more."))
        setup_globals()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [self._job(num, list(o)) for num, o in numbered]
        reasons = [alone_reason(j) for j in jobs]
        packable = [j for j, why in zip(jobs, reasons, strict=True) if why is None]
        groups = [[packable[i] for i in g] for g in packs([j.cfg for j in packable], self.pack)]
        log.info("Launching %d jobs: %d in %d pack%s, %d alone", len(jobs), len(packable), len(groups),
                 "s" * (len(groups) != 1), len(jobs) - len(packable))
        for job, why in zip(jobs, reasons, strict=True):
            if why is not None:
                log.info("\t#%d : %s (alone: %s)", job.num, " ".join(filter_overrides(job.overrides)), why)
                job.ret = self._run(job, self.task_function)
        for group in groups:
            self._run_pack(group)
        return [j.ret for j in jobs]

    def _job(self, num: int, overrides: list[str]) -> Job:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.id, cfg.hydra.job.num = f"job_id_for_{num}", num
        # resolving the subdir finds the job's folder, or claims one (task1.sweeps.folders)
        return Job(num, overrides, cfg, Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir))

    def _run(self, job: Job, task_function: TaskFunction) -> JobReturn:
        """Hydra's run_job for one job (its folder, .hydra/, log, HydraConfig), then the sweep's logging back."""
        try:
            return run_job(hydra_context=self.hydra_context, task_function=task_function, config=job.cfg,
                           job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        finally:
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

    def _run_pack(self, group: list[Job]) -> None:
        from task1.core.runs import record_failure
        from task1.pack.trainer import train_pack

        start = time.perf_counter()
        log.info("pack of %d: %s", len(group), ", ".join(f"#{j.num} {' '.join(filter_overrides(j.overrides))}"
                                                         for j in group))
        with contextlib.ExitStack() as holding:
            for job in group:
                job.ret = self._run(job, partial(_prepare, job, holding))
            members = [j for j in group if j.prepared]
            if not members:
                return
            try:
                results = train_pack([j.prepared["cfg"] for j in members], [j.prepared["choices"] for j in members],
                                     self.stack, [j.prepared["trial"] for j in members])
            except Exception as e:  # the pack as a whole failed (its data, say): every member records it
                for job in members:
                    record_failure(job.prepared["cfg"], e, time.perf_counter() - start)
                return
        for job, metrics in zip(members, results, strict=True):
            metric = job.prepared["cfg"].get("optimized_metric")
            job.ret.return_value = (metrics.get("final") or {}).get(metric) if metric else None


def _prepare(job: Job, holding: contextlib.ExitStack, cfg: DictConfig) -> None:
    """A member's job function, run by Hydra's run_job: hold its folder for the pack, check its config, clear
    what a start that stopped before its first epoch left, and open its search trial (where the job's HydraConfig
    is set, which says which trial it is); its resolved config and its trial then go to the pack."""
    from task1.core.config import validate
    from task1.core.runs import record_failure

    try:  # one whose folder another process took after alone_reason looked is left to it, as a single job is
        holding.enter_context(folders.holding(Path(cfg.output_dir)))
    except FolderInUseError as e:
        log.error("%s This job is left to it; the sweep's report shows the job as it finds it.", e)
        return
    try:
        validate(cfg)
        if not (Path(cfg.output_dir) / "checkpoints" / PACK_STATE).is_file():
            folders.continue_job(cfg)  # nothing to reuse or resume here (alone_reason): it clears the folder
        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        trial = None
        if in_search():  # only then is Optuna imported (task1.train.search_callbacks)
            from task1.sweeps.trial import open_trial

            trial = open_trial()
    except Exception as e:  # recorded, not raised, as a job's failure is (task1.train.job): the sweep goes on
        record_failure(cfg, e, 0.0)
        return
    job.prepared.update(cfg=resolved, choices=OmegaConf.to_container(HydraConfig.get().runtime.choices), trial=trial)
