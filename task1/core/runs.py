"""Run folders: never overwrite a finished run, resume a stopped one as it was, and record why a run stopped."""

import errno
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from task1 import Task1Error, error_line, first_line
from task1.core.trust import check_config
from task1.io import dotted, write_json
from task1.results import METRICS, read_run

log = logging.getLogger("task1")

# what an override beside resume= may change: where things are read and written, how much is logged, the
# threads, and how long training goes on; everything else would change the trajectory the run is on
RESUME_MAY_CHANGE = ("output_dir", "resume", "ckpt_path", "threads", "paths", "data.root", "data.download",
                     "logger", "figures", "checkpoint_every_n_steps", "optimized_metric", "trainer.max_epochs",
                     "trainer.log_every_n_steps", "trainer.enable_progress_bar", "trainer.enable_model_summary")


def check_writable(folder: Path) -> None:
    """Make `folder` (and its parents) and write a byte into it, fsynced: raise the OSError that says why not
    (permission denied, a path through a regular file, a read-only or full file system)."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder) as f:  # unnamed: nothing is left behind
        f.write(b"\0")
        f.flush()
        os.fsync(f.fileno())  # a full disk may accept the write into the page cache and refuse it only here


def run_dir(cfg: DictConfig) -> Path:
    """The folder a run trains into: the run it resumes, else its own output_dir."""
    if cfg.get("resume"):
        return Path(cfg.resume)
    try:
        return Path(cfg.output_dir)
    except InterpolationResolutionError:  # `${hydra:runtime.output_dir}` outside a Hydra app
        raise Task1Error("output_dir=${hydra:runtime.output_dir} has no value outside a Hydra app: train the "
                         "config with task1.api.train(cfg), which gives it a run folder, or set output_dir=<folder>."
                         ) from None


def check_run_folder(out: Path, resuming: bool) -> Path | None:
    """Refuse to train over an earlier run; when resuming, return the checkpoint to go on from."""
    metrics, last = out / METRICS, out / "checkpoints" / "last.ckpt"
    status = read_run(out).data.get("status")
    if not resuming:
        if status or last.exists():
            raise Task1Error(f"{out} already holds a run: choose another folder, or continue that one with "
                             f"resume={out}.")
        return None
    if status == "completed":
        raise Task1Error(f"resume={out}: that run has completed, there is nothing to resume (its results are in "
                         f"{metrics}).")
    if not last.is_file():
        raise Task1Error(f"resume={out}: there is no {last} (the run stopped before its first checkpoint). "
                         f"Start it again without resume.")
    return last


def _changes(cfg: DictConfig, saved: dict) -> dict[str, tuple[str, str]]:
    """Every key where `cfg`, resolved, differs from a run's `saved` config: (saved value, new value), shown."""
    now, then = dotted(OmegaConf.to_container(cfg, resolve=True)), dotted(saved)
    return {k: (_show(then.get(k, "<absent>")), _show(now.get(k, "<absent>"))) for k in sorted(set(now) | set(then))
            if now.get(k, "<absent>") != then.get(k, "<absent>") and k != "resume"}


def config_changes(cfg: DictConfig, saved: dict, may_change: tuple[str, ...] = RESUME_MAY_CHANGE) -> str:
    """The keys (but those of `may_change`) where `cfg`, resolved, differs from a run's `saved` config, each
    with both values ("" when none differ)."""
    allowed = lambda key: any(key == p or key.startswith(p + ".") for p in may_change)  # noqa: E731
    return "; ".join(f"{k}: {a} in the run, {b} now" for k, (a, b) in _changes(cfg, saved).items() if not allowed(k))


def check_resume(cfg: DictConfig, checkpoint: dict) -> list[str]:
    """Refuse overrides beside `resume=` that would change the run's trajectory, naming each with both values;
    return the changes allowed (`key: saved -> new`), for the run's log.

    The run's own config is the one its checkpoint holds (resolved when it started).
    """
    saved = checkpoint.get("hyper_parameters", {}).get("config")
    if not isinstance(saved, dict):
        return []  # a checkpoint of a task1 too old to record its config: the saved .hydra config is all there is
    # compared, not built; but data all the same: what it names is refused in one line, as in the run's config,
    # unless this run (its config checked, or composed from the user's own) names the same at that key
    now = dotted(OmegaConf.to_container(cfg, resolve=True))
    same = [f"{k}=" for k, v in dotted(saved).items() if k in now and now[k] == v]
    check_config(saved, f"{Path(cfg.resume) / 'checkpoints' / 'last.ckpt'} (its hyper_parameters.config)", same)
    shown = config_changes(cfg, saved)
    if shown:
        raise Task1Error(f"resume={cfg.resume}: a resumed run goes on as it started, so these cannot change: "
                         f"{shown}. Drop those overrides, or start a new run (task1 rerun "
                         f"{cfg.resume} ...).")
    changed, then = _changes(cfg, saved), dotted(saved)
    if "trainer.max_epochs" in changed:
        length = [k for k in ("scheduler.T_max", "scheduler.total_steps") if k in then and then[k] is None]
        if length:
            raise Task1Error(f"resume={cfg.resume}: trainer.max_epochs cannot change "
                             f"({' -> '.join(changed['trainer.max_epochs'])}): the run's {length[0]} was set from "
                             f"it, so the schedule would not be the one it started on. Start a new run instead.")
    return [f"{k}: {a} -> {b}" for k, (a, b) in changed.items()]


