"""task1: chapter 3 of Dive into Deep Learning as configurable Lightning + Hydra experiments."""

__version__ = "0.1.0"


class Task1Error(Exception):
    """An error the user can fix (bad config, missing data, diverged run): printed as one short message."""
