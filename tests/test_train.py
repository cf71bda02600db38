"""Short real fits through train(cfg) and the command line, on generated Fashion-MNIST files."""

import json

import pytest
import yaml
from conftest import run_cli

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


def test_command_line_run_folder_has_config_events_checkpoints_and_metrics(fake_root, tmp_path):
    run = tmp_path / "run"
    result = run_cli(f"data.root={fake_root}", "trainer=cpu", "trainer.max_epochs=2", "model=mlp",
                     "model.num_hiddens=32", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert config["model"]["num_hiddens"] == 32
    assert "model.num_hiddens=32" in (run / ".hydra" / "overrides.yaml").read_text()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["seed"] == 42 and metrics["wall_time_s"] > 0 and len(metrics["history"]) == 2
    assert "split" in result.stdout + result.stderr and "test" in result.stdout + result.stderr
