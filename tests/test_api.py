"""task1.api, the Python face: real trainings into real run folders, and the process left as it was found."""

import json
import logging
import os
import random
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import compose_cfg
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch import LightningModule

from task1 import Task1Error, api
from task1.io import FolderInUseError, hold


@pytest.fixture
def tiny(fake_root, tmp_path):
    """Overrides for a one-epoch run on the generated data, everything under tmp_path."""
    return [f"paths.data_dir={fake_root}", "data.batch_size=64", "trainer=cpu", "trainer.max_epochs=1", "logger=none",
            f"paths.output_dir={tmp_path}"]


def process_state() -> dict:
    root, task1_log = logging.getLogger(), logging.getLogger("task1")
    return {"threads": torch.get_num_threads(), "deterministic": torch.are_deterministic_algorithms_enabled(),
            "environ": dict(os.environ), "warnings": list(warnings.filters), "root": (root.level, root.handlers[:]),
            "task1": (task1_log.level, task1_log.handlers[:], task1_log.propagate), "random": random.getstate(),
            "torch_rng": torch.random.get_rng_state().tolist(), "hydra": HydraConfig.initialized()}


def test_train_makes_the_command_lines_run_folder_and_leaves_the_process_as_it_was(tiny, tmp_path):
    torch.set_num_threads(2)  # the run uses threads=1: it must not stay so
    before = process_state()
    result = api.train(*tiny, "model=mlp", "model.num_hiddens=32", "trainer.max_epochs=2", "optimizer.lr=0.5")
    assert process_state() == before
    folder = result.folder
    assert folder.parent == tmp_path / "runs" and result.status == "completed" and len(result.history) == 2
    assert {p.name for p in folder.iterdir()} >= {".hydra", ".lock", "config_resolved.yaml", "metrics.json",
                                                  "checkpoints", "figures", "train.log"}
    assert {p.name for p in (folder / ".hydra").iterdir()} == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    assert "model.num_hiddens=32" in (folder / ".hydra" / "overrides.yaml").read_text()
    assert "final metrics" in (folder / "train.log").read_text()
    assert result.metrics == json.loads((folder / "metrics.json").read_text())
    assert result.final["test/acc"] > 0.5 and result.history[-1]["val/acc"] == result.final["val/acc"]
    assert isinstance(result.model, LightningModule)  # the trained model: the weights of the last checkpoint
    last = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, last[k]) for k, v in result.model.state_dict().items())
    assert {p.name for p in result.show()} >= {"curves.png", "test_confusion.png"}  # outside Jupyter: the paths
    assert api.load(folder).metrics == result.metrics


def test_a_composed_config_trains_each_time_into_a_new_folder(tiny):
    cfg = api.compose(*tiny, "figures.enabled=false")
    cfg.optimizer.lr = 0.3  # a config changed in Python trains as changed
    first, second = api.train(cfg), api.train(cfg)
    assert first.folder != second.folder and first.final["train/lr"] == 0.3
    assert first.final == second.final  # seeded: the same run twice


def test_a_config_from_hydras_own_compose_trains_too(fake_root, tmp_path):
    # without a hydra node, `output_dir: ${hydra:runtime.output_dir}` cannot resolve outside Hydra's app
    cfg = compose_cfg(f"data.root={fake_root}", "trainer=cpu", "trainer.max_epochs=1", "logger=none",
                      "figures.enabled=false", f"paths.output_dir={tmp_path}")
    result = api.train(cfg)
    assert result.status == "completed" and result.folder.parent == tmp_path / "runs"


def test_the_core_train_says_where_a_config_without_a_run_folder_goes(fake_root):
    from task1.train import train

    with pytest.raises(Task1Error, match=r"has no value outside a Hydra app: train the config with task1.api.train"):
        train(compose_cfg(f"data.root={fake_root}", "trainer=cpu", "logger=none"))


def test_mistakes_raise_task1s_error_and_leave_nothing_behind(tiny, tmp_path):
    with pytest.raises(Task1Error, match=r"data.batch_size=0 is not allowed"):
        api.train(*tiny, "data.batch_size=0")
    assert not (tmp_path / "runs").exists()
    with pytest.raises(Task1Error, match="give train"):
        api.train(api.compose(*tiny), "model=mlp")
    folder = tmp_path / "held"
    with hold(folder), pytest.raises(FolderInUseError, match=f"{folder} is in use by process {os.getpid()}"):
        api.train(*tiny, f"hydra.run.dir={folder}")  # the lock the command line takes
    assert [p.name for p in folder.iterdir()] == [".lock"]
    assert not HydraConfig.initialized()


def test_a_script_sees_the_runs_log_without_setting_up_logging(tiny, tmp_path):
    code = f"from task1 import api; api.train(*{tiny!r}, 'figures.enabled=false')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 1/1  train/loss" in result.stdout and "final metrics" in result.stdout


def test_sweep_runs_every_combination_reports_and_compares(tiny, tmp_path):
    runs = api.sweep(*tiny, "figures.enabled=false", "optimizer.lr=0.05,0.5", "seed=0,1")
    sweep = runs[0].folder.parent
    assert sweep.parent == tmp_path / "multiruns" and [r.folder.name for r in runs] == ["0", "1", "2", "3"]
    assert [(r.metrics["seed"], r.final["train/lr"]) for r in runs] == [(0, 0.05), (1, 0.05), (0, 0.5), (1, 0.5)]
    assert "4 jobs: 4 completed" in (sweep / "summary.md").read_text() and (sweep / "summary_seeds.csv").is_file()
    comparison = api.compare(runs, group_seeds=True)
    assert comparison.curves == sweep / "curves.png" and comparison.curves.is_file()
    table = comparison.table().splitlines()
    assert len(table) == 2 + 4 and "optimizer.lr=0.05 seed=0" in table[2] and "completed" in table[2]


def test_a_sweep_checks_every_job_first_and_records_a_run_that_diverges(tiny, tmp_path):
    with pytest.raises(Task1Error, match=r"optimizer.lr=-1 is not allowed"):
        api.sweep(*tiny, "optimizer.lr=0.1,-1")
    assert not (tmp_path / "multiruns").exists()  # nothing trained
    runs = api.sweep(*tiny, "model=linear", "optimizer.lr=0.03,50", "figures.enabled=false")
    assert [r.status for r in runs] == ["completed", "failed"] and "diverged" in runs[1].metrics["error"]
    assert "2 jobs: 1 completed, 1 failed" in (runs[0].folder.parent / "summary.md").read_text()
