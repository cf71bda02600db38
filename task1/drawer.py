"""A run's figures drawn in a process of their own, beside the training: `python -m task1.drawer` serves them.

The five figures of a classification run (two prediction grids, two confusion matrices, the learning curves)
take 60-90 ms each to lay out and render here, together longer than a softmax epoch. Handed to the drawer,
they cost the run the pickling of their data (24 images, a 10x10 matrix, the history): the drawer renders each
with task1.plots, writes its PNG (atomically) and, for TensorBoard, the same PNG as an image event in the run's
log folder (an event file of its own, beside the logger's: TensorBoard reads every event file of a run).

One drawer per process, started with the first run that draws and kept for the process's life, so that a sweep
pays for its start once. A single run waits for its figures at its end (`settle`); a sweep's job waits only for
those drawn from its predictions, before its metrics.json says it is over (they cannot be drawn again once its
process is gone), and the next job trains while its learning curves are drawn (a job reused without them draws
them again from its metrics.json: `restore_run_figures`); the process waits for all of them when it exits.
Where the drawer cannot start, dies, or hangs (no answer for QUIET_S seconds while figures wait: it is killed),
the figures it was given are drawn in the run's own process: none is lost, and no wait is without end.
"""

import atexit
import collections
import contextlib
import hashlib
import io
import itertools
import json
import logging
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from task1 import error_line

log = logging.getLogger("task1")
Board = tuple[str, str, int]  # a TensorBoard log folder, the image's tag, its step
# seconds without an answer from the drawer, while figures wait, after which it is taken to hang (a figure takes
# 60-90 ms, the drawer's start a few seconds): it is killed and what it was given is drawn in the run's process
QUIET_S = 120.0


def draw_one(name: str, args: tuple, path: str | None, boards: list[Board], events: dict) -> None:
    """task1.plots.<name>(*args); when `path` is given, the figure (or image) it returns saved there as a PNG
    and logged to each of `boards`. `events` keeps the event file writer of the last log folder."""
    import numpy as np

    from task1 import plots

    if path is None:  # the function saves its own files
        getattr(plots, name)(*args)
        return
    # the same figure again (the last validation's grid is the test's when they share a split): drawn once
    key = hashlib.sha1(encode((name, args))).digest()
    if events.get("last", (None,))[0] == key:
        image, data = events["last"][1:]
    else:
        result = getattr(plots, name)(*args)
        image = result if isinstance(result, np.ndarray) else plots.to_array(result)  # framed: rendered already
        data = plots.png(image)
        events["last"] = (key, image, data)
    _write(Path(path), data)
    for folder, tag, step in boards:
        _image_event(events, folder, tag, step, data, image.shape)


def _write(path: Path, data: bytes) -> None:
    from task1.io import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


