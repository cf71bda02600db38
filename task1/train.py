"""Train one configured model: `python -m task1.train [overrides]` (or `task1 train`), or `train(cfg)` from Python.

This entry point imports neither torch nor Lightning: `--help`, `--cfg job` and a mistake in the config answer
within a second or two; the training core is imported once the config has passed its checks.
"""

import contextlib
import logging
import sys
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from task1 import cli
from task1.core.runs import run_dir
from task1.io import FolderInUseError, hold
from task1.sweeps import folders  # registers the resolver that names sweep job folders (see there)

log = logging.getLogger("task1")


def train(cfg: DictConfig) -> dict:
    """Fit, then test, the configured model; write `metrics.json` into the run folder; return its contents."""
    from task1.core.config import validate

    validate(cfg)  # before Lightning is imported: a mistake costs no import
    from task1.core import build

    return build.train(cfg)


@hydra.main(version_base="1.3", config_path=str(cli.CONF), config_name="config")
@cli.exit_on_error
def run(cfg: DictConfig) -> float | None:
    """One job: a run, or one job of a multirun (which takes up what an earlier start of the sweep left in its
    folder; a failure is recorded and the sweep goes on). It holds its folder while it runs: a second process
    for the same folder (the same sweep started again while this one runs) stops at once, a sweep's job is left
    to the process that holds it."""
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        with contextlib.nullcontext() if folders.other_rank() else hold(run_dir(cfg)):
            return job(cfg, multirun)
    except FolderInUseError as e:
        if not multirun:
            raise
        log.error("%s This job is left to it; the sweep's report shows the job as it finds it.", e)
        return None


def job(cfg: DictConfig, multirun: bool) -> float | None:
    start = time.perf_counter()
    try:
        # a sweep started again: a job that ended is reused, an interrupted one resumes
        metrics = (folders.continue_job(cfg) if multirun else None) or train(cfg)
    except Exception as e:
        if not multirun:
            raise
        from task1.core.runs import record_failure  # one failed job must not end the sweep

        lightning_rank = getattr(sys.modules.get("lightning.pytorch.utilities"), "rank_zero_only", None)
        return record_failure(cfg, e, time.perf_counter() - start, getattr(lightning_rank, "rank", 0))
    metric = cfg.get("optimized_metric")
    return metrics["final"].get(metric) if metric else None


@cli.exit_on_error
def main() -> None:
    cli.answer_help(cli.train_help)
    sys.argv = cli.train_argv(sys.argv)  # a saved run's folder (rerun, resume=) -> its own config
    run()


if __name__ == "__main__":
    main()
