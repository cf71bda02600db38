"""Short real fits through train(cfg) and the command line, on generated Fashion-MNIST files."""

import json
import math

import pytest
import yaml
from conftest import run_cli
from lightning.pytorch.profilers import SimpleProfiler

from task1.core.build import build
from task1.core.shortcuts import QuietProfiler
from task1.train import train


@pytest.mark.parametrize("model", ["linear", "softmax", "mlp"])
@pytest.mark.parametrize("impl", ["torch", "scratch"])
def test_every_model_and_impl_trains(make_cfg, tmp_path, model, impl):
    overrides = [f"model={model}", f"model.impl={impl}", "trainer.max_epochs=2"]
    if model == "linear":
        overrides += ["data.batch_size=10", "optimizer.lr=0.03"]
    metrics = train(make_cfg(*overrides))
    final = metrics["final"]
    assert metrics["status"] == "completed" and metrics["epochs"] == 2 and len(metrics["history"]) == 2
    assert set(final) >= {"train/loss", "val/loss", "test/loss", "train/lr"}
    if model == "linear":  # 2 epochs of 100 steps recover the true parameters
        assert final["val/loss"] < 1e-3
        assert metrics["w"] == pytest.approx([2.0, -3.4], abs=0.02) and metrics["b"] == pytest.approx(4.2, abs=0.02)
    else:  # the generated classes are easy: far above the 10% of guessing
        assert final["val/acc"] > 0.5 and final["train/acc"] > 0.3
        assert final["test/acc"] == final["val/acc"]  # val_size=0 validates on the test split
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["final"] == final and on_disk["history"] == metrics["history"]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and (tmp_path / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.parametrize("optimizer, scheduler", [
    ("sgd_scratch", "step"), ("sgd", "multistep"), ("adam", "cosine"), ("adamw", "onecycle"),
])
def test_optimizer_and_scheduler_combinations_train(make_cfg, optimizer, scheduler):
    extra = ["optimizer.momentum=0.9", "optimizer.nesterov=true"] if optimizer == "sgd" else []
    metrics = train(make_cfg("model=mlp", "model.num_hiddens=32", f"optimizer={optimizer}", f"scheduler={scheduler}",
                             "trainer.max_epochs=2", *extra))
    assert metrics["final"]["val/acc"] > 0.3
    lrs = [r["train/lr"] for r in metrics["history"]]
    assert lrs[1] != lrs[0] or scheduler == "multistep"  # multistep's first milestone is epoch 5


def test_command_line_run_folder_has_config_events_checkpoints_and_metrics(fake_root, tmp_path):
    run = tmp_path / "run"
    result = run_cli(f"data.root={fake_root}", "trainer=cpu", "trainer.max_epochs=2", "model=mlp",
                     "model.num_hiddens=32", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert config["model"]["num_hiddens"] == 32
    resolved = yaml.safe_load((run / "config_resolved.yaml").read_text())
    assert resolved["model"]["net"]["num_hiddens"] == 32 and resolved["output_dir"] == str(run)
    assert "model.num_hiddens=32" in (run / ".hydra" / "overrides.yaml").read_text()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["seed"] == 42 and metrics["wall_time_s"] > 0 and len(metrics["history"]) == 2
    assert "split" in result.stdout + result.stderr and "test" in result.stdout + result.stderr


def _event_scalars_and_hparams(folder):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(folder))
    mux.Reload()
    scalars, hparams = {}, {}
    for run in mux.Runs():
        acc = mux.GetAccumulator(run)
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
        for tag, content in acc.PluginTagToContent("hparams").items():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if tag == "_hparams_/session_start_info":
                hparams.update({k: v for k, v in data.session_start_info.hparams.items()})
    return scalars, hparams


def test_tensorboard_events_hold_metrics_lr_and_hparams(make_cfg, tmp_path):
    metrics = train(make_cfg("logger=tensorboard", "trainer.max_epochs=2", "trainer.log_every_n_steps=2",
                             "optimizer.lr=0.05"))
    scalars, hparams = _event_scalars_and_hparams(tmp_path / "tensorboard")
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "train/lr"):
        assert len(scalars[tag]) == 2, tag  # once per epoch
        assert scalars[tag][-1] == pytest.approx(metrics["final"][tag])
    assert scalars["test/acc"] == pytest.approx([metrics["final"]["test/acc"]])
    assert len(scalars["train/loss_step"]) == 10  # 20 steps, every 2nd
    assert "hp_metric" not in scalars
    assert hparams["optimizer/lr"].number_value == 0.05 and hparams["model/impl"].string_value == "torch"
    # the HParams tab's metric columns are these scalars (each run writes its session only: see task1.sweep)
    assert {"hparams/test/acc", "hparams/val/acc", "hparams/train/loss"} <= set(scalars)
    assert scalars["hparams/test/acc"] == pytest.approx([metrics["final"]["test/acc"]])


