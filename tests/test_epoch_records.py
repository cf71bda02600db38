"""The epoch records of a run's history (task1.models.system.epoch_record, which a packed member's use too): a
linear regression's first record keeps where the run started, also when the run was stopped inside that epoch and
resumed."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, run_cli

STEPS_PER_EPOCH = 2000  # 20000 examples in batches of 10: a SIGTERM after the first checkpoint lands inside epoch 1
LINEAR = ["model=linear", "trainer=cpu", "trainer.max_epochs=2", "data.num_examples=20000", "seed=1",
          "checkpoint_every_n_steps=20", "logger=none", "figures.enabled=false"]


@pytest.mark.slow
def test_a_linear_run_stopped_in_its_first_epoch_resumes_to_the_uninterrupted_history(tmp_path):
    full, run = tmp_path / "full", tmp_path / "run"
    result = run_cli(*LINEAR, f"hydra.run.dir={full}")
    assert result.returncode == 0, result.stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "task1.train", *LINEAR, f"hydra.run.dir={run}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not last.exists() and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 1
    assert 0 < torch.load(last, weights_only=True)["global_step"] < STEPS_PER_EPOCH  # inside the first epoch
    result = run_cli(f"resume={run}")
    assert result.returncode == 0, result.stderr[-3000:]  # the first record once needed what the resume lacked
    resumed, uninterrupted = (json.loads((d / "metrics.json").read_text()) for d in (run, full))
    assert "w_start" in uninterrupted["history"][0] and resumed["history"] == uninterrupted["history"]
