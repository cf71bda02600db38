"""Run folders: never overwrite a finished run, resume a killed one, and record why a run stopped."""

import json
from pathlib import Path

import yaml
from lightning.pytorch.utilities.exceptions import SIGTERMException

from task1 import Task1Error


def resume_argv(argv: list[str]) -> list[str]:
    """`resume=<run folder>` -> the run's own overrides, then the other arguments, writing into that folder.

    Hydra then composes the very config the run started with (its `.hydra/overrides.yaml`), and keeps
    `.hydra/` of the first start as it is (`hydra.output_subdir=null`); the log goes on in its train.log.
    """
    given = [a for a in argv[1:] if a.startswith("resume=")]
    if not given:
        return argv
    run = Path(given[-1].split("=", 1)[1]).resolve()
    saved = run / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise Task1Error(f"resume={run}: not a run folder (there is no {saved}). Give the folder of a run that "
                         f"was stopped, e.g. resume=outputs/runs/<date>_<time>_<microseconds>.")
    overrides = yaml.safe_load(saved.read_text()) or []
    rest = [a for a in argv[1:] if not a.startswith("resume=")]
    return [argv[0], *overrides, *rest, f"resume={run}", f"hydra.run.dir={run}", "hydra.output_subdir=null"]


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


def failure_metrics(error: BaseException, history: list, seed: int | None,
                    out: Path) -> tuple[dict, Task1Error | None]:
    """metrics.json for a run that stopped early, and the Task1Error to raise instead of `error` (None: re-raise)."""
    replacement = None
    if isinstance(error, Task1Error):
        status, reason = "failed", str(error)
    elif isinstance(error, (SIGTERMException, SystemExit)):  # SIGTERM, or Ctrl-C (Lightning exits on it)
        status = "interrupted"
        reason = (f"Stopped by a signal during epoch {len(history) + 1} (checkpoints/last.ckpt holds the latest "
                  f"state). Continue with: python -m task1.train resume={out}")
        replacement = Task1Error(reason)
    else:
        status, reason = "failed", f"{type(error).__name__}: {error}"
    metrics = {"status": status, "error": reason, "seed": seed, "epochs": len(history), "final": {},
               "history": history}
    return metrics, replacement
