"""A training process killed mid-epoch (SIGTERM, SIGKILL) resumes to exactly the metrics of an uninterrupted run,
from what its own folder saved: not today's conf/, whatever started it (task1.rerun, --config-path)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import CONF, ROOT, make_fashion_mnist, run_cli

N_TRAIN, BATCH = 2000, 16
STEPS_PER_EPOCH = N_TRAIN // BATCH  # 125


@pytest.fixture(scope="module")
def args(tmp_path_factory) -> list[str]:
    root = make_fashion_mnist(tmp_path_factory.mktemp("fmnist_resume"), n_train=N_TRAIN, n_test=200)
    return [f"data.root={root}", "trainer=cpu", "trainer.max_epochs=2", "model=mlp", "model.num_hiddens=64",
            f"data.batch_size={BATCH}", "checkpoint_every_n_steps=20", "logger=none"]


@pytest.fixture(scope="module")
def finished(args, tmp_path_factory):
    """The folder of the uninterrupted run (an MLP, not the default model)."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = run_cli(*args, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def uninterrupted(finished) -> dict:
    return json.loads((finished / "metrics.json").read_text())


def start_until_first_checkpoint(args: list[str], run, module: str = "task1.train", **popen) -> subprocess.Popen:
    """`python -m <module> <args>` running in `run`, returned once its first checkpoints/last.ckpt exists."""
    last = run / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", module, *args, f"hydra.run.dir={run}"], cwd=ROOT, **popen)
    while not last.exists() and proc.poll() is None:
        time.sleep(0.002)
    return proc


def kill_mid_epoch(args: list[str], run, module: str = "task1.train") -> None:
    """Start a run, SIGKILL it after its first checkpoint, and check that it was stopped inside an epoch."""
    proc = start_until_first_checkpoint(args, run, module, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < step < 2 * STEPS_PER_EPOCH and step % STEPS_PER_EPOCH, f"not killed mid-epoch (step {step})"


@pytest.mark.slow
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

    if sig == signal.SIGTERM:  # the hint names the command this user can run: task1, not the system's python
        from task1.core.runs import resume_command

        assert f"Continue with: {resume_command(run)}" in output and "python -m task1.train" not in output
    outputs = tmp_path / "outputs"  # where a new run folder would go: not the checkout's outputs/
    result = run_cli(f"resume={run}", env={"TASK1_OUTPUT_DIR": str(outputs)})
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["status"] == "completed"
    assert resumed["final"] == uninterrupted["final"]  # exactly: same floats to the last bit
    assert resumed["history"] == uninterrupted["history"]
    assert not outputs.exists()  # it went on in the same folder, made no new one
    assert (run / ".hydra" / "overrides.yaml").read_text().count("resume=") == 0  # the first start's record kept


@pytest.mark.slow
def test_a_rerun_killed_mid_epoch_resumes_as_the_rerun(finished, uninterrupted, tmp_path):
    # the rerun's own overrides.yaml is empty: composing conf/ with it would resume the default model
    run = tmp_path / "rerun"
    kill_mid_epoch([str(finished)], run, module="task1.tools.rerun")
    result = run_cli(f"resume={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["final"] == uninterrupted["final"] and resumed["history"] == uninterrupted["history"]
    log = (run / "train.log").read_text()  # one log: the first start's lines, then the resumed run's
    assert log.index("GPU available") < log.index("resuming from") < log.index("final metrics")


@pytest.mark.slow
def test_a_run_resumes_with_its_own_config_after_its_config_tree_changed(args, finished, uninterrupted, tmp_path):
    tree = tmp_path / "conf"
    shutil.copytree(CONF, tree)
    edit(tree / "data" / "fashion_mnist.yaml", eval_batch_size=500)  # not conf/'s (one batch of 200 either way)
    run = tmp_path / "run"
    kill_mid_epoch(["--config-path", str(tree), *args], run)
    # the tree it started from is edited afterwards: the resumed run must not notice
    edit(tree / "optimizer" / "sgd.yaml", lr=0.9)
    edit(tree / "data" / "fashion_mnist.yaml", split_seed=5, eval_batch_size=7)
    edit(tree / "config.yaml", seed=0)
    result = run_cli(f"resume={run}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ran = yaml.safe_load((run / "config_resolved.yaml").read_text())
    assert (ran["optimizer"]["lr"], ran["data"]["split_seed"], ran["data"]["eval_batch_size"], ran["seed"]) == (
        0.1, 0, 500, 42)
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["final"] == uninterrupted["final"] and resumed["history"] == uninterrupted["history"]


def edit(path, **values) -> None:
    """Set top-level keys of a YAML config file."""
    config = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**config, **values}, sort_keys=False))


@pytest.mark.slow
def test_resume_refuses_what_would_change_the_run_and_accepts_more_epochs(args, uninterrupted, tmp_path):
    run = tmp_path / "run"
    kill_mid_epoch(args, run)
    before = (run / "config_resolved.yaml").read_text()
    refused = run_cli(f"resume={run}", "optimizer.lr=0.5", "data.batch_size=32")
    assert refused.returncode == 1
    errors = [line for line in (refused.stdout + refused.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "Traceback" not in refused.stdout + refused.stderr
    assert "optimizer.lr: 0.1 in the run, 0.5 now" in errors[0]
    assert "data.batch_size: 16 in the run, 32 now" in errors[0]
    assert (run / "config_resolved.yaml").read_text() == before  # a refused resume leaves the folder as it was

    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["wall_time_s"] > 0  # the first start's time up to its checkpoint
    checkpoint["wall_time_s"] = 1000.0  # as if that start had been long: the resumed run must count it
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    longer = run_cli(f"resume={run}", "trainer.max_epochs=3")
    assert longer.returncode == 0, longer.stdout[-3000:] + longer.stderr[-3000:]
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["wall_time_s"] > 1000.0  # both starts, not only the last
    assert resumed["epochs"] == 3 and resumed["history"][:2] == uninterrupted["history"]
    assert yaml.safe_load((run / "config_resolved.yaml").read_text())["trainer"]["max_epochs"] == 3
    assert "trainer.max_epochs: 2 -> 3" in (run / "train.log").read_text()  # the log says what the resume changed


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
