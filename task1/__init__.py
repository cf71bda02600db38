"""task1: chapter 3 of Dive into Deep Learning as configurable Lightning + Hydra experiments."""

import functools
import json
import logging
import os
import re
import sys
from pathlib import Path

__version__ = "0.1.0"


class Task1Error(Exception):
    """An error the user can fix (bad config, missing data, diverged run): printed as one short message."""


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write a file atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(content, bytes):
        tmp.write_bytes(content)
    else:
        tmp.write_text(content)
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    """`data` as indented JSON, written atomically (metrics.json, reports)."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def natural_key(name: str) -> list:
    """A sort key where numbers compare as numbers: d2l_3_2 < d2l_3_10, job 2 < job 10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def exit_on_error(entry):
    """Wrap an entry point so that a Task1Error is logged as its message alone and the process exits with 1."""

    @functools.wraps(entry)
    def wrapper(*args, **kwargs):
        try:
            return entry(*args, **kwargs)
        except Task1Error as e:
            logging.getLogger("task1").error("%s", e)
            sys.exit(1)

    return wrapper
