"""task1: chapter 3 of Dive into Deep Learning as configurable Lightning + Hydra experiments.

The package's parts: `core/` trains (config check, build, callbacks, checkpoints, run folders), `data/`, `models/`
and `optim/` are what it trains, `sweeps/` serves multiruns, `tools/` holds the commands built on the core, and
`cli`, `io` and `plots` are the shared helpers. Importing task1 imports neither torch nor Lightning.
"""

__version__ = "0.1.0"


class Task1Error(Exception):
    """An error the user can fix (bad config, missing data, diverged run): printed as one short message."""


def first_line(text: object) -> str:
    """The first line of a message (an error that metrics.json recorded, say), stripped; "" for none."""
    return str(text or "").strip().partition("\n")[0]


def error_line(error: BaseException) -> str:
    """An exception as one line: its type and its whole message (a traceback's last line, without the newlines)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
