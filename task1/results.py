"""A run's results as its `metrics.json` holds them: the one reader, and the one record type, of every command
that reads them back (the sweep report, curves, reproduce, a sweep started again, the search, the API)."""

import os
from dataclasses import dataclass, field
from pathlib import Path

from task1 import first_line
from task1.io import read_json

METRICS = "metrics.json"


@dataclass(frozen=True)
class RunRecord:
    """One run's record: `data` is metrics.json as written ({} where the run has none: not run yet, or killed)."""

    folder: Path
    data: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        """completed, pruned (a search stopped it), failed, interrupted (it can resume), or incomplete (no
        record: killed before it wrote one, or still running)."""
        return self.data.get("status", "incomplete")

    @property
    def final(self) -> dict:
        return self.data.get("final") or {}

    @property
    def history(self) -> list[dict]:
        return self.data.get("history") or []

    @property
    def error(self) -> str:
        """The first line of why the run did not complete ("" when it did)."""
        return first_line(self.data.get("error"))


def read_run(folder: str | os.PathLike) -> RunRecord:
    return RunRecord(Path(folder), read_json(Path(folder) / METRICS))
