"""A training process killed mid-epoch (SIGTERM, SIGKILL) resumes to exactly the metrics of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, make_fashion_mnist, run_cli

N_TRAIN, BATCH = 2000, 16
STEPS_PER_EPOCH = N_TRAIN // BATCH  # 125


@pytest.fixture(scope="module")
def args(tmp_path_factory) -> list[str]:
    root = make_fashion_mnist(tmp_path_factory.mktemp("fmnist_resume"), n_train=N_TRAIN, n_test=200)
    return [f"data.root={root}", "trainer=cpu", "trainer.max_epochs=2", "model=mlp", "model.num_hiddens=64",
            f"data.batch_size={BATCH}", "checkpoint_every_n_steps=20", "logger=none"]


@pytest.fixture(scope="module")
def uninterrupted(args, tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = run_cli(*args, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run / "metrics.json").read_text())


def start_until_first_checkpoint(args: list[str], run, **popen) -> subprocess.Popen:
    """`python -m task1.train <args>` running in `run`, returned once its first checkpoints/last.ckpt exists."""
    last = run / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "task1.train", *args, f"hydra.run.dir={run}"], cwd=ROOT, **popen)
    while not last.exists() and proc.poll() is None:
        time.sleep(0.002)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_mid_epoch_resumes_to_the_same_metrics(args, uninterrupted, tmp_path, sig):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    # killed after its first checkpoint: 20 of the epoch's 125 steps
    proc = start_until_first_checkpoint(args, run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc.send_signal(sig)
    output = proc.communicate(timeout=300)[0]
    if sig == signal.SIGTERM:  # stops at the end of the batch, saves, says how to go on
        assert proc.returncode == 1, output[-3000:]
        assert f"resume={run}" in output and "Traceback" not in output
        assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"
    else:
        assert proc.returncode == -signal.SIGKILL and not (run / "metrics.json").exists()
    step = torch.load(last, weights_only=True)["global_step"]
    assert 0 < step < 2 * STEPS_PER_EPOCH and step % STEPS_PER_EPOCH, f"not killed mid-epoch (step {step})"

    runs_before = set(ROOT.glob("outputs/runs/*"))
    result = run_cli(f"resume={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["status"] == "completed"
    assert resumed["final"] == uninterrupted["final"]  # exactly: same floats to the last bit
    assert resumed["history"] == uninterrupted["history"]
    assert set(ROOT.glob("outputs/runs/*")) == runs_before  # it went on in the same folder, made no new one
    assert (run / ".hydra" / "overrides.yaml").read_text().count("resume=") == 0  # the first start's record kept


@pytest.mark.slow
def test_ddp_run_killed_mid_epoch_resumes_to_the_same_metrics(args, tmp_path):
    # two processes: each saves, only the first one's file is written, so the checkpoint must hold the epoch's
    # sums of both (the resumed epoch's accuracy would otherwise count one shard twice and the other not at all).
    # Both are killed at once (SIGKILL to the process group), as a lost node would be; not SIGTERM, which
    # Lightning answers with collective calls inside its signal handlers, and which can hang them when both
    # processes get it.
    ddp = [*args, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    whole = tmp_path / "whole"
    assert run_cli(*ddp, f"hydra.run.dir={whole}").returncode == 0
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    # killed after its first checkpoint: 20 of the epoch's 63 steps (each process has half the data)
    proc = start_until_first_checkpoint(ddp, run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    step = torch.load(last, weights_only=True)["global_step"]
    assert step % 63 > 0, f"not killed mid-epoch (step {step})"

    assert run_cli(f"resume={run}").returncode == 0
    resumed, uninterrupted = (json.loads((r / "metrics.json").read_text()) for r in (run, whole))
    for got, want in zip(resumed["history"], uninterrupted["history"], strict=True):
        assert got["train/acc"] == want["train/acc"]  # counts: exact
        assert got["train/loss"] == pytest.approx(want["train/loss"], rel=1e-6)  # summed in another order
        assert got["val/acc"] == want["val/acc"]
