"""loop=manual: the book's loop written out in task1's code, bit for bit the automatic one's results."""

import json

import lightning as L
import pytest
import torch
from conftest import run_cli

from task1 import Task1Error
from task1.core.shortcuts import stop_as_on_sigterm
from task1.train import train


def _run(make_cfg, folder, *overrides):
    metrics = train(make_cfg(f"output_dir={folder}", "figures.enabled=false", *overrides))
    state = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    return metrics, state


@pytest.mark.parametrize("overrides", [
    ["optimizer=sgd"],
    ["optimizer=sgd", "scheduler=step"],
    ["optimizer=sgd", "scheduler=step", "scheduler.interval=step", "scheduler.step_size=3",
     "scheduler.frequency=2"],
    ["optimizer=sgd_scratch", "model=mlp", "model.num_hiddens=16", "optimizer.momentum=0.9"],
    ["optimizer=sgd", "scheduler=step", "scheduler.interval=step", "+trainer.accumulate_grad_batches=2"],
    ["optimizer=sgd_scratch", "+trainer.accumulate_grad_batches=3", "model.loss_reduction=sum", "optimizer.lr=0.001"],
    ["optimizer=sgd", "+trainer.gradient_clip_val=0.05"],
], ids=["sgd", "step-epoch", "step-step", "sgd_scratch-mlp", "accumulate2", "accumulate3-sum", "clip"])
def test_the_manual_loop_gives_the_automatic_loops_history_and_weights_to_the_last_bit(make_cfg, tmp_path,
                                                                                        overrides):
    # 600 examples in batches of 64: 10 batches an epoch, the last one of 24 (an accumulation group cut short)
    overrides = ["trainer.max_epochs=2", "logger=csv", "trainer.log_every_n_steps=1", *overrides]
    auto, auto_weights = _run(make_cfg, tmp_path / "auto", *overrides)
    manual, manual_weights = _run(make_cfg, tmp_path / "manual", "loop=manual", *overrides)
    assert manual["history"] == auto["history"] and manual["final"] == auto["final"]
    assert auto_weights.keys() == manual_weights.keys()
    for name, value in auto_weights.items():
        assert torch.equal(value, manual_weights[name]), name
    assert auto["loop"] == {"name": "automatic", "zero_grad": True}
    assert json.loads((tmp_path / "manual" / "metrics.json").read_text())["loop"] == {"name": "manual",
                                                                                        "zero_grad": True}
    # the per-step log: once an optimizer step, at the same steps with the same values
    logged = [(tmp_path / f / "csv" / "metrics.csv").read_text() for f in ("auto", "manual")]
    assert logged[0] == logged[1] and "train/loss_step" in logged[0]


def test_leaving_out_zero_grad_adds_up_the_gradients_and_metrics_json_says_so(make_cfg, tmp_path):
    normal, _ = _run(make_cfg, tmp_path / "a", "loop=manual", "optimizer.lr=0.02")
    summed, _ = _run(make_cfg, tmp_path / "b", "loop=manual", "loop.zero_grad=false", "optimizer.lr=0.02")
    assert summed["loop"] == {"name": "manual", "zero_grad": False}
    on_disk = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert on_disk["loop"] == {"name": "manual", "zero_grad": False}
    assert summed["history"] != normal["history"]  # the steps grow with every batch: a different run


def test_zero_grad_false_with_the_automatic_loop_is_refused_in_one_line(make_cfg, tmp_path):
    with pytest.raises(Task1Error, match=r"loop.zero_grad=false is not allowed: expected true with loop=automatic"):
        train(make_cfg("loop.zero_grad=false"))
    assert not (tmp_path / "metrics.json").exists()


class StopAfter(L.Callback):
    """Ends training after batch `batch` of the first epoch as a SIGTERM would (the last.ckpt is written)."""

    def __init__(self, batch: int):
        self.batch = batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == self.batch:
            stop_as_on_sigterm(trainer)


def test_a_manual_run_stopped_as_on_sigterm_resumes_to_the_uninterrupted_runs_results(make_cfg, tmp_path):
    overrides = ["loop=manual", "trainer.max_epochs=2", "scheduler=step", "scheduler.interval=step",
                 "+trainer.accumulate_grad_batches=2", "figures.enabled=false"]
    whole = train(make_cfg(f"output_dir={tmp_path / 'whole'}", *overrides))
    run = tmp_path / "stopped"
    with pytest.raises(Task1Error, match="resume="):
        train(make_cfg(f"output_dir={run}", *overrides), callbacks=[StopAfter(5)])  # after 3 optimizer steps
    assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    resumed = train(make_cfg(f"output_dir={run}", f"resume={run}", *overrides))
    assert resumed["history"] == whole["history"] and resumed["final"] == whole["final"]


def test_a_manual_run_that_diverges_stops_at_once(make_cfg):
    with pytest.raises(Task1Error, match=r"Training diverged: the loss is (nan|inf) in epoch 1"):
        train(make_cfg("model=linear", "loop=manual", "optimizer.lr=50", "trainer.max_epochs=2"))


@pytest.mark.slow  # two data-parallel runs of two processes each
def test_the_manual_loop_under_ddp_gives_the_automatic_loops_results(fake_root, tmp_path):
    args = [f"data.root={fake_root}", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.max_epochs=2", "data.batch_size=32", "+trainer.accumulate_grad_batches=2", "logger=none",
            "figures.enabled=false"]
    runs = {}
    for loop in ("automatic", "manual"):
        result = run_cli(*args, f"loop={loop}", f"hydra.run.dir={tmp_path / loop}")
        assert result.returncode == 0, result.stderr[-3000:]
        runs[loop] = json.loads((tmp_path / loop / "metrics.json").read_text())
    assert runs["manual"]["history"] == runs["automatic"]["history"]
    assert runs["manual"]["loop"]["name"] == "manual"