def test_loss_step_is_the_per_example_mean_also_when_the_sum_is_minimised(make_cfg, tmp_path):
    steps = {}
    # lr / batch size on the summed loss is the mean's update: both runs take the same steps
    for reduction, lr in (("mean", 0.1), ("sum", 0.1 / 64)):
        train(make_cfg(f"output_dir={tmp_path / reduction}", f"model.loss_reduction={reduction}",
                       f"optimizer.lr={lr}", "seed=0", "logger=tensorboard", "trainer.log_every_n_steps=1",
                       "figures.enabled=false"))
        steps[reduction] = _event_scalars_and_hparams(tmp_path / reduction / "tensorboard")[0]["train/loss_step"]
    assert len(steps["sum"]) == 10 and steps["sum"] == pytest.approx(steps["mean"], rel=1e-4)  # not 64 times
    assert steps["sum"][0] == pytest.approx(math.log(10), rel=0.01)  # softmax over 10 classes, weights near 0


@pytest.mark.slow
def test_multirun_sweeps_jobs_into_their_own_folders(fake_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "task1.train", "-m", f"data.root={fake_root}", "trainer=cpu", "trainer.max_epochs=1",
                     "logger=none", "optimizer.lr=0.01,0.1", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    lrs = {}
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        config = yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())
        lrs[config["optimizer"]["lr"]] = metrics["final"]["train/lr"]
    assert lrs == {0.01: 0.01, 0.1: 0.1}


@pytest.mark.slow
def test_scratch_mlp_with_hand_written_momentum_sgd_reaches_0_84_on_real_data(real_root, tmp_path):
    """The core's acceptance run, as a user types it (a plain PyTorch loop with these settings reaches 0.86)."""
    result = run_cli(f"data.root={real_root}", "model=mlp", "model.impl=scratch", "optimizer=sgd_scratch",
                     "optimizer.momentum=0.9", "scheduler=step", "trainer.max_epochs=3", "trainer=cpu",
                     f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((tmp_path / "metrics.json").read_text())["final"]
    assert final["test/acc"] >= 0.84, final


@pytest.mark.parametrize("clip", [None, 1e-6])
def test_gradient_clipping_still_clips_when_set(make_cfg, clip):
    # System skips Lightning's clipping hook when no clip value is set: a set one must still clip every step
    overrides = ["model=softmax", "optimizer.lr=0.1"] + ([f"+trainer.gradient_clip_val={clip}"] if clip else [])
    datamodule, system, trainer = build(make_cfg(*overrides))[:3]
    before = [p.detach().clone() for p in system.parameters()]
    trainer.fit(system, datamodule=datamodule)
    moved = sum(float((p.detach() - b).norm()) for p, b in zip(system.parameters(), before, strict=True))
    if clip:  # each step moves each parameter by at most lr * clip
        assert 0 < moved <= 2 * trainer.global_step * 0.1 * clip * 1.001
    else:
        assert moved > 0.01


@pytest.mark.parametrize("profiler, kind", [(None, QuietProfiler), ("simple", SimpleProfiler)])
def test_profiler_is_quiet_by_default_and_any_lightning_profiler_when_asked(make_cfg, profiler, kind):
    cfg = make_cfg("model=softmax", *([f"+trainer.profiler={profiler}"] if profiler else []))
    datamodule, system, trainer = build(cfg)[:3]
    assert type(trainer.profiler) is kind
    trainer.fit(system, datamodule=datamodule)
    if profiler:  # Lightning's own report names the hooks it timed
        assert "run_training_batch" in trainer.profiler.summary()


def test_per_step_logging_logs_optimizer_steps_not_micro_batches(make_cfg, tmp_path):
    # 600 examples in batches of 64: 10 batches an epoch, 5 optimizer steps when two batches make a step
    metrics = train(make_cfg("logger=csv", "trainer.log_every_n_steps=1", "+trainer.accumulate_grad_batches=2",
                             "trainer.max_epochs=2", "figures.enabled=false"))
    import csv

    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss_step")]
    assert [int(r["step"]) for r in rows] == list(range(10))  # each optimizer step once
    assert [e["epoch"] for e in metrics["history"]] == [1, 2]  # epochs count from 1, as the log and plots do
    # the test split is the validation split here (val_size=0): the same figures, not a float32 copy of them
    assert metrics["final"]["test/acc"] == metrics["final"]["val/acc"]
    assert metrics["final"]["test/loss"] == metrics["final"]["val/loss"]
