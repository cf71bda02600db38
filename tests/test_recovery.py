"""Nothing lost: the folder lock (one primitive, tested not taken by a probe, never through a link), files that
respect the umask, a figure drawer that hangs or dies, and a joblib sweep stopped by Ctrl-C."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, make_fashion_mnist, run_cli

from task1 import Task1Error, drawer
from task1.io import FolderInUseError, hold, locked, write_atomic, write_json
from task1.sweeps.folders import held  # task1.io.held, as the sweeps ask it

HOLD = ("import sys, time\nfrom task1.io import hold\n"
        "with hold(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)")
# takes and releases the folder `n` times, as jobs starting one after the other do; prints how often it was refused
TAKE = ("import sys\nfrom task1.io import FolderInUseError, hold\nrefused = 0\n"
        "for _ in range(int(sys.argv[2])):\n    try:\n        with hold(sys.argv[1]):\n            pass\n"
        "    except FolderInUseError:\n        refused += 1\nprint(refused)")
NAMES = [f"class {i}" for i in range(10)]


def test_a_lock_is_tested_on_a_writable_descriptor_and_met_by_every_other_open(tmp_path, monkeypatch):
    run = tmp_path / "run"
    opened = []
    real_open = os.open

    def spy(path, flags, *args, **kwargs):  # the real open, recording how each lock file is opened
        if str(path).endswith("lock"):
            opened.append(flags & os.O_ACCMODE)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    assert not held(run)  # no lock file yet
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert held(run)  # a lock another process took through the same primitive
        with pytest.raises(FolderInUseError, match=f"process {holder.pid} "), hold(run):
            pass
        assert held(run)  # the refused open, closed again, did not drop the holder's lock
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert not held(run)  # killed: the kernel let its lock go
    with hold(run):
        assert held(run)  # a second open in the holding process meets the lock too (NFS, and a sweep's jobs)
        with pytest.raises(FolderInUseError, match=f"process {os.getpid()} "), hold(run):
            pass
        assert held(run)
    with locked(tmp_path / ".claims.lock"):
        pass
    # NFS emulates locks with byte-range locks, which it grants only on a descriptor open for writing
    assert opened and all(mode == os.O_RDWR for mode in opened), opened


def test_the_lock_test_never_makes_a_process_that_takes_the_lock_fail(tmp_path):
    # a sweep asks whether a job's folder is held while the job may be taking its lock at that very moment
    run = tmp_path / "run"
    with hold(run):
        pass
    taker = subprocess.Popen([sys.executable, "-c", TAKE, str(run), "3000"], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
    probes = 0
    while taker.poll() is None:
        held(run)
        probes += 1
    assert taker.returncode == 0 and probes > 100
    assert taker.stdout.read().strip() == "0", "a test of the lock made the process taking it fail"


def test_a_lock_file_is_never_opened_through_a_link(tmp_path):
    # someone plants .lock -> a file the victim can write, in a folder the victim will hold
    victim = tmp_path / "thesis.tex"
    victim.write_text("years of work")
    for folder in (tmp_path / "run", tmp_path / "sweep"):
        folder.mkdir()
        (folder / ".lock").symlink_to(victim)
    with pytest.raises(Task1Error, match="is a symbolic link, not a lock file task1 made: remove it"), \
            hold(tmp_path / "run"):
        pass
    with pytest.raises(Task1Error, match="symbolic link"), locked(tmp_path / "sweep" / ".lock"):
        pass
    assert not held(tmp_path / "run")
    os.link(victim, tmp_path / "hard")  # a second name of the victim's file: not a lock file either
    (tmp_path / "other").mkdir()
    os.link(victim, tmp_path / "other" / ".lock")
    with pytest.raises(Task1Error, match="not a lock file task1 made"), hold(tmp_path / "other"):
        pass
    assert victim.read_text() == "years of work"


@pytest.mark.parametrize(("umask", "mode"), [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)])
def test_files_written_atomically_respect_the_umask(tmp_path, umask, mode):
    before = os.umask(umask)
    try:
        write_atomic(tmp_path / "figure.png", b"png")
        write_json(tmp_path / "metrics.json", {"status": "completed"})
        with hold(tmp_path):
            pass
    finally:
        os.umask(before)
    for name in ("figure.png", "metrics.json", ".lock"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def figure(path) -> tuple:
    return "confusion_figure", (np.eye(10, dtype=np.int64) * 5 + 1, NAMES, "val"), str(path), []


def waited(client: drawer.Drawer, **kwargs) -> None:
    """client.wait(), which must return: a hang fails the test (after 5 minutes) instead of holding it forever."""
    waiting = threading.Thread(target=client.wait, kwargs=kwargs, daemon=True)
    waiting.start()
    waiting.join(timeout=300)
    assert not waiting.is_alive(), "the wait for the figures never ended"


@pytest.mark.slow
def test_a_drawer_that_hangs_is_stopped_and_its_figures_drawn_here(tmp_path, caplog):
    client = drawer.Drawer()
    os.kill(client.process.pid, signal.SIGSTOP)  # it hangs: alive, and no answer ever comes
    try:
        for name in ("a", "b"):
            assert client.draw(figure(tmp_path / f"{name}.png"))
        waited(client, quiet_s=2)
    finally:
        os.kill(client.process.pid, signal.SIGCONT)
    assert client.process.poll() is not None and not client.alive  # stopped for good
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.png").stat().st_size > 0
    assert "gave no answer for 2 s" in caplog.text
    client.close()  # at exit: nothing left, nothing to wait for


@pytest.mark.slow
def test_a_drawer_that_dies_leaves_its_figures_to_the_run(tmp_path):
    client = drawer.Drawer()
    os.kill(client.process.pid, signal.SIGSTOP)  # the figures wait in it, unanswered, when it is killed
    for name in ("a", "b", "c"):
        assert client.draw(figure(tmp_path / f"{name}.png"))
    client.process.kill()
    client.process.wait(timeout=60)
    waited(client)
    assert not client.alive and not client.draw(figure(tmp_path / "d.png"))
    assert all((tmp_path / f"{name}.png").stat().st_size > 0 for name in "abc")


def lr_folders(sweep: Path) -> dict[str, Path]:
    """optimizer.lr -> the folder of the job that swept it."""
    found = {}
    for path in sweep.glob("*/.hydra/overrides.yaml"):
        (lr,) = [o.split("=", 1)[1] for o in yaml.safe_load(path.read_text()) if o.startswith("optimizer.lr=")]
        found[lr] = path.parent.parent
    return found


@pytest.mark.slow
@pytest.mark.parametrize("to", ["the command", "its process group"])  # a SIGINT to it alone; a terminal's Ctrl-C
def test_ctrl_c_of_a_joblib_sweep_stops_each_job_where_it_stands_and_the_same_command_finishes(tmp_path, to):
    root = make_fashion_mnist(tmp_path / "data", n_train=2000, n_test=200)
    args = [f"data.root={root}", "trainer=cpu", "trainer.max_epochs=2", "model=mlp", "model.num_hiddens=32",
            "data.batch_size=16", "checkpoint_every_n_steps=10", "logger=none", "figures.enabled=false", "threads=1",
            "optimizer.lr=0.1,0.2,0.3"]
    result = run_cli("--multirun", *args, f"hydra.sweep.dir={tmp_path / 'uninterrupted'}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    reference = {lr: json.loads((f / "metrics.json").read_text())
                 for lr, f in lr_folders(tmp_path / "uninterrupted").items()}

    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "task1.train", "--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
               *args, f"hydra.sweep.dir={sweep}"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 300
        while not list(sweep.glob("*/checkpoints/last.ckpt")):  # a job under way
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.01)
        if to == "the command":
            proc.send_signal(signal.SIGINT)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    out = (tmp_path / "first.log").read_text()
    assert proc.returncode == 130 and "Traceback" not in out, out[-4000:]
    said = [line for line in out.splitlines() if "Interrupted:" in line]
    assert len(said) == 1 and f"{sweep / 'summary.md'} says where each one stands" in said[0], out[-4000:]
    assert "Go on: run this command again" in said[0]
    jobs = lr_folders(sweep)
    assert sorted(jobs) == ["0.1", "0.2", "0.3"] and (sweep / "summary.md").is_file()
    stood = {lr: json.loads((f / "metrics.json").read_text()) for lr, f in jobs.items()}  # every job says
    # every job says where it stands (a job that ended before the signal reached it, a loaded machine, completed);
    # a terminal's Ctrl-C once stopped a job a second time, after Lightning had put back the job's handler: see
    # test_a_joblib_job_takes_one_ctrl_c_also_when_lightning_put_its_handler_back
    assert all(m.get("status") in ("completed", "interrupted") for m in stood.values()), stood
    stopped = [lr for lr, m in stood.items() if m["status"] != "completed"]
    assert stopped and all(stood[lr]["error"] for lr in stopped)
    assert f"{len(stopped)} not completed" in out  # the report of every job, as it stands

    result = run_cli("--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *args,
                     f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    for lr, folder in lr_folders(sweep).items():
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["status"] == "completed"
        assert metrics["final"] == reference[lr]["final"] and metrics["history"] == reference[lr]["history"]


# a joblib worker's job, given the terminal's Ctrl-C mid-epoch and then the command's own SIGINT to its workers,
# which a loaded machine delivers after Lightning has let the first go (and put back the handler it found)
TWO_CTRL_CS = """
import os, signal, sys
from conftest import compose_cfg
from lightning.pytorch.callbacks import Callback
from hydra_plugins.task1_joblib.launcher import Job
from task1 import Task1Error
from task1.train import train

