"""Small shared helpers: atomic file writes, a folder one process at a time, a natural sort key, nested dicts as
dotted keys."""

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import socket
import stat
import struct
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
    old file or the new one, never half of one. On an error the temporary file is removed. The file gets the
    mode any new file gets here (0666 less the umask: a user with umask 077 keeps results to themselves).
    """
    path = Path(path)
    fd, tmp = _new_file(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _new_file(folder: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """A new file of a unique name in `folder`, made by this call (O_EXCL: never a link or another's file), with
    the umask's mode (tempfile.mkstemp would make it 0600 whatever the umask)."""
    for _ in range(100):
        path = folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {folder}")


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


# The one lock of task1, for every "is this folder held" question: an open file description lock (Linux's
# F_OFD_* fcntl commands), a byte-range lock over the whole file. Unlike flock, NFS takes it on the server (flock is
# emulated there with byte-range locks, which need a descriptor open for writing: every lock file is opened
# read-write); unlike lockf's POSIX locks, it belongs to the open file, not the process, so another open of the
# file in the same process meets it, and closing that other descriptor does not drop it. It ends with the
# descriptor's last close, so with the process however that ends: a killed run leaves no stale lock.
FLOCK = "hhqqi4x"  # struct flock: l_type, l_whence, l_start, l_len (0: to the end), l_pid (0 for OFD locks)


def _lock(fd: int, command: int, kind: int = fcntl.F_WRLCK) -> int:
    """fcntl(fd, command) for the whole file; returns the lock type the kernel answers (F_OFD_GETLK: F_UNLCK where
    nothing would conflict)."""
    return struct.unpack(FLOCK, fcntl.fcntl(fd, command, struct.pack(FLOCK, kind, os.SEEK_SET, 0, 0, 0)))[0]


def _open_lock(path: Path, create: bool = True) -> int:
    """The lock file `path` opened read-write; never through a symbolic link (a link planted in a shared folder
    would have the holder truncate whatever file it points to), never a file of another kind or of two names."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o666)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise Task1Error(f"{path} is a symbolic link, not a lock file task1 made: remove it, then run this "
                         f"again.") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise Task1Error(f"{path} is not a lock file task1 made (a special file, or a file of several names): "
                         f"remove it, then run this again.")
    return fd


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on the file `path` for the block, waited for (see FLOCK)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_lock(path)
    try:
        with contextlib.suppress(OSError):  # a file system without locks: unguarded, as `hold` is
            _lock(fd, fcntl.F_OFD_SETLKW)
        yield
    finally:
        os.close(fd)


class FolderInUseError(Task1Error):
    """Another process holds the folder (see `hold`)."""


@contextlib.contextmanager
def hold(folder: str | os.PathLike) -> Iterator[None]:
    """Keep `folder` to this process for the block: an exclusive lock (see FLOCK) on `<folder>/.lock`, which names
    the holder.

    A second process (or a second `hold` in this one) that asks for the folder meanwhile gets FolderInUseError at
    once, naming the holder, instead of training into the same files. The file stays. Where the file system has
    no locks, the block runs unguarded, with a warning.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = _open_lock(folder / ".lock")
    try:
        try:
            _lock(fd, fcntl.F_OFD_SETLK)
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: another open file holds the lock
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


def held(folder: str | os.PathLike) -> bool:
    """Whether a live process holds `folder` (see `hold`). The lock is tested, not taken (F_OFD_GETLK), so that
    the question never makes a process that takes the lock at that moment fail; on a descriptor open for writing,
    as NFS needs. A folder without a lock file, or with one that is not task1's, is held by no one."""
    try:
        fd = _open_lock(Path(folder) / ".lock", create=False)
    except (OSError, Task1Error):
        return False
    try:
        return _lock(fd, fcntl.F_OFD_GETLK) != fcntl.F_UNLCK
    except OSError:  # a file system without locks: nothing is held there (`hold` goes on unguarded)
        return False
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
        fd = os.open(Path(folder) / ".lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        return os.read(fd, 300).decode(errors="replace").strip()
    except OSError:
        return ""
    finally:
        os.close(fd)


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
