"""Train one configured model: `python -m task1.train [overrides]` (or `task1 train`), or `train(cfg)` from Python.

The path of a run: `main` (a saved run's folder becomes its config) -> `run` (Hydra's task function: one run,
or one job of a sweep) -> `job` (a sweep's job only: what its folder holds decides reuse, resume or training, and
a failure is recorded) -> `train(cfg)` (the config checked, then task1.core.build.fit) -> metrics.json.

This entry point imports neither torch nor Lightning: `--help`, `--cfg job` and a mistake in the config answer
within a second or two; the training core is imported once the config has passed its checks.
"""

import contextlib
import logging
import shutil
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from task1 import Task1Error, cli, drawer, typed
from task1.core.runs import run_dir
from task1.io import FolderInUseError
from task1.sweeps import context, folders

log = logging.getLogger("task1")
# every process that runs a sweep's job (a joblib worker, a SLURM job) unpickles `run`, so imports this module:
# here the folder of each job gets its resolver (hydra.sweep.subdir)
folders.register_resolver()


def train(cfg: DictConfig, callbacks=(), figures_drawn: bool = True) -> dict:
    """Fit, then test, the configured model; write `metrics.json` into the run folder; return its contents, with
    the run's figures on disk (`figures_drawn`; a sweep's job goes on while they are drawn)."""
    from task1.core.config import validate

    validate(cfg)  # before Lightning is imported: a mistake costs no import
    from task1.core.build import fit

    metrics = fit(cfg, tuple(callbacks))[0]
    if figures_drawn:
        drawer.settle()
    return metrics


@hydra.main(version_base="1.3", config_path=str(cli.CONF), config_name="config")
@cli.exit_on_error
def run(cfg: DictConfig) -> float | None:
    """One run (it holds its folder: a second process for it stops at once), or one job of a sweep."""
    if context.in_sweep():
        return job(cfg)
    try:
        with _holding(cfg):
            train(cfg)
    except FolderInUseError:  # the folder is another process's: left as it is
        raise
    except Task1Error:
        if not cfg.get("resume") and not folders.other_rank():
            forget_if_never_started(run_dir(cfg))
        raise
    return None


def _holding(cfg: DictConfig) -> contextlib.AbstractContextManager:
    """The run's folder held for the block (a sweep's job: from its resolution on, see folders.holding); a rank
    other than 0 holds nothing (it follows rank 0's folder)."""
    return contextlib.nullcontext() if folders.other_rank() else folders.holding(run_dir(cfg))


def forget_if_never_started(out: Path) -> None:
    """A run refused before it began (a mistake in its config) leaves no folder: Hydra made it for the run, with
    .hydra/ and train.log, and the lock; anything more (a config_resolved.yaml, a metrics.json) is kept."""
    if out.is_dir() and {p.name for p in out.iterdir()} <= {".hydra", ".lock", "train.log"}:
        shutil.rmtree(out, ignore_errors=True)


def job(cfg: DictConfig) -> float | None:
    """One job of a sweep: it goes on from what an earlier start of the sweep left in its folder (reused, resumed
    or trained: task1.sweeps.folders.continue_job), with its share of the cores and, in a search, its trial's
    pruning; a folder that another process holds is left to it, and a failure is recorded, not raised, so
    that the sweep goes on. Returns the `optimized_metric` the sweeper asked for."""
    start = time.perf_counter()
    cfg.threads = context.thread_budget(cfg.threads)
    try:
        with _holding(cfg):
            metrics = folders.continue_job(cfg) or train(cfg, search_callbacks(cfg), figures_drawn=False)
    except FolderInUseError as e:
        log.error("%s This job is left to it; the sweep's report shows the job as it finds it.", e)
        return None
    except Exception as e:
        from task1.core.runs import record_failure

        lightning_rank = getattr(sys.modules.get("lightning.pytorch.utilities"), "rank_zero_only", None)
        return record_failure(cfg, e, time.perf_counter() - start, getattr(lightning_rank, "rank", 0))
    finally:
        context.keep_imports_out_of_gc()  # the next job trains while this one's figures are drawn
    metric = cfg.get("optimized_metric")
    return metrics["final"].get(metric) if metric else None


def search_callbacks(cfg: DictConfig) -> list:
    """A job of task1's Optuna search reports to its trial and stops when pruned (only then is Optuna imported)."""
    if not context.in_search():
        return []
    from task1.sweeps.trial import pruning

    return pruning(cfg)


@cli.exit_on_error
def main() -> None:
    cli.answer_help(cli.train_help)
    typed(["python", "-m", "task1.train", *sys.argv[1:]])
    sys.argv = cli.train_argv(sys.argv)  # a saved run's folder (rerun, resume=) -> its own config
    run()


if __name__ == "__main__":
    main()
