"""task1: chapter 3 of Dive into Deep Learning as configurable Lightning + Hydra experiments."""

import functools
import logging
import sys

__version__ = "0.1.0"


class Task1Error(Exception):
    """An error the user can fix (bad config, missing data, diverged run): printed as one short message."""


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
