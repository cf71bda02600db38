"""task1: chapter 3 of Dive into Deep Learning as configurable Lightning + Hydra experiments.

The package's parts: `core/` trains (config check, build, callbacks, checkpoints, run folders), `data/`, `models/`
and `optim/` are what it trains, `sweeps/` serves multiruns, `tools/` holds the commands built on the core, and
`cli`, `io` and `plots` are the shared helpers. Importing task1 imports neither torch nor Lightning.
"""

__version__ = "0.1.0"


COMMAND = "TASK1_COMMAND"  # the environment variable that carries the command as typed to every process it starts


def typed(argv: list[str]) -> None:
    """Remember `argv` as the command the user typed (for the runs' provenance), unless a command that started
    this process already did: the variable passes to the jobs it starts (joblib, SLURM), which record it too."""
    import os
    import shlex

    os.environ.setdefault(COMMAND, shlex.join(argv))


class Task1Error(Exception):
    """An error the user can fix (bad config, missing data, diverged run): printed as one short message."""


def first_line(text: object) -> str:
    """The first line of a message (an error that metrics.json recorded, say), stripped; "" for none."""
    return str(text or "").strip().partition("\n")[0]


def error_line(error: BaseException) -> str:
    """An exception as one line: its type and its whole message (a traceback's last line, without the newlines)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
