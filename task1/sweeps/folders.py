"""Sweep jobs known by their overrides, so that a sweep started again goes on where it stopped.

A job's folder is chosen by the `task1.job_folder` resolver (`hydra.sweep.subdir` in conf/hydra/default.yaml)
before Hydra writes the job's `.hydra/` into it: the folder whose `.hydra/overrides.yaml` holds this job's
overrides, when an earlier start of the sweep made one; else `<job number>` as in any fresh sweep; else, when
that number belongs to another job (a value was added to a swept list), the next free number. Then, in the
job, `continue_job` reads what the folder holds: a completed job is reused, an interrupted one resumes from its
`checkpoints/last.ckpt`, a failed one starts afresh. A trial of task1's Optuna search is a new job each time:
trial N is job N, in folder N.

The resolver runs in whatever process runs the job (the sweep's own, a joblib worker, a SLURM job): the task
function refers to this module, so unpickling it there imports the module, which registers the resolver.
"""

import itertools
import json
import logging
import shutil
from pathlib import Path

import yaml
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from task1 import Task1Error
from task1.core.runs import RESUME_MAY_CHANGE, config_changes
from task1.sweeps.jobs import is_search

log = logging.getLogger("task1")
RESOLVER = "task1.job_folder"
# a completed job is reused only if it trained what this job would: a longer run is another result
REUSE_MAY_CHANGE = tuple(k for k in RESUME_MAY_CHANGE if k != "trainer.max_epochs")


def saved_overrides(folder: Path) -> list[str] | None:
    """The overrides Hydra saved for the job in `folder` (None: not a job folder, or not yet written)."""
    try:
        saved = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return [str(o) for o in saved] if isinstance(saved, list) else None


def job_folder(sweep: Path, num: int, overrides: list[str]) -> str:
    """The folder, relative to `sweep`, of the job with these `overrides` (see the module's docstring)."""
    wanted = sorted(overrides)  # the same command typed in another order is the same job
    numbers = []
    for folder in sorted(p for p in sweep.glob("*") if p.is_dir()):
        saved = saved_overrides(folder)
        if saved is not None and sorted(saved) == wanted:
            return folder.name
        if folder.name.isdigit():
            numbers.append(int(folder.name))
    sweep.mkdir(parents=True, exist_ok=True)
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
    return job_folder(Path(str(_root_.hydra.sweep.dir)), int(num), overrides)


OmegaConf.register_new_resolver(RESOLVER, _resolve_job_folder, replace=True)


def continue_job(cfg: DictConfig) -> dict | None:
    """What a sweep job does with what its folder holds from an earlier start of the sweep.

    Returns the stored metrics of a job that ended (completed, or stopped by a sweeper): it is reused, not
    trained again. Otherwise returns None and the job trains: on from `checkpoints/last.ckpt` when it was
    interrupted after one (`cfg.resume` is set, the single-run resume path), else afresh (a failed job's
    results and checkpoints are cleared first).
    """
    out = Path(cfg.output_dir)
    path, last = out / "metrics.json", out / "checkpoints" / "last.ckpt"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    status = metrics.get("status")
    if status in (None, "interrupted") and last.is_file():
        log.info("%s: resuming from %s", out, last)
        cfg.resume = str(out)
        return None
    if status in (None, "interrupted", "failed"):
        if status or (out / "config_resolved.yaml").exists():  # it started before
            before = f"{status}: {(metrics.get('error') or '').partition(chr(10))[0]}" if status else "no checkpoint"
            log.info("%s: starting again from the beginning (%s before)", out, before)
        _clear(out, cfg)
        return None
    saved = out / "config_resolved.yaml"
    if saved.is_file():
        changes = config_changes(cfg, yaml.safe_load(saved.read_text()), REUSE_MAY_CHANGE)
        if changes:
            raise Task1Error(f"job {out} has {status} with another config than this job's (conf/ changed since?):"
                             f" {changes}. Start the sweep in a new folder, or delete {out} to train it again.")
    log.info("%s: reused, %s in an earlier start of this sweep (not trained again)", out, status)
    return metrics


def _clear(out: Path, cfg: DictConfig) -> None:
    """Remove what an earlier, unfinished attempt left: its metrics, checkpoints and logger files."""
    (out / "metrics.json").unlink(missing_ok=True)
    folders = [out / "checkpoints"]
    if cfg.get("logger") and cfg.logger.get("name"):
        folders.append(Path(cfg.logger.save_dir) / cfg.logger.name)
    for folder in folders:
        if folder.resolve().is_relative_to(out.resolve()):  # never outside the job's folder
            shutil.rmtree(folder, ignore_errors=True)
