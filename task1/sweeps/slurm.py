"""Sweeps on SLURM (`hydra/launcher=slurm`): submitit's launcher, with task1 owning what a cluster does to jobs.

- Resources follow the run: one task per device under `trainer=ddp`, `threads` CPUs a task, the GPUs `trainer=gpu`
  asks for, 4 GB a task; the preset's fields override each (hydra_plugins/task1_slurm/conf/hydra/launcher/, on
  every Hydra app's search path: any app can use the launcher). Jobs that ask for different resources go in
  separate arrays.
- Only the jobs that need work are submitted: a job that is over (task1.sweeps.folders.ended) or held by a live
  process is run here, where it reuses what its folder holds (or is left to its holder) at once.
- The time-limit warning and preemption (SIGUSR2, or SIGUSR1) stop the run at the end of a batch with its
  checkpoint written; the job requeues itself and resumes, the submitting command waiting for it all along.
  SLURM sends the warning up to a minute early: the run goes on until `signal_delay_s` before the limit. SIGTERM
  (scancel, `scontrol requeue`, SLURM's preemption) also checkpoints; the job ends without a result, and SLURM
  requeues it or not. Lightning's own SLURM requeue is off (task1.core.build).
- The command waits by reading the jobs' folders and `squeue`, never `sacct`: a job that ends without a result
  (killed, out of memory, node lost, cancelled) is reported within seconds, with or without an accounting
  database, and its folder keeps its checkpoints for the next start, which resumes it. A job's result is what
  its folder says (its metrics.json; for another Hydra app, the return value the job wrote there as JSON), never
  submitit's result pickle: whoever can write the sweep folder could make unpickling it run code here.
- A `squeue` that fails or does not answer means "ask again later", never "ended": the command says once that
  the scheduler does not answer, goes on reading the folders, and gives up only after `scheduler_patience_min`
  (the jobs go on; the same command again collects them).
- A request the cluster refuses, or a job pending for a reason that cannot clear, ends in one line naming the
  launcher's field; Ctrl-C says how to watch, collect and cancel the jobs, which go on.
- `pack` > 1: the jobs that can share a pack are one SLURM job per pack, each member followed as a job is
  (task1.sweeps.slurm_packs).
"""

import contextlib
import errno
import io
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from task1 import Task1Error, cli, error_line
from task1.io import holder, read_json, slurm_job_id, write_atomic, write_json
from task1.pack import PACK_STATE
from task1.sweeps import folders

log = logging.getLogger("task1")
MEM_GB_PER_TASK = 4  # a Fashion-MNIST job's process holds about 1.5 GB
ALIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
         "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED", "SPECIAL_EXIT", "RESV_DEL_HOLD"}
# pending reasons that no amount of waiting clears: the request does not fit the partition or the account
NEVER_CLEARS = re.compile(r"PartitionConfig|PartitionNodeLimit|PartitionTimeLimit|BadConstraints|InvalidAccount|"
                          r"InvalidQOS|DependencyNeverSatisfied|PerJob")
# words of sbatch's refusals -> the launcher field that asked for it
REFUSALS = (("gres", "gpus_per_node"), ("generic resource", "gpus_per_node"), ("memory", "mem_gb"),
            ("partition", "partition"), ("time limit", "timeout_min"), ("account", "account"), ("qos", "qos"),
            ("node configuration", "cpus_per_task"), ("cpu", "cpus_per_task"), ("task", "tasks_per_node"))
# the launcher's fields that submitit does not take as an sbatch parameter
OWN = ("submitit_folder", "max_num_timeout", "scheduler_patience_min", "pack", "stack")
SUBMITTED = ".slurm_job"  # in a job's folder: the SLURM job last submitted for it
RETURN = "job_return.json"  # in a job's folder: what its task function returned (for apps without metrics.json)
OVER = ("completed", "pruned", "failed")  # a metrics.json status that a job's process ends with
SHOWN = ("partition", "nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node", "mem_gb", "timeout_min")