def _image_event(events: dict, folder: str, tag: str, step: int, data: bytes, shape: tuple) -> None:
    """The PNG as a TensorBoard image event, as torch's SummaryWriter.add_image writes it."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    if events.get("folder") != folder:  # a new run: the last one's file is complete
        if events.get("writer") is not None:
            events["writer"].close()
        events.update(folder=folder, writer=EventFileWriter(folder, filename_suffix=".figures"))
    image = Summary.Image(height=shape[0], width=shape[1], colorspace=shape[2], encoded_image_string=data)
    events["writer"].add_event(Event(wall_time=time.time(), step=step,
                                     summary=Summary(value=[Summary.Value(tag=tag, image=image)])))
    events["writer"].flush()


def close(events: dict) -> None:
    if events.get("writer") is not None:
        events["writer"].close()
    events.clear()


def encode(item: tuple) -> bytes:
    """An item as bytes for the pipe: JSON, its NumPy arrays as .npy data (no pickles: nothing runs code on
    reading), each part after its length."""
    import numpy as np

    arrays: list = []

    def plain(x: Any) -> Any:
        if hasattr(x, "__array__"):  # a tensor, an array (no list, tuple, dict or str has one)
            arrays.append(np.asarray(x))
            return {"__array__": len(arrays) - 1}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return str(x) if isinstance(x, Path) else x

    parts = [json.dumps(plain(item)).encode()]
    for a in arrays:
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        parts.append(buf.getvalue())
    return struct.pack(">I", len(parts)) + b"".join(struct.pack(">Q", len(p)) + p for p in parts)


def decode(stream) -> tuple | None:
    """The next item from `stream` (see `encode`); None at its end."""
    import numpy as np

    def read(n: int) -> bytes:
        data = stream.read(n)
        if len(data) < n:
            raise EOFError
        return data

    try:
        count = struct.unpack(">I", read(4))[0]
        parts = [read(struct.unpack(">Q", read(8))[0]) for _ in range(count)]
    except EOFError:
        return None
    arrays = [np.load(io.BytesIO(p), allow_pickle=False) for p in parts[1:]]

    def rich(x: Any) -> Any:
        if isinstance(x, dict):
            return arrays[x["__array__"]] if set(x) == {"__array__"} else {k: rich(v) for k, v in x.items()}
        return [rich(v) for v in x] if isinstance(x, list) else x

    return tuple(rich(json.loads(parts[0])))


class Drawer:
    """The client: `draw` hands a figure over, `wait` returns once every figure handed over is on disk.

    Every figure handed over is kept until the drawer answers for it, so that none is lost: where the drawer dies,
    or gives no answer for `QUIET_S` seconds while figures wait (it hangs: it is killed), `wait` draws those
    left in this process."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[1])  # also when task1 runs from a checkout
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                                           if p)}
        self.process = subprocess.Popen([sys.executable, "-m", "task1.drawer"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env)
        self.alive, self.heard = True, time.monotonic()  # when the drawer last answered (or was given work idle)
        self.pending: dict[int, tuple] = {}  # handed over, not answered yet, by number (in the order handed over)
        self.sent: collections.deque[int] = collections.deque()  # written to the drawer, in order: its answers'
        self.numbers = itertools.count()
        self.lock = threading.Condition()
        self.outbox: queue.Queue = queue.Queue()  # handed over at once: a full pipe would hold the run up
        threading.Thread(target=self._send, name="task1-drawer-send", daemon=True).start()
        self.replies = threading.Thread(target=self._replies, name="task1-drawer-replies", daemon=True)
        self.replies.start()
        atexit.register(self.close)

    def _send(self) -> None:
        while (entry := self.outbox.get()) is not None:
            number, item = entry
            try:
                data = encode(item)
            except (TypeError, ValueError) as e:  # a figure of data the pipe cannot carry: that one is lost
                log.warning("a figure could not be handed to the drawer: %s", error_line(e))
                self._answered(number)
                continue
            with self.lock:
                self.sent.append(number)
            try:
                self.process.stdin.write(data)
                self.process.stdin.flush()
            except OSError:  # the drawer died: the replies' end says so
                break
        with contextlib.suppress(OSError):
            self.process.stdin.close()

    def _answered(self, number: int) -> None:
        """A figure handed over is drawn (or failed, or could not be sent)."""
        with self.lock:
            self.pending.pop(number, None)
            self.heard = time.monotonic()
            self.lock.notify_all()

    def _replies(self) -> None:
        for line in self.process.stdout:
            reply = line.decode().strip()
            if reply != "ok":
                log.warning("a figure could not be drawn: %s", reply)
            with self.lock:
                number = self.sent.popleft()
            self._answered(number)
        with self.lock:  # the drawer ended: nothing more will come; what it did not draw, `wait` draws here
            self.alive = False
            self.lock.notify_all()

    def draw(self, item: tuple) -> bool:
        """Hand `item` (see `draw_one`) over; False when the drawer is gone."""
        with self.lock:
            if not self.alive:
                return False
            if not self.pending:
                self.heard = time.monotonic()  # the time without an answer counts from here
            number = next(self.numbers)
            self.pending[number] = item
        self.outbox.put((number, item))
        return True

    def wait(self, quiet_s: float | None = None) -> None:
        """Return once every figure handed over is on disk: drawn by the drawer, or here where it died or gave no
        answer for `quiet_s` seconds (QUIET_S by default) while figures waited (it is killed)."""
        quiet_s = QUIET_S if quiet_s is None else quiet_s
        with self.lock:
            while self.pending and self.alive and (left := quiet_s - (time.monotonic() - self.heard)) > 0:
                self.lock.wait(left)
            hung = bool(self.pending) and self.alive
        if hung:
            log.warning("the figure drawer gave no answer for %.0f s: it is stopped, and the %d figure(s) it was "
                        "given are drawn here", quiet_s, len(self.pending))
            self.process.kill()
            self.replies.join()  # its output ends: it is marked dead
        with self.lock:
            left = [] if self.alive else list(self.pending.values())
            if left:
                self.pending.clear()
        if left:
            log.warning("the figure drawer ended with %d figure(s) not drawn: they are drawn here", len(left))
            draw_here(left)

    def close(self) -> None:
        self.wait()
        self.outbox.put(None)  # the drawer ends at the end of its input
        try:
            self.process.wait(timeout=QUIET_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.replies.join()


_drawer: Drawer | None = None


def draw_here(items: list[tuple]) -> None:
    """Draw `items` (see `draw_one`) in this process; a figure that fails is logged, the others still drawn."""
    events: dict = {}
    try:
        for item in items:
            try:
                draw_one(*item, events)
            except Exception as e:
                log.warning("a figure could not be drawn: %s for %s: %s", item[0], item[2] or item[1][-1],
                            error_line(e))
    finally:
        close(events)


def start() -> None:
    """Start this process's drawer now (it imports matplotlib while the run trains)."""
    global _drawer
    if _drawer is None or not _drawer.alive:
        if _drawer is not None:
            _drawer.wait()  # what the dead one left is drawn here first
        try:
            _drawer = Drawer()
        except OSError as e:
            log.warning("figures are drawn in this process: the drawer could not start (%s)", error_line(e))


def draw(name: str, args: tuple, path: Path | None = None, boards: list[Board] | tuple = ()) -> None:
    """Have task1.plots.<name>(*args) drawn (see `draw_one`): by the drawer, else here."""
    start()
    item = (name, args, None if path is None else str(path), list(boards))
    if _drawer is None or not _drawer.draw(item):
        draw_here([item])


def settle() -> None:
    """Return once every figure handed over is on disk (a single run's end; a job's prediction figures before
    its metrics.json)."""
    if _drawer is not None:
        _drawer.wait()


def run_figure_files(metrics: dict) -> list[str]:
    """The files task1.plots.run_figures draws into a run's `figures/` from its `metrics` (as metrics.json keeps
    them): the learning curves where there is a history, the regression fit where the truth is known too."""
    history = metrics.get("history") or []
    return (["curves.png"] if history else []) + (["regression.png"] if history and "true_w" in metrics
                                                    and "w" in history[0] else [])


def draw_run_figures(metrics: dict, out: Path) -> None:
    """Have the figures of `run_figure_files` drawn into `<out>/figures` from `metrics` alone (by the drawer)."""
    draw("run_figures", _run_figures_args(metrics, out))


def _run_figures_args(metrics: dict, out: Path) -> tuple:
    return {k: metrics[k] for k in ("history", "true_w", "true_b") if k in metrics}, str(out / "figures")


def restore_run_figures(metrics: dict, out: Path) -> None:
    """Draw here, from `metrics`, the run figures (all of them: the same data, the same pixels) where a reused
    job's folder lacks one: its process ended after its metrics.json said it was over but before the drawer had
    drawn them (a lost node, SIGKILL). Its prediction figures are on disk before its metrics.json
    (task1.core.build.report_run), so these are all it can lack."""
    missing = [name for name in run_figure_files(metrics) if not (out / "figures" / name).is_file()]
    if missing:
        log.info("%s: %s missing (its process ended before they were drawn): its figures drawn again from "
                 "metrics.json", out, ", ".join(missing))
        draw_here([("run_figures", _run_figures_args(metrics, out), None, [])])


def serve() -> None:
    """The drawer's side: draw each item from stdin (see `encode`), reply one line for each on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the run; the figures it handed over still come
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything else printed goes to stderr, not the replies
    events: dict = {}
    stdin = sys.stdin.buffer
    while (item := decode(stdin)) is not None:
        try:
            draw_one(*item, events)
            reply = "ok"
        except Exception as e:  # one figure's failure is the run's to log, not the drawer's end
            reply = f"{item[0]} for {item[2] or item[1][-1]}: {error_line(e)}"
        replies.write(reply.replace("\n", " ") + "\n")
        replies.flush()
    close(events)


if __name__ == "__main__":
    serve()
