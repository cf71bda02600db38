"""Packed sweeps on SLURM (`hydra/launcher=slurm hydra.launcher.pack=16`): one SLURM job per pack.

The submitting command (task1.sweeps.slurm) groups the jobs that need work as the packed launcher groups them
(task1.pack.grouping, task1.pack.launcher.alone_reason); each pack is one array task whose process trains its
members with task1.pack.launcher.PackedLauncher.run, and a job that cannot be packed is a SLURM job of its own, as
without packing. The command follows each member as it follows a job: its folder's metrics.json, `.slurm_job`
naming the pack's SLURM job (a later start adopts it), the folder's lock, squeue.

A pack's SLURM job asks for what one of its members asks for (`threads` CPUs, 4 GB): the pack reads the data set
once, and a member adds only its weights, its optimizer's state and its sums (see docs/clusters.md).

What a cluster does to a pack:
- Killed (scancel, SIGTERM, SIGKILL, a node lost): each member keeps `checkpoints/pack_state.ckpt`, its state after
  its latest epoch. The same command again resumes every unfinished member from it, finished members reused.
- Warned before the time limit, or preempted (SIGUSR2, SIGUSR1): the pack stops (preempted: at once; warned:
  `signal_delay_s` before the limit, as a job does), each member's folder says interrupted, its state after its
  latest epoch kept, and the job requeues itself if it made progress: if any member wrote its
  pack_state.ckpt since the job's process started, that is, the pack ended an epoch. Otherwise it could not end an
  epoch within the time limit, and would never get further: its members are marked failed, saying so.
"""

import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import filter_overrides, setup_globals

from task1 import Task1Error
from task1.io import slurm_job_id, write_json
from task1.pack import PACK_STATE
from task1.sweeps import folders

log = logging.getLogger("task1")


def checked(params: dict[str, Any]) -> tuple[int, str]:
    """hydra.launcher.pack and hydra.launcher.stack, refused in one line before anything is submitted."""
    from task1.pack.grouping import check_stack

    pack, stack = params.get("pack", 1), str(params.get("stack", "loop"))
    if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
        raise Task1Error(f"hydra.launcher.pack={pack} is not allowed: expected the most members in a pack (one "
                         f"SLURM job), 1 or more (1: one SLURM job per sweep job).")
    check_stack(stack)
    return pack, stack


def units(launcher, jobs: list) -> list[tuple[list, Any, tuple]]:
    """The SLURM jobs to submit for `jobs` (task1.sweeps.slurm.Job), in the order of the jobs: each is (its sweep
    jobs, what its process runs, that callable's arguments): a job alone as without packing, or a pack."""
    pack, _ = checked(launcher.params)
    alone = [pack == 1 or _alone(job) for job in jobs]  # (pack=1: every job alone, as without packing)
    single = [([job], launcher, launcher._args(job)) for job, why in zip(jobs, alone, strict=True) if why]
    if len(single) == len(jobs):
        return single
    from task1.pack.grouping import packs

    packable = [job for job, why in zip(jobs, alone, strict=True) if not why]
    run = PackJob(launcher)
    grouped = [[packable[i] for i in g] for g in packs([j.cfg for j in packable], pack)]
    return sorted(single + [(g, run, run.args(g)) for g in grouped], key=lambda unit: unit[0][0].num)


def _alone(job) -> str | None:
    """Why `job` is a SLURM job of its own (None: it goes in a pack)."""
    from task1.pack.launcher import alone_reason

    if "trainer" not in job.cfg or "optimizer" not in job.cfg:
        return "not a task1 training job"
    return alone_reason(job)


def described(unit: list) -> str:
    """A SLURM job's sweep jobs, for the log: 'lr=0.1', or 'pack of 2: seed=0 | seed=1'."""
    said = " | ".join(" ".join(filter_overrides(job.overrides)) for job in unit)
    return f"pack of {len(unit)}: {said}" if len(unit) > 1 else said


