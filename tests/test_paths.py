"""Every path has one home, `paths` (conf/paths/default.yaml): the data configs, Hydra's run and sweep folders and
the tools read it; it is set once, on the command line (paths.data_dir=...) or in the environment (TASK1_DATA_DIR,
TASK1_OUTPUT_DIR). Runs saved before it existed still rerun, resume and evaluate."""

import json
import shutil

import pytest
import torch
import yaml
from conftest import compose_cfg, run_cli

from task1 import Task1Error
from task1.tools.eval import evaluate
from task1.train import train

TINY = ["trainer=cpu", "trainer.max_epochs=1", "logger=none", "data.batch_size=64"]


def test_the_data_folder_comes_from_the_command_line_or_the_environment(monkeypatch):
    monkeypatch.delenv("TASK1_DATA_DIR", raising=False)
    assert compose_cfg().data.root == "data"
    assert compose_cfg("paths.data_dir=/x").data.root == "/x"
    monkeypatch.setenv("TASK1_DATA_DIR", "/from/env")
    assert compose_cfg().data.root == "/from/env"
    assert compose_cfg("paths.data_dir=/x").data.root == "/x"  # the command line wins
    synthetic = compose_cfg("model=linear", "paths.data_dir=/x")  # generated data: no files, no root
    assert "root" not in synthetic.data and synthetic.paths.data_dir == "/x"


def test_a_wrong_type_of_path_is_named(make_cfg):
    with pytest.raises(Task1Error, match=r"paths.output_dir=\[1, 2\] is not allowed: expected a folder"):
        train(make_cfg("paths.output_dir=[1,2]"))


@pytest.mark.slow
def test_train_reads_the_data_and_writes_the_run_where_the_environment_says(fake_root, tmp_path):
    result = run_cli(*TINY, env={"TASK1_DATA_DIR": str(fake_root), "TASK1_OUTPUT_DIR": str(tmp_path / "out")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = (tmp_path / "out" / "runs").iterdir()  # <paths.output_dir>/runs/<date>_<time>
    ran = yaml.safe_load((run / "config_resolved.yaml").read_text())
    assert ran["data"]["root"] == str(fake_root)
    assert ran["paths"] == {"data_dir": str(fake_root), "output_dir": str(tmp_path / "out")}
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"


def test_eval_finds_data_that_moved_where_paths_data_dir_says(make_cfg, fake_root, tmp_path, monkeypatch):
    data = shutil.copytree(fake_root, tmp_path / "data")
    final = train(make_cfg(f"output_dir={tmp_path / 'run'}", f"paths.data_dir={data}", f"data.root={data}"))["final"]
    test = {k: final[k] for k in ("test/loss", "test/acc")}
    moved = data.rename(tmp_path / "moved")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    monkeypatch.delenv("TASK1_DATA_DIR", raising=False)
    with pytest.raises(Task1Error, match="Fashion-MNIST is not in"):
        evaluate(last)  # where the run read it: gone
    assert evaluate(last, [f"paths.data_dir={moved}"]) == test
    older = torch.load(last, weights_only=True)  # a checkpoint from before `paths`: data.root alone
    del older["hyper_parameters"]["config"]["paths"]
    torch.save(older, tmp_path / "older.ckpt")
    assert evaluate(tmp_path / "older.ckpt", [f"paths.data_dir={moved}"]) == test
    monkeypatch.setenv("TASK1_DATA_DIR", str(moved))
    assert evaluate(last) == test


@pytest.mark.slow
def test_a_run_saved_before_paths_existed_reruns_and_resumes(fake_root, tmp_path):
    data = shutil.copytree(fake_root, tmp_path / "data")
    old = tmp_path / "old"
    first = run_cli(*TINY, "model=mlp", "model.num_hiddens=16", f"paths.data_dir={data}", f"hydra.run.dir={old}")
    assert first.returncode == 0, first.stderr[-3000:]
    saved = old / ".hydra" / "config.yaml"  # as such a run saved it: data.root written out, no paths node
    config = yaml.safe_load(saved.read_text())
    del config["paths"]
    config["data"]["root"] = str(data)
    saved.write_text(yaml.safe_dump(config, sort_keys=False))
    metrics = json.loads((old / "metrics.json").read_text())
    moved = data.rename(tmp_path / "moved")

    # a rerun in a fresh folder under TASK1_OUTPUT_DIR, on the data where it is now
    again = run_cli("-m", "task1", "rerun", str(old), f"paths.data_dir={moved}",
                    env={"TASK1_OUTPUT_DIR": str(tmp_path / "out")})
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    (rerun,) = (tmp_path / "out" / "runs").iterdir()
    rerun_metrics = json.loads((rerun / "metrics.json").read_text())
    assert rerun_metrics["final"] == metrics["final"] and rerun_metrics["history"] == metrics["history"]

    # stopped after its last checkpoint, before metrics.json: it resumes, and only tests
    (old / "metrics.json").unlink()
    resumed = run_cli(f"resume={old}", f"paths.data_dir={moved}")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert json.loads((old / "metrics.json").read_text())["final"] == metrics["final"]