def resources(cfg: DictConfig, params: dict[str, Any]) -> dict[str, Any]:
    """The launcher's parameters for the job `cfg`: each field left null follows the run."""
    p = {k: v for k, v in params.items() if k not in OWN}
    trainer = cfg.get("trainer") or {}  # (another Hydra app than task1's has none: one task, one CPU)
    devices = trainer.get("devices")
    devices = devices if isinstance(devices, int) and devices > 0 else 1
    ddp = str(trainer.get("strategy") or "").startswith("ddp")
    if p.get("nodes") is None:
        p["nodes"] = int(trainer.get("num_nodes") or 1) if ddp else 1
    if p.get("tasks_per_node") is None:
        p["tasks_per_node"] = devices if ddp else 1
    if p.get("cpus_per_task") is None:
        p["cpus_per_task"] = cfg.get("threads") or 1
    if p.get("gpus_per_node") is None:
        p["gpus_per_node"] = devices if str(trainer.get("accelerator")) in ("gpu", "cuda") else None
    if not p["gpus_per_node"]:
        p["gpus_per_node"] = None  # no GPU: no gres request at all, which a CPU cluster would refuse
    if p.get("mem_gb") is None:
        p["mem_gb"] = MEM_GB_PER_TASK * p["tasks_per_node"]
    p["signal_delay_s"] = signal_delay(params)
    if p["nodes"] * p["tasks_per_node"] > 1:  # one rank that fails ends the others, which would wait for it
        p["srun_args"] = [*(p.get("srun_args") or []), "--kill-on-bad-exit=1"]
    return p


