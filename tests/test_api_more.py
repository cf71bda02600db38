"""task1.api beyond train: rerun and evaluate as calls, config folders of the user's own (also remembered by a
run for `task1 rerun` and `resume=`), and Hydra's composition mistakes as one-line Task1Errors."""

import shutil

import pytest
import yaml
from conftest import ROOT, no_traceback, run_cli

from task1 import Task1Error, api


@pytest.fixture
def tiny(fake_root, tmp_path):
    """Overrides for a one-epoch run on the generated data, everything under tmp_path."""
    return [f"paths.data_dir={fake_root}", "data.batch_size=64", "trainer=cpu", "trainer.max_epochs=1", "logger=none",
            "figures.enabled=false", f"paths.output_dir={tmp_path / 'out'}"]


def own_configs(folder):
    """A config folder of the user's: model=tiny_mlp, an MLP of 8 hidden units."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "tiny_mlp.yaml").write_text("defaults:\n  - mlp\n  - _self_\nnum_hiddens: 8\n")
    return folder


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


def test_composition_mistakes_are_one_line_task1_errors(tmp_path):
    with pytest.raises(Task1Error) as e:
        api.compose("model=mlpp")
    assert one_line(e).startswith("model=mlpp: model has no option mlpp; choose one of linear, mlp, softmax")
    with pytest.raises(Task1Error) as e:
        api.compose("model.num_hiddenz=3")
    assert "Could not override 'model.num_hiddenz'" in one_line(e)
    with pytest.raises(Task1Error) as e:
        api.compose("optimizer=[sgd")
    assert one_line(e).startswith("optimizer=[sgd: ")
    with pytest.raises(Task1Error) as e:
        api.sweep("optimizer.lr=[0.1,0.3")
    assert one_line(e).startswith("optimizer.lr=[0.1,0.3: ")
    with pytest.raises(Task1Error, match="is not a folder"):
        api.compose("model=tiny_mlp", config_dir=tmp_path / "missing")
    with pytest.raises(Task1Error, match="config_dir= is for composing"):
        api.train(api.compose(), config_dir=tmp_path)
    assert api.compose("model=tiny_mlp", config_dir=own_configs(tmp_path / "mine")).model.num_hiddens == 8


def test_rerun_and_evaluate_as_calls_with_the_runs_own_config_folder(tiny, tmp_path):
    mine = own_configs(tmp_path / "mine")
    first = api.train(*tiny, "model=tiny_mlp", config_dir=mine)
    assert yaml.safe_load((first.folder / ".hydra" / "config.yaml").read_text())["model"]["num_hiddens"] == 8
    # rerun as it was (its saved config), and with another option of a group: its overrides composed afresh,
    # model=tiny_mlp found in the config folder the run remembers
    same = api.rerun(first.folder)
    assert same.folder != first.folder and same.final == first.final
    adam = api.rerun(first.folder, "optimizer=adam")
    choices = yaml.safe_load((adam.folder / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["choices"]
    assert choices["model"] == "tiny_mlp" and choices["optimizer"] == "adam"
    assert yaml.safe_load((adam.folder / ".hydra" / "config.yaml").read_text())["model"]["num_hiddens"] == 8
    # what `task1 eval` does: the checkpoint scored on the test split, or the validation split
    test = api.evaluate(first.folder / "checkpoints" / "last.ckpt")
    assert test == {k: first.final[k] for k in ("test/loss", "test/acc")}
    assert set(api.evaluate(first.folder / "checkpoints" / "last.ckpt", split="val")) == {"val/loss", "val/acc"}
    assert (first.folder / "eval" / "last" / "test.json").is_file()
    with pytest.raises(Task1Error, match="split=train is not allowed"):
        api.evaluate(first.folder / "checkpoints" / "last.ckpt", split="train")
    # the folder gone (a run folder sent from another machine): said in one line; passed again, it is used
    moved = tmp_path / "moved"
    shutil.move(mine, moved)
    with pytest.raises(Task1Error) as e:
        api.rerun(first.folder, "optimizer=adam")
    assert f"composed with the config folder {mine} (hydra.searchpath), which does not exist here" in one_line(e)
    again = api.rerun(first.folder, "optimizer=adam", config_dir=moved)
    assert again.final == adam.final


@pytest.mark.slow
def test_rerun_and_a_sweeps_resume_use_the_config_folders_of_the_command_line(fake_root, tmp_path):
    work = tmp_path / "work"
    own_configs(work / "mine")
    common = [f"paths.data_dir={fake_root}", "trainer=cpu", "trainer.max_epochs=1", "logger=none",
              "figures.enabled=false", "data.batch_size=64"]
    run = tmp_path / "run"
    first = run_cli("--config-dir", "mine", "model=tiny_mlp", *common, f"hydra.run.dir={run}", cwd=work)
    assert first.returncode == 0, first.stderr[-3000:]
    # from another folder, where the relative "mine" means nothing: the run's own folder is found
    rerun = run_cli("-m", "task1", "rerun", str(run), "optimizer=adam", f"hydra.run.dir={tmp_path / 'adam'}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "model: tiny_mlp" in (tmp_path / "adam" / ".hydra" / "hydra.yaml").read_text()
    # a sweep given a relative --config-dir, resumed from elsewhere with one more seed
    sweep = tmp_path / "sweep"
    swept = run_cli("--multirun", "-cd", "mine", "model=tiny_mlp", *common, "seed=0", f"hydra.sweep.dir={sweep}",
                    cwd=work)
    assert swept.returncode == 0, swept.stderr[-3000:]
    resumed = run_cli(f"resume={sweep}", "seed=0,1", cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (sweep / "1" / "metrics.json").is_file()
    # the folder gone: one line that names it
    shutil.rmtree(work / "mine")
    out = no_traceback(run_cli("-m", "task1", "rerun", str(run), "optimizer=adam", cwd=ROOT))
    assert f"composed with the config folder {work / 'mine'} (--config-dir), which does not exist here" in out
