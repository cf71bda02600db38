"""What a run needs to be run again: library versions, the machine, and the project's git commit."""

import functools
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

PACKAGES = ("torch", "torchvision", "lightning", "hydra-core", "omegaconf", "numpy")
ROOT = Path(__file__).resolve().parents[2]


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
    """The git commit and whether tracked files were edited, once a process: the jobs of a sweep that one
    process runs start from the checkout the sweep started from (two git calls a job cost 15-25 ms)."""
    commit = _git("rev-parse", "HEAD")
    # untracked files (run folders, data) do not make a checkout dirty; edited tracked files do
    return commit, bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None


def provenance() -> dict:
    """Versions of python and the libraries, the CPU, the command, and the git commit with a dirty flag."""
    commit, dirty = _checkout()
    return {
        "python": platform.python_version(),
        **{name: _version(name) for name in PACKAGES},
        "platform": platform.platform(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "argv": sys.argv,
        "git_commit": commit,
        "git_dirty": dirty,
    }