def signal_delay(params: dict[str, Any]) -> int:
    """Seconds before the time limit that a job is warned and stops: the preset's, else a quarter of the limit
    up to 2 minutes."""
    given = params.get("signal_delay_s")
    return int(given) if given is not None else int(min(120, max(10, params["timeout_min"] * 60 // 4)))


@dataclass
class Job:
    """One job of the sweep, as the submitting command follows it."""

    num: int
    overrides: list[str]
    cfg: DictConfig
    folder: Path
    slurm: Any = None  # the submitit job, once submitted
    ret: JobReturn | None = None
    gone_since: float | None = None  # when squeue last had it running or waiting
    stamps: tuple = ()  # metrics.json and the return file as they were at submission: a result must be newer


def _stamp(path: Path) -> tuple | None:
    """Which version of a file this is: written atomically (a rename), each version is a new inode."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _run(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


class SlurmLauncher(Launcher):
    """Hydra's launcher interface to SLURM through submitit (see the module's docstring)."""

    def __init__(self, **params: Any) -> None:
        self.params = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                       for k, v in params.items()}
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        # a search keeps several launch() calls in flight, each in a thread (task1.sweeps.launching): they plan
        # and submit one at a time, and wait side by side; Ctrl-C in the main thread ends every wait
        self._planning, self._stop, self._inflight = threading.Lock(), threading.Event(), set()

    def __getstate__(self) -> dict:  # what a job gets: no locks, no state of the submitting command
        return {k: v for k, v in self.__dict__.items() if k not in ("_planning", "_stop", "_inflight")}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    @property
    def pack_size(self) -> int:
        """hydra.launcher.pack: the most sweep jobs in one SLURM job (task1.sweeps.slurm_packs)."""
        return int(self.params.get("pack") or 1)

    # --- the submitting command

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        with self._planning:
            jobs, waiting = self._plan(job_overrides, initial_job_idx)
        if waiting:
            self._wait(waiting)
        return [j.ret for j in jobs]

    def _plan(self, job_overrides, initial_job_idx: int) -> tuple[list[Job], list[Job]]:
        """Every job of the launch, and those to wait for: submitted now, or left running by an earlier start."""
        setup_globals()
        sweep = Path(str(self.config.hydra.sweep.dir))
        sweep.mkdir(parents=True, exist_ok=True)
        jobs = [self._stamped(self._job(initial_job_idx + i, list(o))) for i, o in enumerate(job_overrides)]
        running = self._adopt(jobs)  # an earlier start's SLURM jobs
        todo = [j for j in jobs if j not in running and folders.needs_work(j.folder)]
        for job in jobs:
            if job not in todo and job not in running:  # over, or held elsewhere: the job itself says which
                job.ret = self._run_here(job)
        if todo:
            try:
                self._submit(sweep, todo)
            except Task1Error as e:  # one line, as for a job's mistake (task1.train.run)
                cli.fail(e)
        if running:
            ids = list(dict.fromkeys(j.slurm.job_id for j in running))  # (a pack's members share one)
            log.info("waiting for %d SLURM job%s of an earlier start: %s", len(ids), "s" * (len(ids) > 1),
                     ", ".join(ids))
        if not todo and not running:
            log.info("nothing to submit: the %d jobs are over or under way", len(jobs))
        self._inflight.update(j.slurm.job_id for j in todo + running)
        return jobs, todo + running

    def _stamped(self, job: Job) -> Job:
        job.stamps = (_stamp(job.folder / "metrics.json"), _stamp(job.folder / RETURN))
        return job

    def _adopt(self, jobs: list[Job]) -> list[Job]:
        """The jobs that a SLURM job of an earlier start of this sweep holds, or waits to run (pending, requeued),
        each followed as if submitted now: submitting them again would run two SLURM jobs for one folder."""
        from submitit.slurm.slurm import SlurmJob

        earlier = {}
        for job in jobs:  # the job that holds (or last held) the folder, and the last one submitted for it
            if folders.ended(folders.read_metrics(job.folder)):
                earlier[job.num] = []  # over: reused here, whatever SLURM still says of its job
                continue
            named = re.findall(r"\(SLURM job (\S+)\)", holder(job.folder))
            with contextlib.suppress(OSError):
                named.append((job.folder / SUBMITTED).read_text().strip())
            found = [SlurmJob(folder=self.params["submitit_folder"], job_id=i) for i in dict.fromkeys(named)]
            earlier[job.num] = [j for j in found if j.paths.submitted_pickle.exists()]  # this sweep's
        ids = [j.job_id for found in earlier.values() for j in found]
        states = _states(ids)[0] if ids else {}  # (squeue silent: nothing known to wait for)
        held = {job.num for job in jobs if earlier[job.num] and folders.held(job.folder)}
        for job in jobs:
            for slurm in earlier[job.num]:
                holds = job.num in held and f"(SLURM job {slurm.job_id})" in holder(job.folder)
                if holds or states.get(slurm.job_id, ("",))[0] in ALIVE:
                    job.slurm = slurm
                    break
        return [job for job in jobs if job.slurm is not None]

    def _job(self, num: int, overrides: list[str]) -> Job:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.id, cfg.hydra.job.num = f"job_id_for_{num}", num
        # resolving the subdir finds the job's folder, or claims one: the job's own process finds the same
        return Job(num, overrides, cfg, Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir))

    def _run_here(self, job: Job) -> JobReturn:
        ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=job.cfg,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        self._log_back()
        return ret

    def _log_back(self) -> None:
        from hydra.core.utils import configure_log

        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)  # off the last job's log

    def _submit(self, sweep: Path, jobs: list[Job]) -> None:
        import submitit

        from task1.sweeps.slurm_packs import described, units

        groups: dict[str, tuple[dict, Any, list]] = {}
        for unit, run, args in units(self, jobs):  # a job alone, or a pack (hydra.launcher.pack): one SLURM job
            p = resources(unit[0].cfg, self.params)
            groups.setdefault(repr((sorted(p.items()), run is self)), (p, run, []))[2].append((unit, args))
        submitted = []
        try:
            for p, run, group in groups.values():
                executor = submitit.AutoExecutor(folder=self.params["submitit_folder"], cluster="slurm")
                executor.update_parameters(**{k if k in BASE else f"slurm_{k}": v for k, v in p.items()
                                              if v is not None})
                check_fits(p)
                log.info("submitting %d job%s to SLURM (%s)", len(group), "s" * (len(group) > 1), _asked(p))
                try:
                    with contextlib.redirect_stderr(io.StringIO()):  # submitit repeats sbatch's words there
                        handles = executor.map_array(run, *zip(*[args for _, args in group], strict=True))
                except OSError as e:  # submitit writes each job's pickle and script before sbatch sees them
                    if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
                        raise Task1Error(refusal(e, p)) from None
                    raise Task1Error(f"the jobs' files could not be written in {sweep / '.submitit'} "
                                     f"({error_line(e)}): free the space (or fix the folder), then run the same "
                                     f"command again.") from None
                except Exception as e:
                    raise Task1Error(refusal(e, p)) from None
                for (unit, _), handle in zip(group, handles, strict=True):
                    for job in unit:
                        job.slurm = handle
                        if job.folder.is_dir():  # a start after this one follows it, even before it runs
                            write_atomic(job.folder / SUBMITTED, handle.job_id)
                    submitted.append(handle.job_id)
                    log.info("\t%s %s: %s", " ".join(f"#{j.num}" for j in unit), handle.job_id, described(unit))
        except Task1Error:
            if submitted:
                _run(["scancel", *submitted])
            raise
        log.info("waiting for %d SLURM job%s (squeue -j %s; logs in %s)", len(submitted),
                 "s" * (len(submitted) > 1), ",".join(sorted({i.split("_")[0] for i in submitted})),
                 sweep / ".submitit")

    def _args(self, job: Job) -> tuple:
        return job.overrides, "hydra.sweep.dir", job.num, f"job_id_for_{job.num}", Singleton.get_state()

    def _wait(self, jobs: list[Job]) -> None:
        start, silent_since = time.monotonic(), None
        patience = 60 * float(self.params.get("scheduler_patience_min") or 30)
        try:
            while pending := [j for j in jobs if j.ret is None]:
                if self._stop.is_set():  # Ctrl-C, taken by the main thread
                    raise KeyboardInterrupt
                states, trouble = _states((j.slurm.job_id for j in pending), timeout=min(60.0, patience))
                if trouble and silent_since is None:
                    silent_since = time.monotonic()
                    log.warning("SLURM does not answer (%s): the jobs are left as they are, and squeue is asked "
                                "again (for up to %g minutes)", trouble, patience / 60)
                elif not trouble and silent_since is not None:
                    log.info("SLURM answers again, after %.0f s", time.monotonic() - silent_since)
                    silent_since = None
                if silent_since is not None and time.monotonic() - silent_since > patience:
                    self._unanswered(trouble, patience)
                for job in pending:
                    self._poll(job, None if trouble else states.get(job.slurm.job_id), known=not trouble)
                    ended = all(o.ret is not None for o in jobs if o.slurm.job_id == job.slurm.job_id)
                    if ended:  # (a pack's SLURM job: once all its members ended)
                        self._inflight.discard(job.slurm.job_id)
                if any(j.ret is None for j in jobs):
                    self._stop.wait(min(30.0, max(1.0, (time.monotonic() - start) / 20)))
        except KeyboardInterrupt:
            if threading.current_thread() is threading.main_thread():
                self.interrupted()
            raise

    def interrupted(self) -> NoReturn:
        """Ctrl-C of the command: the jobs go on in SLURM; one line says how to watch, collect and cancel them."""
        self._stop.set()
        ids = ",".join(sorted({i.split("_")[0] for i in self._inflight}))
        log.error("Interrupted: the SLURM jobs go on (%s). Watch them: squeue -j %s (logs in %s). Collect them: run "
                  "this command again (finished jobs are reused, stopped ones resume). Cancel them: scancel %s",
                  ids, ids, Path(str(self.config.hydra.sweep.dir)) / ".submitit", ids)
        sys.exit(130)

    def _unanswered(self, trouble: str, patience: float) -> NoReturn:
        """The end of the patience: one line; a search's other launches (threads) reach theirs on their own."""
        ids = ",".join(sorted({i.split("_")[0] for i in self._inflight}))
        error = Task1Error(f"SLURM has not answered squeue for {patience / 60:g} minutes ({trouble}). The jobs "
                           f"({ids}) are left as they are: once `squeue -j {ids}` answers, run this command again to "
                           f"collect them (or raise hydra.launcher.scheduler_patience_min).")
        if threading.current_thread() is threading.main_thread():
            cli.fail(error)
        raise error

    def _poll(self, job: Job, state: tuple[str, str] | None, known: bool = True) -> None:
        """Look at one job: its result in its folder, else what squeue said (`known`: squeue answered)."""
        job.ret = self._result(job)
        if job.ret is not None:
            return
        if not known:  # the scheduler did not answer: nothing is known of the job but its folder
            job.gone_since = None
            return
        if state is not None and state[0] in ALIVE:
            job.gone_since = None
            if state[0] == "PENDING" and NEVER_CLEARS.search(state[1]):
                _run(["scancel", job.slurm.job_id])
                p = resources(job.cfg, self.params)
                job.ret = self._ended(job, f"SLURM cannot run it: it waits for a reason that does not clear "
                                           f"({state[1]}), so it was cancelled. It asked for {_asked(p)}. Fix "
                                           f"{_field_for(state[1])}, then run the same command again")
            return
        # ended without a result, or unknown to squeue: give the result file a moment (a shared disk lags)
        job.gone_since = job.gone_since or time.monotonic()
        if time.monotonic() - job.gone_since > 10:
            what = f"ended as {state[0]}" if state else "is no longer known to SLURM"
            job.ret = self._ended(job, f"SLURM job {job.slurm.job_id} {what} without finishing")

    def _result(self, job: Job) -> JobReturn | None:
        """The job's result, once its folder holds one written since it was submitted and no process holds the
        folder: a metrics.json that is over (a task1 job), else the return value the job wrote (another app)."""
        if folders.held(job.folder):
            return None
        metrics = folders.read_metrics(job.folder)
        if _stamp(job.folder / "metrics.json") != job.stamps[0] and metrics.get("status") in OVER:
            metric = job.cfg.get("optimized_metric")
            done = metrics["status"] == "completed" and metric
            return self._returned(job, JobStatus.COMPLETED, metrics.get("final", {}).get(metric) if done else None)
        saved = read_json(job.folder / RETURN)
        if _stamp(job.folder / RETURN) == job.stamps[1] or "status" not in saved:
            return None
        if saved["status"] == "completed":
            return self._returned(job, JobStatus.COMPLETED, saved.get("value"))
        # the exception stays in the job; here, one of the same name and message (the sweeper reports it)
        raised = type(str(saved.get("type") or "Exception"), (Exception,), {"__module__": "builtins"})
        return self._returned(job, JobStatus.FAILED, raised(saved.get("error", "")))

    def _returned(self, job: Job, status: JobStatus, value: Any) -> JobReturn:
        return JobReturn(overrides=job.overrides, status=status, _return_value=value, working_dir=str(job.folder),
                         task_name=str(job.cfg.hydra.job.name))

    def _ended(self, job: Job, why: str) -> JobReturn:
        """A job that ended without a result: its folder says so (its checkpoints stay for the next start), and
        the sweep goes on, as for a failed job."""
        metrics = folders.read_metrics(job.folder)
        if metrics.get("status") not in ("completed", "pruned", "failed") and not folders.held(job.folder):
            last = next((c for c in (job.folder / "checkpoints" / n for n in ("last.ckpt", PACK_STATE))
                         if c.is_file()), job.folder / "checkpoints" / "last.ckpt")
            again = (f"Run the same command again to resume it from {last}" if last.is_file()
                     else "Run the same command again to train it")
            write_json(job.folder / "metrics.json", {**metrics, "status": "interrupted", "error": f"{why}. {again}.",
                                                     "final": metrics.get("final", {})})
        log.error("job %d: %s (%s)", job.num, why, job.folder)
        return self._returned(job, JobStatus.COMPLETED, None)

    # --- inside the SLURM job

    def __call__(self, overrides: list[str], job_dir_key: str, num: int, job_id: str,
                 singleton_state: dict) -> JobReturn:
        import submitit

        started = time.time()
        Singleton.set_state(singleton_state)
        setup_globals()
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        with open_dict(cfg.hydra):
            cfg.hydra.job.id, cfg.hydra.job.num = submitit.JobEnvironment().job_id, num
            if rank:  # rank 0 writes the folder's .hydra/ and train.log; each other rank a log of its own
                cfg.hydra.output_subdir = None
                if OmegaConf.select(cfg, "hydra.job_logging.handlers.file") is not None:
                    log_file = f"${{hydra.runtime.output_dir}}/train_rank_{rank}.log"
                    cfg.hydra.job_logging.handlers.file.filename = log_file
        catch_warnings(signal_delay(self.params))
        ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=cfg,
                      job_dir_key=job_dir_key, job_subdir_key="hydra.sweep.subdir")
        folder = Path(ret.hydra_cfg.hydra.runtime.output_dir)
        if folders.read_metrics(folder).get("status") == "interrupted":
            stopped(folder, rank, started)  # no result: the job is requeued, or its end is the submitter's to see
        if rank == 0:
            write_json(folder / RETURN, returned(ret))
        return ret


BASE = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
        "stderr_to_stdout"}  # submitit's own names; every other parameter is SLURM's (slurm_<name>)


