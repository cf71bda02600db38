"""Small shared helpers: atomic file writes, a folder one process at a time, a natural sort key, nested dicts as
dotted keys."""

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from task1 import Task1Error


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file that replaces `path` only once it is complete and on disk.

    The data goes to a temporary file of a unique name in the same folder (so two writers never share one, and
    the rename never crosses file systems), is flushed and fsynced, then renamed over `path`: a crash leaves the
    old file or the new one, never half of one. On an error the temporary file is removed.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike, content: str | bytes) -> None:
    """Write `content` to `path` atomically (see `atomic_open`)."""
    with atomic_open(path) as f:
        f.write(content if isinstance(content, bytes) else content.encode())


def write_json(path: str | os.PathLike, data: dict) -> None:
    """`data` as indented JSON, written atomically (metrics.json, reports)."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from `path`; {} where there is none (no file yet, or not a JSON object)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on the file `path` for the block, waited for (flock: it ends with the process)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with contextlib.suppress(OSError):  # a file system without locks: unguarded, as `hold` is
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class FolderInUseError(Task1Error):
    """Another process holds the folder (see `hold`)."""


@contextlib.contextmanager
def hold(folder: str | os.PathLike) -> Iterator[None]:
    """Keep `folder` to this process for the block: an exclusive lock on `<folder>/.lock`, which names the holder.

    A second process that asks for the folder meanwhile gets FolderInUseError at once, naming the holder, instead of
    training into the same files. The lock is the kernel's (flock; on NFS the client takes it on the server), so
    it ends with the process however that ends: a killed run leaves no stale lock. The file stays. Where the file
    system has no locks, the block runs unguarded, with a warning.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 300).decode(errors="replace").strip() or "another process"
            raise FolderInUseError(f"{folder} is in use by {holder}: wait for it to end (or stop it), then run this "
                                   f"again.") from None
        except OSError as e:  # a file system without locks (ENOLCK, EOPNOTSUPP): go on, unguarded, and say so
            logging.getLogger("task1").warning("%s cannot be locked here (%s): nothing stops a second process from "
                                               "training into it at the same time", folder, e.strerror or e)
        os.ftruncate(fd, 0)
        job = f" (SLURM job {slurm_job_id()})" if slurm_job_id() else ""
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}{job} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        yield
    finally:
        os.close(fd)


def slurm_job_id() -> str | None:
    """The SLURM job this process runs in, as squeue and scontrol name it (`<array>_<index>` in an array)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    return os.environ.get("SLURM_JOB_ID")


def holder(folder: str | os.PathLike) -> str:
    """What `<folder>/.lock` says of the process that holds (or last held) the folder."""
    try:
        return (Path(folder) / ".lock").read_text().strip()
    except OSError:
        return ""


def override_key(override: str) -> str:
    """The key an override sets: `+model.num_hiddens=8`, `~logger`, `model=mlp` -> model.num_hiddens, logger, model."""
    return override.split("=", 1)[0].lstrip("+~")


def natural_key(name: str) -> list:
    """A sort key where numbers compare as numbers: d2l_3_2 < d2l_3_10, job 2 < job 10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def dotted(node, prefix: str = "") -> dict:
    """A nested dict as {dotted key: value} (an empty dict is a value: `{"a": {}}` -> `{"a": {}}`)."""
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    return {k: v for key, value in node.items()
            for k, v in dotted(value, f"{prefix}.{key}" if prefix else str(key)).items()}
