"""Sweep jobs known by their overrides, so that a sweep started again goes on where it stopped.

A job's folder is chosen by the `task1.job_folder` resolver (`hydra.sweep.subdir` in conf/hydra/default.yaml)
before Hydra writes the job's `.hydra/` into it: the folder whose `.hydra/overrides.yaml` holds this job's
overrides, when an earlier start of the sweep made one; else `<job number>` as in any fresh sweep; else, when
that number belongs to another job (a value was added to a swept list), the next free number. Then, in the
job, `continue_job` reads what the folder holds: a completed job is reused, one that stopped (interrupted, killed,
failed for a reason that may pass) resumes from its `checkpoints/last.ckpt`, a seeded divergence (it would fail the
same way) is reported and not trained again, and a job with no checkpoint starts afresh. Nothing here deletes a
checkpoint. Folders are claimed under a lock (`<sweep>/.claims.lock`), and only rank 0 of a job claims and decides:
the other ranks of a multi-task SLURM job find the folder and follow the decision rank 0 wrote into it. A trial of
task1's Optuna search is a new job each time: trial N is job N, in folder N.

Nothing touches a folder that another process holds (the job's own process of an earlier start, still running).
The process that runs a job takes its folder's hold when it resolves it, before Hydra writes `.hydra/` and opens
`train.log` there, and hands it to the job's function once Hydra is done (`let_go`, then `holding`), as a single
run's folder is handed over (task1.cli.WritableFolder); where another process holds it, the resolver gives Hydra a
scratch folder outside the sweep instead, and the job, in one line, leaves the folder to that process. A launcher
that only looks a job's folder up (to submit the job elsewhere) takes no hold (`_runs_here`).

The resolver runs in whatever process runs the job (the sweep's own, a joblib worker, a SLURM job): task1.train,
whose task function every such process unpickles, registers it when it is imported (`register_resolver`).
"""

import contextlib
import itertools
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from task1 import Task1Error, first_line
from task1.core.config import entries
from task1.core.runs import RESUME_MAY_CHANGE, config_changes
from task1.core.trust import read_saved_yaml
from task1.io import FolderInUseError, held, hold, holder, locked, read_json, write_json  # held: the one lock test
from task1.results import read_run
from task1.sweeps.context import is_search

log = logging.getLogger("task1")
RESOLVER = "task1.job_folder"
# a completed job is reused only if it trained what this job would: a longer run is another result
REUSE_MAY_CHANGE = tuple(k for k in RESUME_MAY_CHANGE if k != "trainer.max_epochs")
# the folders of the jobs this process runs, held from their resolution until Hydra has set the job up (`let_go`)
_holds: dict[Path, contextlib.ExitStack] = {}
# a job whose folder another process held at its resolution: folder -> (the scratch folder Hydra got, why)
_in_use: dict[Path, tuple[Path, str]] = {}


def saved_overrides(folder: Path) -> list[str] | None:
    """The overrides Hydra saved for the job in `folder` (None: not a job folder, or not yet written)."""
    try:
        saved = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return [str(o) for o in saved] if isinstance(saved, list) else None