def returned(ret: JobReturn) -> dict:
    """What a job's task function returned, as JSON for its folder: a value JSON cannot hold is written as the
    number(s) it stands for (a NumPy scalar, a tensor), else as its repr."""
    if ret.status != JobStatus.COMPLETED:
        error = ret._return_value
        return {"status": "failed", "type": type(error).__name__, "error": str(error),
                "traceback": "".join(traceback.format_exception(error))}
    for plain in (lambda v: v, float, lambda v: [float(x) for x in v], repr):  # (repr always answers)
        try:
            value = plain(ret._return_value)
            json.dumps(value)
            break
        except (TypeError, ValueError):
            continue
    return {"status": "completed", "value": value}


def _states(ids, timeout: float = 60) -> tuple[dict[str, tuple[str, str]], str | None]:
    """job id -> (state, reason), as squeue has them (arrays expanded; a job it no longer knows is absent), and
    what went wrong when squeue did not answer within `timeout` s (then nothing is known: the dict is empty)."""
    arrays = sorted({i.split("_")[0] for i in ids})
    try:
        out = _run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j", ",".join(arrays)], timeout=timeout)
    except subprocess.TimeoutExpired:
        return {}, f"squeue gave no answer within {timeout:g} s"
    except OSError as e:
        return {}, f"squeue: {e.strerror or e}"
    said = (out.stderr.strip().splitlines() or [""])[-1].strip()
    if out.returncode and "Invalid job id" not in said:  # (every job asked for is over and forgotten: an answer)
        return {}, f"squeue ended with status {out.returncode}: {said}"
    rows = (line.split("|") for line in out.stdout.splitlines() if line.count("|") == 2)
    return {i: (state, reason) for i, state, reason in rows}, None


