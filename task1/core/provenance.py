"""What a run needs to be run again: task1's and the libraries' versions (from the installed metadata), the machine,
and, when task1 runs from a git checkout, its commit."""

import functools
import os
import platform
import shlex
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from task1 import COMMAND

PACKAGES = ("task1", "torch", "torchvision", "lightning", "hydra-core", "omegaconf", "numpy")
ROOT = Path(__file__).resolve().parents[2]  # the checkout, when task1 runs from one (editable install, or sys.path)
CHECKOUT = (ROOT / ".git").exists()  # a wheel's site-packages may lie inside some other repository: not its commit


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):  # no git on this machine
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache
def _checkout() -> tuple[str | None, bool | None]:
    """The git commit and whether tracked files were edited, once a process (both null for an installed wheel):
    the jobs of a sweep that one process runs start from the checkout the sweep started from (two git calls a
    job cost 15-25 ms)."""
    commit = _git("rev-parse", "HEAD") if CHECKOUT else None
    # untracked files (run folders, data) do not make a checkout dirty; edited tracked files do
    return commit, bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None


def provenance() -> dict:
    """Versions of python, task1 and the libraries, the CPU, the command, and the checkout's git commit with a dirty
    flag (both null for an installed wheel)."""
    commit, dirty = _checkout()
    return {
        "python": platform.python_version(),
        **{name: _version(name) for name in PACKAGES},
        "platform": platform.platform(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "command": shlex.split(os.environ[COMMAND]) if COMMAND in os.environ else None,  # as the user typed it
        "argv": sys.argv,  # this process's own
        "git_commit": commit,
        "git_dirty": dirty,
    }