def _show(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


class InterruptedRunError(Task1Error):
    """A run stopped by a signal, its latest state in checkpoints/last.ckpt: it resumes."""


def _stopped_by_signal(error: BaseException) -> bool:
    """SIGTERM (Lightning raises SIGTERMException), or Ctrl-C (Lightning exits on it)."""
    lightning_errors = sys.modules.get("lightning.pytorch.utilities.exceptions")  # no fit, no Lightning loaded
    return isinstance(error, SystemExit) or (lightning_errors is not None
                                             and isinstance(error, lightning_errors.SIGTERMException))


def task1_command() -> str:
    """`task1` as this user can type it: by its path where the venv that runs this is not active (the system's
    python has no task1), `python -m task1` where no script was installed."""
    script, on_path = Path(sys.executable).parent / "task1", shutil.which("task1")
    if on_path and script.exists() and os.path.samefile(on_path, script):
        return "task1"
    return str(script) if script.exists() else f"{sys.executable} -m task1"


def resume_command(out: Path) -> str:
    """The command that goes on with the run in `out`: `task1 train resume=<out>`; for a sweep's job, the sweep's
    (`resume=<sweep folder>`: the sweep goes on where it stopped, this job with it)."""
    out = Path(out).absolute()
    sweep = out.parent if (out.parent / "multirun.yaml").is_file() else None
    return f"{task1_command()} train resume={sweep or out}"


def no_space_error(error: BaseException, out: Path) -> Task1Error | None:
    """The one line for a full disk (or quota) behind `error`, wherever it surfaced (torch's checkpoint writer, for
    one, raises its own RuntimeError, "unexpected pos", with the OSError only as its context), its cause kept;
    None for any other error."""
    full, seen = error, set()
    while full is not None and not (isinstance(full, OSError) and full.errno in (errno.ENOSPC, errno.EDQUOT)):
        seen.add(id(full))
        full = full.__cause__ or full.__context__
        full = None if id(full) in seen else full
    if full is None:
        return None
    cause = error_line(error) + (f"; caused by {error_line(full)}" if full is not error else "")
    then = (f"then go on with: {resume_command(out)}" if (out / "checkpoints" / "last.ckpt").is_file() else
            "then start it again")  # the files written before are whole (atomic writes): a resume goes on from them
    return Task1Error(f"no space left on {_device(out)} while writing into {out}: free space there, {then} ({cause})")


def _device(path: Path) -> str:
    """The device (and mount point) that holds `path`, from /proc/self/mounts; the path itself where unknown."""
    path, best = Path(path).absolute(), None
    try:
        mounts = [line.split()[:2] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return str(path)
    for device, point in mounts:
        point = point.replace("\\040", " ")
        if path.is_relative_to(point) and (best is None or len(point) >= len(best[1])):
            best = (device, point)
    return f"{best[0]} (mounted at {best[1]})" if best else str(path)


def failure_metrics(error: BaseException, history: list, seed: int | None,
                    out: Path) -> tuple[dict, Task1Error | None]:
    """metrics.json for a run that stopped early, and the Task1Error to raise instead of `error` (None: re-raise)."""
    replacement = None
    full = no_space_error(error, out) if not isinstance(error, Task1Error) else None
    if isinstance(error, Task1Error):
        status, reason = "failed", str(error)
    elif _stopped_by_signal(error):
        status = "interrupted"
        reason = (f"Stopped by a signal during epoch {len(history) + 1} (checkpoints/last.ckpt holds the latest "
                  f"state). Continue with: {resume_command(out)}")
        replacement = InterruptedRunError(reason)
    elif full is not None:  # a checkpoint, a log or a figure could not be written
        status, reason, replacement = "failed", str(full), full
    else:
        status, reason = "failed", f"{type(error).__name__}: {error}"
    metrics = stopped_metrics(status, reason, seed, history)
    if seed is not None and type(error).__name__ == "DivergedError":
        metrics["repeats"] = True  # seeded, it diverges again at the same step: a sweep does not retrain it
    return metrics, replacement


def stopped_metrics(status: str, reason: str, seed: int | None, history: list) -> dict:
    """metrics.json of a run that stopped before its end (failed, interrupted): why, and its epochs so far."""
    return {"status": status, "error": reason, "seed": seed, "epochs": len(history), "final": {}, "history": history}


def record_failure(cfg: DictConfig, error: Exception, seconds: float, rank: int = 0) -> None:
    """Log a failed sweep job; make sure its metrics.json says so, for the sweep report."""
    if isinstance(error, InterruptedRunError):
        log.warning("job stopped: %s", error)
    else:
        log.error("job failed: %s", first_line(error), exc_info=not isinstance(error, Task1Error))
    out = Path(cfg.output_dir)
    if rank == 0 and not (out / "metrics.json").exists():  # train() records failures in fit itself
        out.mkdir(parents=True, exist_ok=True)
        metrics, _ = failure_metrics(error, [], cfg.get("seed"), out)
        write_json(out / "metrics.json", {**metrics, "wall_time_s": round(seconds, 3)})