def check_fits(p: dict) -> None:
    """Refuse, before anything is submitted, a request that no node of the partition can hold (sinfo's view),
    naming the field: SLURM would refuse it in words that name none, or leave it pending for ever."""
    try:
        out = _run(["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G|%l"]).stdout
    except (OSError, subprocess.SubprocessError):
        return
    nodes = []
    for line in out.splitlines():
        part, cpus, mem, gres, limit = [*line.split("|"), "", "", "", ""][:5]
        if part.rstrip("*") == p.get("partition") or (p.get("partition") is None and part.endswith("*")):
            gpus = sum(int(n) for n in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres))
            nodes.append((int(cpus.rstrip("+") or 0), int(mem.rstrip("+") or 0), gpus, _minutes(limit)))
    if not nodes:
        return  # an unknown partition: sbatch says so
    where = f"partition {p.get('partition') or '(the default)'}"
    cpus, most = p["cpus_per_task"] * p["tasks_per_node"], max(n[0] for n in nodes)
    if cpus > most:
        raise Task1Error(f"hydra.launcher.cpus_per_task={p['cpus_per_task']} x tasks_per_node={p['tasks_per_node']} "
                         f"asks for {cpus} CPUs on a node, and the nodes of {where} have at most {most}: set "
                         f"hydra.launcher.cpus_per_task (or threads) lower.")
    mem, most = p["mem_gb"] * 1024, max(n[1] for n in nodes)
    if mem > most:
        raise Task1Error(f"hydra.launcher.mem_gb={p['mem_gb']} is more than the nodes of {where} have ({most} MB at "
                         f"most): set hydra.launcher.mem_gb={most // 1024} or less.")
    gpus, most = p.get("gpus_per_node") or 0, max(n[2] for n in nodes)
    if gpus > most:
        has = f"at most {most} GPUs" if most else "no GPU"
        raise Task1Error(f"hydra.launcher.gpus_per_node={gpus} (from trainer=gpu / trainer.devices) asks for more "
                         f"than the nodes of {where} have ({has}): use trainer=cpu, hydra.launcher.partition=<a GPU "
                         f"partition>, or hydra.launcher.gpus_per_node=0.")
    most = max(n[3] for n in nodes)
    if p["timeout_min"] > most:
        raise Task1Error(f"hydra.launcher.timeout_min={p['timeout_min']} is longer than {where} allows ({most:g} "
                         f"minutes): set hydra.launcher.timeout_min={most:g} or less (a job that needs longer is "
                         f"requeued and resumes), or choose another partition.")