class CtrlC(Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)

def task(cfg):
    try:
        train(cfg, [CtrlC()])
    except Task1Error as e:  # as a sweep's job records it (task1.train.job)
        print("stopped:", e, flush=True)
    os.kill(os.getpid(), signal.SIGINT)
    print("the second went by", flush=True)

Job(task, sys.argv[1])(compose_cfg(*sys.argv[2:]))
"""


def test_a_joblib_job_takes_one_ctrl_c_also_when_lightning_put_its_handler_back(tmp_path, fake_root):
    result = subprocess.run([sys.executable, "-c", TWO_CTRL_CS, str(tmp_path / "not stopped"),
                             f"output_dir={tmp_path / 'run'}", f"data.root={fake_root}", "trainer=cpu",
                             "trainer.max_epochs=1", "data.batch_size=16", "logger=none", "figures.enabled=false"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "tests")})
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "stopped: Stopped by a signal during epoch 1" in out, out[-3000:]
    assert "the second went by" in out and "Traceback" not in out, out[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "interrupted"


def test_a_ctrl_c_that_lands_in_a_finalizer_of_a_joblib_job_prints_no_traceback_and_other_errors_still_show():
    # what Python does with an exception in a __del__: sys.unraisablehook; a joblib job installs task1's
    code = ("import sys\nfrom hydra_plugins.task1_joblib.launcher import quiet_unraisable\n"
            "sys.unraisablehook = quiet_unraisable\n"
            "class Stopped:\n    def __del__(self):\n        raise KeyboardInterrupt\n"
            "class Broken:\n    def __del__(self):\n        raise ValueError('a real fault')\n"
            "Stopped()\nBroken()\nprint('went on')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "went on\n"
    assert "KeyboardInterrupt" not in result.stderr and "ValueError: a real fault" in result.stderr, result.stderr
