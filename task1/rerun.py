"""Run a finished run again from its folder: `python -m task1.rerun <run folder> [overrides]`.

The run's `.hydra/config.yaml` (the full config, interpolations kept) becomes the primary config, so the rerun
trains exactly what the run trained; overrides such as `trainer.max_epochs=20` still apply on top.
"""

import sys
from pathlib import Path

from omegaconf import OmegaConf

from task1 import Task1Error, exit_on_error

CONF = Path(__file__).resolve().parents[1] / "conf"
CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def saved_config_dir(run: str | Path) -> Path:
    """The `.hydra` folder of a run folder (or that folder itself), checked to hold a saved config."""
    run = Path(run).resolve()
    hydra_dir = run if run.name == ".hydra" else run / ".hydra"
    if not (hydra_dir / "config.yaml").is_file():
        raise Task1Error(f"{run} is not a run folder: {hydra_dir / 'config.yaml'} does not exist. Pass the folder "
                         f"of a finished run, e.g. outputs/runs/<date>_<time>_<microseconds>.")
    return hydra_dir


def rerun_argv(argv: list[str]) -> list[str]:
    """Rewrite `--config-dir <run>/.hydra` into `--config-path`, and give the rerun a fresh run folder.

    Hydra searches `--config-dir` after conf/, so conf/config.yaml would shadow the saved config.yaml and the
    "rerun" would silently train the default model. Other uses of `--config-dir` pass through untouched.
    """
    args = list(argv)
    for i, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if name in CONFIG_DIR_FLAGS and (value or i + 1 < len(args)):
            path = Path(value or args[i + 1])
            if (path / "config.yaml").is_file() and (path / "hydra.yaml").is_file():  # a saved run, not conf/
                args[i:i + (1 if value else 2)] = ["--config-path", str(path.resolve())]
                return args + _run_dirs(args)
    return args


def _run_dirs(args: list[str]) -> list[str]:
    """conf/hydra/default.yaml's run and sweep folders, which the saved config (it has no defaults) lacks."""
    hydra = OmegaConf.to_container(OmegaConf.load(CONF / "hydra" / "default.yaml"), resolve=False)  # keep ${now:}
    dirs = {"hydra.run.dir": hydra["run"]["dir"], "hydra.sweep.dir": hydra["sweep"]["dir"],
            "hydra.sweep.subdir": hydra["sweep"]["subdir"]}
    given = {a.split("=", 1)[0] for a in args}
    return [f"{k}={v}" for k, v in dirs.items() if k not in given]


@exit_on_error
def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        print("usage: python -m task1.rerun <run folder> [overrides]", file=sys.stderr)
        sys.exit(2)
    config_dir = saved_config_dir(sys.argv[1])
    from task1 import train  # after the check: importing Lightning takes seconds

    sys.argv = rerun_argv([sys.argv[0], "--config-dir", str(config_dir), "--config-name", "config", *sys.argv[2:]])
    train.main()


if __name__ == "__main__":
    main()