def _minutes(limit: str) -> float:
    """sinfo's time limit ([days-]hours:minutes:seconds, minutes:seconds, or infinite) in minutes."""
    days, _, clock = limit.rpartition("-")
    parts = [int(x) for x in clock.split(":") if x.isdigit()]
    if not parts or limit in ("infinite", "n/a"):
        return math.inf
    h, m, sec = ([0, 0, *parts] if len(parts) < 3 else parts)[-3:]
    return int(days or 0) * 1440 + h * 60 + m + sec / 60


def _asked(p: dict) -> str:
    return ", ".join(f"{k}={p[k]}" for k in SHOWN if p.get(k) is not None)


def _field_for(reason: str) -> str:
    for word, field in (("timelimit", "timeout_min=<minutes>"), ("nodelimit", "nodes=1"), ("account", "account"),
                        ("qos", "qos"), ("dependency", "additional_parameters (its dependency)")):
        if word in reason.lower():
            return f"hydra.launcher.{field}"
    return "the request (hydra.launcher.*) to what the partition has (sinfo -o '%P %c %m %G %l')"


def refusal(error: Exception, p: dict) -> str:
    """sbatch's refusal as one line that names the launcher's field."""
    lines = [ln.strip() for ln in str(error).splitlines() if "error" in ln.lower() and ln.strip()]
    said = next((ln for ln in reversed(lines) if "sbatch" in ln), lines[-1] if lines else error_line(error))
    field = next((f for word, f in REFUSALS if word in said.lower()), None)
    hint = (f"hydra.launcher.{field}={p.get(field)} is what it refused: set hydra.launcher.{field}=<value> to "
            f"what the cluster has (sinfo -o '%P %c %m %G %l' lists each partition's CPUs, memory, GPUs and time "
            f"limit)" if field else "check the launcher's fields (hydra.launcher.*) against sinfo")
    return f"SLURM refused the sweep's jobs ({said}); they asked for {_asked(p)}. {hint}."


