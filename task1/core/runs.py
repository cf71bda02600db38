"""Run folders: never overwrite a finished run, resume a stopped one as it was, and record why a run stopped."""

import json
import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from task1 import Task1Error
from task1.io import write_json

log = logging.getLogger("task1")

# what an override beside resume= may change: where things are read and written, how much is logged, the
# threads, and how long training goes on; everything else would change the trajectory the run is on
RESUME_MAY_CHANGE = ("output_dir", "resume", "ckpt_path", "threads", "paths", "data.root", "data.download",
                     "logger", "figures", "checkpoint_every_n_steps", "optimized_metric", "trainer.max_epochs",
                     "trainer.log_every_n_steps", "trainer.enable_progress_bar", "trainer.enable_model_summary")


def check_run_folder(out: Path, resuming: bool) -> Path | None:
    """Refuse to train over an earlier run; when resuming, return the checkpoint to go on from."""
    metrics, last = out / "metrics.json", out / "checkpoints" / "last.ckpt"
    status = json.loads(metrics.read_text()).get("status") if metrics.is_file() else None
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


def _flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def check_resume(cfg: DictConfig, checkpoint: dict) -> list[str]:
    """Refuse overrides beside `resume=` that would change the run's trajectory, naming each with both values;
    return the changes allowed (`key: saved -> new`), for the run's log.

    The run's own config is the one its checkpoint holds (resolved when it started).
    """
    saved = checkpoint.get("hyper_parameters", {}).get("config")
    if not isinstance(saved, dict):
        return []  # a checkpoint of a task1 too old to record its config: the saved .hydra config is all there is
    now, then = _flat(OmegaConf.to_container(cfg, resolve=True)), _flat(saved)
    changed = [k for k in sorted(set(now) | set(then)) if now.get(k, "<absent>") != then.get(k, "<absent>")
               and k != "resume"]
    both = {k: (_show(then.get(k, "<absent>")), _show(now.get(k, "<absent>"))) for k in changed}
    differ = [k for k in changed if not any(k == p or k.startswith(p + ".") for p in RESUME_MAY_CHANGE)]
    if differ:
        shown = "; ".join(f"{k}: {both[k][0]} in the run, {both[k][1]} now" for k in differ)
        raise Task1Error(f"resume={cfg.resume}: a resumed run goes on as it started, so these cannot change: "
                         f"{shown}. Drop those overrides, or start a new run (python -m task1.rerun "
                         f"{cfg.resume} ...).")
    if "trainer.max_epochs" in changed:
        length = [k for k in ("scheduler.T_max", "scheduler.total_steps") if k in then and then[k] is None]
        if length:
            raise Task1Error(f"resume={cfg.resume}: trainer.max_epochs cannot change ({then.get('trainer.max_epochs')}"
                             f" -> {now['trainer.max_epochs']}): the run's {length[0]} was set from it, so the "
                             f"schedule would not be the one it started on. Start a new run instead.")
    return [f"{k}: {a} -> {b}" for k, (a, b) in both.items()]


def _show(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _stopped_by_signal(error: BaseException) -> bool:
    """SIGTERM (Lightning raises SIGTERMException), or Ctrl-C (Lightning exits on it)."""
    lightning_errors = sys.modules.get("lightning.pytorch.utilities.exceptions")  # no fit, no Lightning loaded
    return isinstance(error, SystemExit) or (lightning_errors is not None
                                             and isinstance(error, lightning_errors.SIGTERMException))


def failure_metrics(error: BaseException, history: list, seed: int | None,
                    out: Path) -> tuple[dict, Task1Error | None]:
    """metrics.json for a run that stopped early, and the Task1Error to raise instead of `error` (None: re-raise)."""
    replacement = None
    if isinstance(error, Task1Error):
        status, reason = "failed", str(error)
    elif _stopped_by_signal(error):
        status = "interrupted"
        reason = (f"Stopped by a signal during epoch {len(history) + 1} (checkpoints/last.ckpt holds the latest "
                  f"state). Continue with: python -m task1.train resume={out}")
        replacement = Task1Error(reason)
    else:
        status, reason = "failed", f"{type(error).__name__}: {error}"
    metrics = {"status": status, "error": reason, "seed": seed, "epochs": len(history), "final": {},
               "history": history}
    return metrics, replacement


def record_failure(cfg: DictConfig, error: Exception, seconds: float, rank: int = 0) -> None:
    """Log a failed sweep job; make sure its metrics.json says so, for the sweep report."""
    log.error("job failed: %s", str(error).strip().split("\n")[0], exc_info=not isinstance(error, Task1Error))
    out = Path(cfg.output_dir)
    if rank == 0 and not (out / "metrics.json").exists():  # train() records failures in fit itself
        out.mkdir(parents=True, exist_ok=True)
        metrics, _ = failure_metrics(error, [], cfg.get("seed"), out)
        write_json(out / "metrics.json", {**metrics, "wall_time_s": round(seconds, 3)})