def other_rank() -> bool:
    """A process that a launcher (Lightning's DDP, torchrun, srun) started as a rank other than 0 of a job: it
    trains into the folder that rank 0 holds."""
    return any(os.environ.get(k, "0") != "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _find(sweep: Path, wanted: list[str]) -> tuple[str | None, list[int]]:
    numbers = []
    for folder in sorted(p for p in sweep.glob("*") if p.is_dir()):
        saved = saved_overrides(folder)
        if saved is not None and sorted(saved) == wanted:
            return folder.name, numbers
        if folder.name.isdigit():
            numbers.append(int(folder.name))
    return None, numbers


def job_folder(sweep: Path, num: int, overrides: list[str], wait_s: float = 600, hold_it: bool = False) -> str:
    """The folder, relative to `sweep`, of the job with these `overrides` (see the module's docstring).

    A rank other than 0 never claims: it waits (up to `wait_s`) for the folder its rank 0 claims. With `hold_it`
    (the process that runs the job), rank 0 holds the folder from here on (`_hold`)."""
    wanted = sorted(overrides)  # the same command typed in another order is the same job
    if other_rank():
        deadline = time.monotonic() + wait_s
        while (found := _find(sweep, wanted)[0]) is None:
            if time.monotonic() > deadline:
                raise Task1Error(f"rank {os.environ.get('SLURM_PROCID', '?')} of job {num}: rank 0 made no folder "
                                 f"for it in {sweep} within {wait_s:.0f} s.")
            time.sleep(0.5)
        return found
    with locked(sweep / ".claims.lock"):  # one claim at a time: two jobs never take one number or one job two
        found, numbers = _find(sweep, wanted)
        name = found if found is not None else _claim(sweep, num, overrides, numbers)
    return _hold(sweep, name) if hold_it else name


def _hold(sweep: Path, name: str) -> str:
    """`name`, its folder held by this process until Hydra has set its job up (`let_go`); where another process
    holds it, a new scratch folder (an absolute path: Hydra joins it to the sweep's folder as itself), so that
    Hydra writes nothing into the held one."""
    folder = Path(os.path.abspath(sweep / name))
    if folder in _holds:  # resolved again while Hydra sets the job up
        return name
    if folder in _in_use:
        return str(_in_use[folder][0])
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(hold(folder))
    except FolderInUseError as e:
        if holder(folder).startswith(f"process {os.getpid()} on {socket.gethostname()} "):
            return name  # resolved again while its job runs here
        scratch = Path(tempfile.mkdtemp(prefix=f"task1-job-in-use-{folder.name}-"))
        _in_use[folder] = (scratch, str(e))
        return str(scratch)
    _holds[folder] = stack
    return name


def let_go(out: Path) -> None:
    """Hydra has written the job's .hydra/ and opened its train.log (task1.cli.WritableFolder.on_job_start): the
    hold that the resolution of its folder `out` took is let go, for the job's function to take at once."""
    stack = _holds.pop(Path(os.path.abspath(out)), None)
    if stack is not None:
        stack.close()


def holding(out: Path) -> contextlib.AbstractContextManager:
    """The folder `out` of a run or of a sweep's job, held for the block. A job whose folder another process held
    when it was resolved (`out` is its scratch folder) gets that FolderInUseError instead."""
    why = _drop_scratch(Path(os.path.abspath(out)))
    if why is not None:
        raise FolderInUseError(why)
    return hold(out)


def release(out: Path) -> None:
    """What the resolution of a job that does not run took (its folder's hold, its scratch folder), let go."""
    let_go(out)
    _drop_scratch(Path(os.path.abspath(out)))


def _drop_scratch(out: Path) -> str | None:
    """Why the job whose scratch folder is `out` does not run (None: `out` is no scratch folder); the scratch
    folder, where Hydra wrote .hydra/ and train.log, is removed."""
    for folder, (scratch, why) in list(_in_use.items()):
        if scratch == out:
            del _in_use[folder]
            shutil.rmtree(scratch, ignore_errors=True)
            return why
    return None


def _runs_here(num: int, overrides: list[str]) -> bool:
    """Whether this process resolves the folder to run the job: Hydra's run_job (in every launcher) makes the
    job's config the current one first, then writes .hydra/ and train.log. A launcher that looks the folder up
    to submit the job elsewhere (task1's SLURM and packed launchers) has its own sweep's config current."""
    if not HydraConfig.initialized():
        return False
    current = HydraConfig.get()
    return (OmegaConf.select(current, "job.num", default=None) == num
            and OmegaConf.to_container(current.overrides.task) == overrides)


def _claim(sweep: Path, num: int, overrides: list[str], numbers: list[int]) -> str:
    for n in itertools.chain([num], itertools.count(max(numbers, default=-1) + 1)):
        try:
            (sweep / str(n)).mkdir()  # atomic: two new jobs running at once never take the same number
        except FileExistsError:
            continue
        # claimed at once under this job's overrides (Hydra writes the same file next), so that a job running
        # at the same time, or this one resolving its folder again, finds it
        (sweep / str(n) / ".hydra").mkdir()
        (sweep / str(n) / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(list(overrides)))
        return str(n)
    raise AssertionError("unreachable: itertools.count never ends")


def _resolve_job_folder(*, _root_: DictConfig) -> str:
    num = OmegaConf.select(_root_, "hydra.job.num", default=None)
    if num is None or OmegaConf.select(_root_, "hydra.mode") != RunMode.MULTIRUN:
        return str(num)  # a config printed outside a sweep's job: no folder to look up or claim
    if is_search(_root_.hydra):  # an Optuna search's trial N is job N, a new job each: its folder is N
        return str(num)
    overrides = OmegaConf.to_container(_root_.hydra.overrides.task)
    return job_folder(Path(str(_root_.hydra.sweep.dir)), int(num), overrides, hold_it=_runs_here(int(num), overrides))


def register_resolver() -> None:
    """Make `${task1.job_folder:}` (hydra.sweep.subdir in conf/hydra/default.yaml) resolve in this process."""
    OmegaConf.register_new_resolver(RESOLVER, _resolve_job_folder, replace=True)


def read_metrics(folder: Path) -> dict:
    return read_run(folder).data


def ended(metrics: dict) -> bool:
    """A job that is over: completed, stopped by a sweeper, or failed in a way that would repeat."""
    return metrics.get("status") in ("completed", "pruned") or (metrics.get("status") == "failed"
                                                                and bool(metrics.get("repeats")))


def needs_work(folder: Path) -> bool:
    """Whether the job of `folder` has anything left to train: false for a job that is over, or that a live
    process holds (a launcher submits neither)."""
    return not ended(read_metrics(folder)) and not held(folder)


def record_stop(folder: Path, why: str) -> bool:
    """Make the metrics.json of a job that stopped without recording it (killed before its training took the
    signal, or never begun) say so: `interrupted`, `why`, and how it goes on. A job that recorded how it ended, or
    that a live process holds, is left as it is. Returns whether it was written."""
    metrics = read_metrics(folder)
    if metrics.get("status") in ("completed", "pruned", "failed", "interrupted") or held(folder):
        return False
    last = folder / "checkpoints" / "last.ckpt"
    again = f"resume it from {last}" if last.is_file() else "train it"
    write_json(folder / "metrics.json", {**metrics, "status": "interrupted", "final": metrics.get("final", {}),
                                         "error": f"{why}. Run the same command again to {again}."})
    return True


def continue_job(cfg: DictConfig) -> dict | None:
    """What a sweep job does with what its folder holds from an earlier start of the sweep.

    Returns the stored metrics of a job that is over (see `ended`): it is reused, not trained again. Otherwise
    returns None and the job trains: on from `checkpoints/last.ckpt` when there is one, whatever stopped it
    (`cfg.resume` is set: the single-run resume path), else afresh (what a start before its first checkpoint
    left, metrics and logger files, is cleared first). The other ranks of a multi-task job follow rank 0.
    """
    out = Path(cfg.output_dir)
    if other_rank():
        return _follow_rank_zero(cfg, out)
    metrics = _decide(cfg, out)
    _tell_other_ranks(out, cfg.get("resume"), metrics is not None)
    return metrics


def _decide(cfg: DictConfig, out: Path) -> dict | None:
    last = out / "checkpoints" / "last.ckpt"
    metrics = read_metrics(out)
    status = metrics.get("status")
    first = first_line(metrics.get("error")).partition(" (")[0].partition(". ")[0]
    before = f"{status}: {first}" if status else "no record of its end"
    if ended(metrics):
        saved = out / "config_resolved.yaml"
        if saved.is_file():
            changes = config_changes(cfg, read_saved_yaml(saved), REUSE_MAY_CHANGE)  # data: one line if not
            if changes:
                raise Task1Error(f"job {out} has {status} with another config than this job's (conf/ changed "
                                 f"since?): {changes}. Start the sweep in a new folder, or delete {out} to train it "
                                 f"again.")
        if status == "failed":
            log.warning("%s: not trained again: it failed in an earlier start of this sweep and would fail the "
                        "same way (%s). To try it again: delete %s (it then resumes from its last checkpoint).",
                        out, before, out / "metrics.json")
        else:
            log.info("%s: reused, %s in an earlier start of this sweep (not trained again)", out, status)
            if (cfg.get("figures") or {}).get("enabled"):  # its process may have ended before they were drawn
                from task1.drawer import restore_run_figures

                restore_run_figures(metrics, out)
        return metrics
    if last.is_file():
        log.info("%s: resuming from %s (%s before)", out, last, before)
        cfg.resume = str(out)
        return None
    if status or (out / "config_resolved.yaml").exists():  # it started before, and stopped before a checkpoint
        log.info("%s: starting again from the beginning (%s before; no checkpoint)", out, before)
    _clear(out, cfg)
    return None


def _token() -> str | None:
    """What names this start of a multi-task SLURM job, the same in all of its ranks (None: not one)."""
    if int(os.environ.get("SLURM_NTASKS", "1")) < 2 or "SLURM_JOB_ID" not in os.environ:
        return None
    return ".".join(os.environ.get(k, "0") for k in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT"))


def _tell_other_ranks(out: Path, resume: str | None, reused: bool) -> None:
    token = _token()
    if token is not None:
        write_json(out / ".decision.json", {"token": token, "resume": resume, "reused": reused})


def _follow_rank_zero(cfg: DictConfig, out: Path, wait_s: float = 600) -> dict | None:
    token, deadline = _token(), time.monotonic() + wait_s
    while True:
        decision = read_json(out / ".decision.json")
        if token is None or decision.get("token") == token:
            break
        if time.monotonic() > deadline:
            raise Task1Error(f"{out}: rank 0 of this job decided nothing within {wait_s:.0f} s.")
        time.sleep(0.2)
    if decision.get("reused"):
        return read_metrics(out)
    cfg.resume = decision.get("resume")
    return None


def _clear(out: Path, cfg: DictConfig) -> None:
    """Remove what an earlier attempt that stopped before its first checkpoint left: its metrics and logger
    files (there is no checkpoint: nothing of value is lost)."""
    (out / "metrics.json").unlink(missing_ok=True)
    folders = [Path(lg.save_dir) / lg.name for lg in entries(cfg.get("logger")).values() if lg.get("name")]
    for folder in folders:
        if folder.resolve().is_relative_to(out.resolve()):  # never outside the job's folder
            shutil.rmtree(folder, ignore_errors=True)