# --- the job's side: the warning signals, and what a stopped job does


def _end_time() -> float | None:
    """When SLURM ends this job (its time limit), as a Unix time; None where it has none."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = _run(["squeue", "-h", "-j", job, "-o", "%e"]).stdout.strip().splitlines()
        return time.mktime(time.strptime(out[0], "%Y-%m-%dT%H:%M:%S")) if out else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def catch_warnings(delay_s: int) -> None:
    """Take SIGUSR1 and SIGUSR2 (the cluster's warning before the time limit, or a preemption) from submitit and
    Lightning: the run stops at the end of a batch with its checkpoint written; at the time limit's warning,
    which SLURM sends up to a minute early, only once `delay_s` are left."""
    from task1.core.callbacks import StopOnRequest

    end = _end_time()

    def on_warning(signum: int, frame) -> None:
        name, now = signal.Signals(signum).name, time.time()
        if end is not None and end - now <= delay_s + 90:
            StopOnRequest.request(f"{name}: the time limit is near", at=end - delay_s)
        else:
            StopOnRequest.request(f"{name}: preempted")

    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, on_warning)


def stopped(folder: Path, rank: int, started: float) -> None:
    """A run stopped by a signal: rank 0 requeues the job when a warning signal stopped it and it made progress,
    then every rank ends without a result (submitit writes none), so the submitting command goes on waiting."""
    from task1.core.callbacks import StopOnRequest

    if rank == 0 and StopOnRequest.requested:
        last, job = folder / "checkpoints" / "last.ckpt", slurm_job_id()
        if last.is_file() and last.stat().st_mtime >= started:
            log.info("%s: requeueing SLURM job %s; it resumes from %s", StopOnRequest.requested, job, last)
            _run(["scontrol", "requeue", job])
        else:
            metrics = folders.read_metrics(folder)
            write_json(folder / "metrics.json", {**metrics, "status": "failed", "error": (
                f"the SLURM job {job} was stopped ({StopOnRequest.requested}) before it wrote a checkpoint: it "
                f"cannot get anywhere within this time limit. Raise hydra.launcher.timeout_min, or lower "
                f"hydra.launcher.signal_delay_s.")})
            return
    sys.exit(3)
