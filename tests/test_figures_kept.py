"""Nothing lost of a job's figures: its prediction figures are on disk before its metrics.json says it is over, and
a job reused without the figures drawn from its metrics.json (its process ended first) draws them again."""

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, make_fashion_mnist, run_cli

from task1 import drawer, plots
from task1.drawer import run_figure_files
from task1.sweeps.folders import continue_job
from task1.train import train

CLASSIFY = {"history": [{"epoch": 0, "train/loss": 1.0, "train/acc": 0.5, "val/loss": 1.1, "val/acc": 0.4,
                         "train/lr": 0.1}]}
REGRESS = {"history": [{"epoch": 0, "train/loss": 0.5, "val/loss": 0.4, "train/lr": 0.03, "w": [1.9, -3.3],
                        "b": 4.1, "w_start": [0.0, 0.0], "b_start": 0.0}], "true_w": [2.0, -3.4], "true_b": 4.2}
PREDICTION_FIGURES = ["test_confusion.png", "test_predictions.png", "val_confusion.png", "val_predictions.png"]


@pytest.mark.parametrize("metrics", [CLASSIFY, REGRESS, {"history": []}], ids=["classify", "regress", "none"])
def test_the_files_a_reuse_checks_are_those_run_figures_draws(tmp_path, metrics):
    assert run_figure_files(metrics) == [p.name for p in plots.run_figures(metrics, tmp_path)]


def test_a_reused_job_draws_its_missing_run_figures_again_from_metrics_json(make_cfg, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="task1")
    out = tmp_path / "job"
    (out / "figures").mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({"status": "completed", "final": {}, **REGRESS}))
    assert continue_job(make_cfg(f"output_dir={out}", "figures.enabled=false"))["status"] == "completed"
    assert not list((out / "figures").iterdir())  # no figures asked for: none drawn

    (out / "figures" / "curves.png").write_bytes(b"kept")  # one of the two is there
    assert continue_job(make_cfg(f"output_dir={out}"))["status"] == "completed"
    lines = [r.getMessage() for r in caplog.records if "drawn again" in r.getMessage()]
    assert lines == [f"{out}: regression.png missing (its process ended before they were drawn): its figures drawn "
                     f"again from metrics.json"]
    assert all((out / "figures" / name).read_bytes().startswith(b"\x89PNG") for name in run_figure_files(REGRESS))
    caplog.clear()
    continue_job(make_cfg(f"output_dir={out}"))
    assert "drawn again" not in caplog.text  # nothing missing, nothing drawn


def test_a_jobs_prediction_figures_are_on_disk_before_its_metrics_json(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(drawer, "QUIET_S", 1.0)  # the drawer below hangs: the job draws them itself after 1 s
    drawer.start()
    hung = drawer._drawer.process.pid
    os.kill(hung, signal.SIGSTOP)  # what it is given waits in it, undrawn
    try:
        train(make_cfg("model=softmax"), figures_drawn=False)  # as a sweep's job: it does not wait for its curves
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)
    written = (tmp_path / "metrics.json").stat().st_mtime_ns
    assert all((tmp_path / "figures" / name).stat().st_mtime_ns <= written for name in PREDICTION_FIGURES)
    drawer.settle()  # the curves, drawn by the next drawer: nothing left to the next test
    assert (tmp_path / "figures" / "curves.png").is_file()


def drawers(pid: int) -> set[int]:
    """The figure drawers (`python -m task1.drawer`) that process `pid` started."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid \
                    and b"task1.drawer" in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
        except (OSError, IndexError, ValueError):  # it ended meanwhile
            pass
    return found


def status(folder: Path) -> str | None:
    try:
        return json.loads((folder / "metrics.json").read_text())["status"]
    except (OSError, ValueError, KeyError):  # not there yet (written atomically: never half)
        return None


@pytest.mark.slow
def test_a_job_killed_before_its_figures_were_drawn_is_reused_and_draws_them(tmp_path):
    root = make_fashion_mnist(tmp_path / "data", n_train=500, n_test=100)
    sweep, job = tmp_path / "sweep", tmp_path / "sweep" / "0"
    args = ["--multirun", f"data.root={root}", "trainer=cpu", "trainer.max_epochs=2", "model=mlp",
            "model.num_hiddens=16", "data.batch_size=50", "logger=csv", "threads=1", "optimizer.lr=0.1",
            f"hydra.sweep.dir={sweep}"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "task1.train", *args], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    frozen: set[int] = set()
    done = threading.Event()

    def freeze() -> None:  # every drawer of the job stopped at its start: no figure it is given is drawn
        while not done.is_set():
            for pid in drawers(proc.pid) - frozen:
                os.kill(pid, signal.SIGSTOP)
                frozen.add(pid)
            time.sleep(0.002)

    freezer = threading.Thread(target=freeze, daemon=True)
    freezer.start()
    try:
        deadline, killed = time.monotonic() + 300, set()
        while status(job) != "completed":
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            # the test split measured (the CSV logger's file says so): its figures are handed over; the drawer
            # holding them dies, so that the job draws them itself instead of waiting the drawer's QUIET_S
            csv = job / "csv" / "metrics.csv"
            for pid in (frozen - killed) if csv.is_file() and "test/acc" in csv.read_text() else ():
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.002)
        on_disk = sorted(p.name for p in (job / "figures").glob("*.png"))  # when metrics.json first says completed
        os.killpg(proc.pid, signal.SIGKILL)  # the job, and its drawer with the figures drawn from metrics.json
        proc.wait(timeout=60)
    finally:
        done.set()
        freezer.join()
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert on_disk == PREDICTION_FIGURES, (tmp_path / "first.log").read_text()[-3000:]
    assert not (job / "figures" / "curves.png").exists()  # the window: killed before its curves were drawn
    checkpoints = {p.name: p.read_bytes() for p in (job / "checkpoints").iterdir()}
    trained = (job / "metrics.json").read_bytes()

    result = run_cli(*args)  # the same command again
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert f"{job}: reused, completed in an earlier start" in out
    assert f"{job}: curves.png missing (its process ended before they were drawn): its figures drawn" in out
    assert {p.name: p.read_bytes() for p in (job / "checkpoints").iterdir()} == checkpoints  # not trained again
    assert (job / "metrics.json").read_bytes() == trained
    assert sorted(p.name for p in (job / "figures").glob("*.png")) == sorted([*PREDICTION_FIGURES, "curves.png"])
    assert (job / "figures" / "curves.png").stat().st_size > 0