class PackJob:
    """What a pack's SLURM job runs: its members through PackedLauncher.run (pickled by submitit with the
    submitting command's launcher, whose context and task function it uses)."""

    def __init__(self, launcher) -> None:
        self.launcher = launcher

    def args(self, unit: list) -> tuple:
        return [(job.num, job.overrides) for job in unit], Singleton.get_state()

    def __call__(self, members: list[tuple[int, list[str]]], singleton_state: dict) -> None:
        from task1.pack.launcher import PackedLauncher

        started = time.time()
        Singleton.set_state(singleton_state)
        setup_globals()
        slurm, stop = self.launcher, {}
        stop_on_warnings(stop, slurm.params)
        packed = PackedLauncher(*checked(slurm.params))
        packed.setup(hydra_context=slurm.hydra_context, task_function=slurm.task_function, config=slurm.config)
        try:
            packed.run([(num, list(overrides)) for num, overrides in members])
            signal.setitimer(signal.ITIMER_REAL, 0)  # (a warning that came once the pack was nearly done)
        except SystemExit:
            if stop:  # a warning signal: requeue, or say why not; SIGTERM's end is the submitter's to see
                signal.setitimer(signal.ITIMER_REAL, 0)
                for sig in (signal.SIGUSR1, signal.SIGUSR2):
                    signal.signal(sig, signal.SIG_IGN)
                stopped([slurm._job(num, list(o)).folder for num, o in members], stop["why"], started)
            raise


def stop_on_warnings(stop: dict, params: dict[str, Any]) -> None:
    """SIGUSR1 and SIGUSR2 end the pack as SIGTERM does (task1.pack.trainer keeps each member's state after its
    latest epoch): a preemption at once; the time limit's warning, which SLURM sends up to a minute early, once
    `signal_delay_s` are left (SIGALRM then). `stop["why"]` says which, for the log and the requeue."""
    from task1.sweeps.slurm import _end_time, signal_delay

    end, delay = _end_time(), signal_delay(params)

    def on_warning(signum: int, frame) -> None:
        now = time.time()
        near = end is not None and end - now <= delay + 90
        stop["why"] = f"{signal.Signals(signum).name}: {'the time limit is near' if near else 'preempted'}"
        if near and end - delay > now + 1:  # (the pack trains on till then: it may end another epoch)
            signal.signal(signal.SIGALRM, lambda *_: _end(signum))
            signal.setitimer(signal.ITIMER_REAL, end - delay - now)
            return
        _end(signum)

    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, on_warning)


def _end(signum: int) -> None:
    raise SystemExit(128 + signum)


def stopped(members: list[Path], why: str, started: float) -> None:
    """A pack stopped by a warning signal: requeue its SLURM job when any member ended an epoch since the job
    started, else mark the members that are not over failed (the pack cannot end an epoch within the limit)."""
    from task1.sweeps.slurm import OVER, _run

    job = slurm_job_id()
    states = [folder / "checkpoints" / PACK_STATE for folder in members]
    if any(s.is_file() and s.stat().st_mtime >= started for s in states):
        log.info("%s: requeueing SLURM job %s; its pack resumes from its members' %s", why, job, PACK_STATE)
        _run(["scontrol", "requeue", job])
        sys.exit(3)
    for folder in members:
        metrics = folders.read_metrics(folder)
        if metrics.get("status") not in OVER:
            write_json(folder / "metrics.json", {**metrics, "status": "failed", "final": metrics.get("final", {}),
                                                 "error": f"the SLURM job {job} of its pack was stopped ({why}) "
                                                 f"before the pack ended an epoch: it cannot get anywhere within "
                                                 f"this time limit. Raise hydra.launcher.timeout_min, lower "
                                                 f"hydra.launcher.pack, or lower hydra.launcher.signal_delay_s."})
    log.error("%s: the pack ended no epoch since its SLURM job %s started: its members are marked failed", why, job)
    sys.exit(3)
