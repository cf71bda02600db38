"""Train one configured model: `python -m task1.train [overrides]` (or `task1-train`), or `train(cfg)` from Python.

This entry point imports neither torch nor Lightning: `--help`, `--cfg job` and a mistake in the config answer
within a second or two; the training core is imported once the config has passed its checks.
"""

import sys
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from task1 import cli
from task1.sweeps import folders  # registers the resolver that names sweep job folders (see there)


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
    folder; a failure is recorded and the sweep goes on)."""
    start = time.perf_counter()
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
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
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        print(cli.train_help())
        return
    sys.argv = cli.train_argv(sys.argv)  # a saved run's folder (rerun, resume=) -> its own config
    run()


if __name__ == "__main__":
    main()
