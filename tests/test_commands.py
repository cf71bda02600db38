"""The commands around a finished run: rerun and resume with a config group, and eval as a whole command."""

import json

import pytest
import yaml
from conftest import no_traceback, run_cli

from task1 import Task1Error
from task1.tools.eval import evaluate
from task1.train import train


def folders(tmp_path) -> set:
    """Every folder under tmp_path (where the refused commands' outputs go): what a refused command must not add."""
    return {p for p in tmp_path.rglob("*") if p.is_dir()}


@pytest.mark.slow
def test_rerun_with_a_config_group_composes_the_runs_overrides_afresh_and_resume_refuses_it(fake_root, tmp_path):
    run = tmp_path / "run"
    first = run_cli(f"data.root={fake_root}", "trainer=cpu", "trainer.max_epochs=1", "model=softmax",
                    "optimizer.lr=0.2", "logger=none", "figures.enabled=false", f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr[-3000:]

    # another model, and another logger: conf/ composed with the run's overrides, then these
    mlp = run_cli("-m", "task1", "rerun", str(run), "model=mlp", "model.num_hiddens=16", "logger=csv",
                  f"hydra.run.dir={tmp_path / 'mlp'}")
    assert mlp.returncode == 0, mlp.stderr[-3000:]
    ran = yaml.safe_load((tmp_path / "mlp" / "config_resolved.yaml").read_text())
    assert ran["model"]["net"]["_target_"] == "task1.models.torch.MLP" and ran["model"]["net"]["num_hiddens"] == 16
    assert ran["optimizer"]["lr"] == 0.2 and ran["trainer"]["max_epochs"] == 1  # the run's own overrides
    assert (tmp_path / "mlp" / "csv" / "metrics.csv").is_file()
    assert json.loads((tmp_path / "mlp" / "metrics.json").read_text())["status"] == "completed"
    # choosing a group again drops the run's fields of it: softmax has no model.num_hiddens
    softmax = run_cli("-m", "task1", "rerun", str(tmp_path / "mlp"), "model=softmax", f"hydra.run.dir={tmp_path / 's'}")
    assert softmax.returncode == 0, softmax.stderr[-3000:]
    assert "model.num_hiddens" not in (tmp_path / "s" / ".hydra" / "overrides.yaml").read_text()

    before = folders(tmp_path)
    outputs = {"TASK1_OUTPUT_DIR": str(tmp_path / "outputs")}  # not the checkout's outputs/
    out = no_traceback(run_cli(f"resume={run}", "model=mlp", env=outputs))
    assert f"resume={run}: model=mlp would choose another config option, and a resumed run goes on as it started." \
           f" Train a new run from it instead: task1 rerun {run} model=mlp" in out
    assert folders(tmp_path) == before  # refused before any folder was made
    # a rerun from a saved config (no options left to choose): refused, saying what to run
    again = run_cli("-m", "task1", "rerun", str(run), f"hydra.run.dir={tmp_path / 'again'}")
    assert again.returncode == 0, again.stderr[-3000:]
    before = folders(tmp_path)
    out = no_traceback(run_cli("-m", "task1", "rerun", str(tmp_path / "again"), "model=mlp", env=outputs))
    assert "was not composed from task1's config tree" in out and "python -m task1.train model=mlp" in out
    assert folders(tmp_path) == before  # refused before any folder was made


def test_eval_help_explains_and_exits_0():
    result = run_cli("-m", "task1", "eval", "--help")
    assert result.returncode == 0 and "split=test|val" in result.stdout and "<split>.json" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["data.eval_batch_sizee=7"], "data.eval_batch_sizee is not a key of the checkpoint's run config. Did you mean "
                                  "data.eval_batch_size?"),
    pytest.param(["data.eval_batch_size=0"], "data.eval_batch_size=0 is not allowed: expected an integer >= 1.",
                 marks=pytest.mark.slow),  # the first case is the quick tier's
    pytest.param(["split=train"], "split=train is not allowed: expected test or val.", marks=pytest.mark.slow),
])
def test_eval_refuses_bad_overrides_in_one_line_and_writes_nothing(make_cfg, tmp_path, args, message):
    train(make_cfg("figures.enabled=false"))
    out = no_traceback(run_cli("-m", "task1", "eval", f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}", *args))
    assert message in out and not (tmp_path / "eval").exists()


@pytest.mark.slow
def test_eval_scores_either_split_and_writes_metrics_and_figures_beside_what_it_prints(make_cfg, tmp_path):
    metrics = train(make_cfg("trainer.max_epochs=2", "data.val_size=100", "figures.enabled=false"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    result = run_cli("-m", "task1", "eval", f"ckpt_path={last}", "split=val", "data.eval_batch_size=64")
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((tmp_path / "eval" / "last" / "val.json").read_text())
    assert f"written to {tmp_path / 'eval' / 'last' / 'val.json'}" in result.stdout
    assert written["metrics"]["val/acc"] == pytest.approx(metrics["final"]["val/acc"], abs=1e-6)  # float32
    assert f"{written['metrics']['val/acc']:.4f}" in result.stdout and written["split"] == "val"
    assert set(written["per_class_acc"]) <= {"t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                                             "sneaker", "bag", "ankle boot"}
    assert {p.name for p in (tmp_path / "eval" / "last").iterdir()} == {"val.json", "val_predictions.png",
                                                                         "val_confusion.png"}
    test = evaluate(last, out=tmp_path / "elsewhere")  # the same in Python; out= chooses the folder
    assert test["test/acc"] == pytest.approx(metrics["final"]["test/acc"], abs=1e-6)
    assert (tmp_path / "elsewhere" / "test_confusion.png").is_file()
    with pytest.raises(Task1Error, match="split=train is not allowed"):
        evaluate(last, split="train")
