"""Bad input is refused early with one clear message; faults during a run are recorded; nothing runs code."""

import gzip
import json
import re
import shutil
import threading

import pytest
import torch
from conftest import ROOT, compose_cfg, make_fashion_mnist, no_traceback, run_cli, write_idx
from hydra.errors import ConfigCompositionException

from task1 import Task1Error
from task1.cli import resume_argv
from task1.core.checkpoints import AtomicCheckpointIO
from task1.core.runs import check_run_folder
from task1.io import atomic_open, write_json
from task1.train import train

# -- config -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "message"), [
    (["data.batch_size=0"], "data.batch_size=0 is not allowed: expected an integer >= 1"),
    (["data.batch_size=2.5"], "data.batch_size=2.5 is not allowed: expected an integer >= 1"),
    (["optimizer.lr=0"], "optimizer.lr=0 is not allowed: expected a number > 0"),
    (["optimizer.lr=fast"], "optimizer.lr='fast' is not allowed: expected a number > 0"),
    (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay=-0.1 is not allowed: expected a number >= 0"),
    (["optimizer.momentum=1.0"], r"optimizer.momentum=1.0 is not allowed: expected a number in \[0, 1\)"),
    (["optimizer.nesterov=true"], "optimizer.nesterov=true is not allowed: .*momentum > 0"),
    (["optimizer.nesterov=1"], "optimizer.nesterov=1 is not allowed: expected true or false"),
    (["data.val_size=600"], "data.val_size=600 is not allowed: expected 0 up to 599: the training set has 600"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 is not allowed: expected an integer >= 1"),
    (["model.impl=keras"], "model.impl='keras' is not allowed: expected torch | scratch"),
    (["+optimizer.lrr=0.1"], r"optimizer.lrr is not a field of optimizer \(torch.optim.SGD\): did you mean "
                             r"optimizer.lr\?"),
    (["+trainer.max_epoch=3"], "did you mean trainer.max_epochs"),
    # keys of nodes that name no class: what task1 reads, or another value interpolates
    (["model=mlp", "+model.num_hidden=512"], r"model.num_hidden is not a field of model: did you mean "
                                             r"model.num_hiddens\?"),
    (["model=softmax", "+model.num_hiddens=512"], "model.num_hiddens is a field of model=mlp, not of the model chosen "
                                                  "here: choose model=mlp, or drop the key."),  # mlp's only
    (["+figures.enable=false"], r"figures.enable is not a field of figures: did you mean figures.enabled\?"),
    (["+seeed=1"], r"seeed is not a field of the config: did you mean seed\?"),
    (["scheduler=none", "+scheduler.step_size=2"], "scheduler.step_size is a field of scheduler=step, not of the "
                                                   "scheduler chosen here: choose scheduler=step"),
    # numbers that are no setting
    (["optimizer.lr=inf"], "optimizer.lr=inf is not allowed: expected a number > 0"),
    (["optimizer.lr=nan"], "optimizer.lr=nan is not allowed: expected a number > 0"),
    (["optimizer.weight_decay=nan"], "optimizer.weight_decay=nan is not allowed: expected a number >= 0"),
    (["model=linear", "data.noise=inf"], "data.noise=inf is not allowed: expected a number >= 0"),
    (["optimizer=adam", "optimizer.eps=-inf"], "optimizer.eps=-inf is not allowed: expected a number > 0"),
    # types and ranges: of what task1 reads, from its schema; of a class's arguments, from the class's signature
    (["figures.every_n_epochs=-1"], "figures.every_n_epochs=-1 is not allowed: expected an integer >= 0"),
    (["seed=1.5"], r"seed=1.5 is not allowed: expected an integer, or null"),
    (["model=mlp", "model.num_hiddens=0"], "model.num_hiddens=0 is not allowed: expected an integer >= 1"),
    (["model.bias_init=ones"], r"model.bias_init='ones' is not allowed: expected zeros \| normal \| default"),
    (["scheduler=onecycle", "scheduler.anneal_strategy=sin"],
     r"scheduler.anneal_strategy='sin' is not allowed: expected cos \| linear"),
    (["callbacks=early_stopping", "callbacks.early_stopping.patience=soon"],
     "callbacks.early_stopping.patience='soon' is not allowed: expected an integer"),
    (["trainer.enable_progress_bar=maybe"], "trainer.enable_progress_bar='maybe' is not allowed: expected true or "
                                            "false"),
    (["logger=mlflow", "logger.mlflow.log_model=sometimes"],
     r"logger.mlflow.log_model='sometimes' is not allowed: expected true \| false \| all"),
    # a target that cannot be imported says why
    (["optimizer._target_=missing_extra_xyz.Adam"], r"optimizer._target_='missing_extra_xyz.Adam' cannot be "
                                                    r"imported \(ModuleNotFoundError: No module named "
                                                    r"'missing_extra_xyz'\)"),
])
def test_config_mistakes_are_refused_before_anything_is_built(make_cfg, tmp_path, overrides, message):
    with pytest.raises(Task1Error, match=message):
        train(make_cfg(*overrides))
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "checkpoints").exists()


def test_a_target_whose_module_fails_to_import_names_the_cause(make_cfg, tmp_path, monkeypatch):
    (tmp_path / "half_installed_extra.py").write_text("raise RuntimeError('needs libfoo 2, found 1')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(Task1Error, match=r"optimizer._target_='half_installed_extra.Adam' cannot be imported "
                                         r"\(RuntimeError: needs libfoo 2, found 1\)") as e:
        train(make_cfg("optimizer._target_=half_installed_extra.Adam"))
    assert isinstance(e.value.__cause__, ImportError)  # Hydra's, which chains the module's own error


@pytest.mark.parametrize(("args", "message"), [
    (["model=mlp", "+model.num_hidden=512"], "model.num_hidden is not a field of model: did you mean "
                                             "model.num_hiddens?"),
    (["optimizer.lr=inf"], "optimizer.lr=inf is not allowed: expected a number > 0"),
    (["optimizer._target_=missing_extra_xyz.Adam"], "cannot be imported (ModuleNotFoundError: No module named "
                                                    "'missing_extra_xyz')"),  # said once, not also by Hydra
])
def test_config_mistakes_on_the_command_line_end_in_one_line(tmp_path, args, message):
    out = no_traceback(run_cli(*args, "trainer=cpu", f"hydra.run.dir={tmp_path / 'run'}"))
    assert message in out
    assert [line for line in out.splitlines() if line.strip()] == [line for line in out.splitlines()
                                                                    if message in line]


def test_a_value_that_is_python_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    result = run_cli(f"optimizer.lr='__import__(\"os\").system(\"touch {marker}\")'", "trainer=cpu",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert "optimizer.lr='__import__" in no_traceback(result) and "expected a number > 0" in result.stdout
    assert not marker.exists()


def test_nothing_in_task1_evaluates_strings_or_unpickles():
    code = "\n".join(p.read_text() for p in (ROOT / "task1").rglob("*.py"))
    assert not re.search(r"\b(eval|exec)\(|pickle\.loads?\(|yaml\.load\(|torch\.load\([^)]*weights_only=False", code)


def test_hydra_errors_are_short_and_name_the_choices(tmp_path):
    out = no_traceback(run_cli("model=foo", f"hydra.run.dir={tmp_path}"))
    assert "Could not find 'model/foo'" in out and "linear\n\tmlp\n\tsoftmax" in out
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'optimizer.lrr'.\nTo append to your "
                                                         r"config use \+optimizer.lrr=0.1"):
        compose_cfg("optimizer.lrr=0.1")


# -- data ---------------------------------------------------------------------------------------------------------

def _damage(root, how: str):
    raw = root / "FashionMNIST" / "raw"
    labels, images = raw / "train-labels-idx1-ubyte", raw / "train-images-idx3-ubyte"
    if how == "folder missing":
        shutil.rmtree(root / "FashionMNIST")
    elif how == "file missing":
        labels.unlink()
    elif how == "corrupt gz":
        labels.unlink()
        (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not the real file"))
    elif how == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
    elif how == "wrong magic":
        labels.write_bytes(b"\x00\x00\x09\x99" + labels.read_bytes()[4:])
    elif how == "count mismatch":
        write_idx(labels, torch.zeros(599, dtype=torch.uint8).numpy())
    elif how == "labels out of range":
        write_idx(labels, torch.full((600,), 12, dtype=torch.uint8).numpy())


@pytest.mark.parametrize(("how", "message"), [
    ("folder missing", r"Fashion-MNIST is not in .*raw/: expected the four files .* Copy them there"),
    ("file missing", r"Fashion-MNIST is not in .*raw/: expected the four files"),
    ("corrupt gz", r"train-labels-idx1-ubyte.gz is corrupt or truncated .*delete it and copy or download it again"),
    ("truncated", r"train-images-idx3-ubyte is truncated or corrupt: its header announces 600 examples"),
    ("wrong magic", r"train-labels-idx1-ubyte is not an IDX label file \(magic number 2457, expected 2049\)"),
    ("count mismatch", r"holds 600 images but .*train-labels-idx1-ubyte holds 599 labels"),
    ("labels out of range", r"train-labels-idx1-ubyte holds labels outside 0-9"),
])
def test_damaged_data_names_the_file_and_the_fix(make_cfg, tmp_path, how, message):
    root = make_fashion_mnist(tmp_path / "data")
    _damage(root, how)
    with pytest.raises(Task1Error, match=message):
        train(make_cfg(f"data.root={root}", "data.download=false"))
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"


# -- checkpoints --------------------------------------------------------------------------------------------------

class Payload:
    """Unpickling this creates a file: what a checkpoint crafted to run code would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_crafted_to_run_code_is_refused_and_never_runs(tmp_path):
    marker, ckpt = tmp_path / "pwned", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload(marker)}, ckpt)
    out = no_traceback(run_cli(f"ckpt_path={ckpt}", "trainer=cpu", f"hydra.run.dir={tmp_path / 'run'}"))
    assert f"{ckpt} was refused: it holds objects other than tensors and plain data" in out
    assert not marker.exists()


@pytest.mark.parametrize(("what", "message"), [
    ("missing", r"ckpt_path=.*missing.ckpt: no such file"),
    ("text", r"text.ckpt is not a checkpoint"),
    ("other model", r"other model.ckpt is not a checkpoint of this model \(it was written for model.net="
                    r"task1.models.torch.LinearRegression\): the model has net.net.1.bias, net.net.1.weight; the "
                    r"checkpoint has net.net.bias, net.net.weight"),
    ("other shape", r"net.net.1.weight is \(10, 3\) in the checkpoint, \(10, 784\) in the model"),
])
def test_a_ckpt_path_that_is_not_a_checkpoint_of_this_model_is_refused(make_cfg, tmp_path, what, message):
    path = tmp_path / f"{what}.ckpt"
    if what == "text":
        path.write_text("hello")
    elif what == "other model":
        torch.save({"state_dict": {"net.net.weight": torch.zeros(1, 2), "net.net.bias": torch.zeros(1)},
                    "hyper_parameters": {"config": {"model": {"net": {
                        "_target_": "task1.models.torch.LinearRegression"}}}}}, path)
    elif what == "other shape":
        torch.save({"state_dict": {"net.net.1.weight": torch.zeros(10, 3), "net.net.1.bias": torch.zeros(10)}}, path)
    with pytest.raises(Task1Error, match=message):
        train(make_cfg(f"ckpt_path={path}"))


def test_ckpt_path_starts_a_new_run_from_the_saved_weights(make_cfg, tmp_path):
    first = train(make_cfg(f"output_dir={tmp_path / 'a'}"))
    again = train(make_cfg(f"output_dir={tmp_path / 'b'}", f"ckpt_path={tmp_path / 'a/checkpoints/last.ckpt'}"))
    assert again["epochs"] == 1  # a new run, counted from epoch 1
    assert again["history"][0]["train/loss"] < first["history"][0]["train/loss"] / 2


# -- faults during a run ------------------------------------------------------------------------------------------

def test_a_diverging_run_stops_at_once_and_keeps_the_last_good_checkpoint(make_cfg, tmp_path):
    with pytest.raises(Task1Error, match=r"Training diverged: the loss is (nan|inf) in epoch 1 at step \d+ .*Lower "
                                         r"the learning rate \(optimizer.lr\)") as e:
        train(make_cfg("model=linear", "optimizer.lr=50", "trainer.max_epochs=2", "checkpoint_every_n_steps=1"))
    step = int(re.search(r"at step (\d+)", str(e.value)).group(1))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"] == str(e.value)
    assert metrics["repeats"] is True  # seeded: it would diverge at the same step again (a sweep does not retrain it)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == step - 1  # the step before: every step wrote a checkpoint until then
    assert all(v.isfinite().all() for v in last["state_dict"].values())


def test_a_finished_run_folder_is_never_trained_over(make_cfg, tmp_path):
    train(make_cfg())
    before = (tmp_path / "metrics.json").read_bytes()
    with pytest.raises(Task1Error, match="already holds a run: choose another folder"):
        train(make_cfg())
    with pytest.raises(Task1Error, match="that run has completed, there is nothing to resume"):
        train(make_cfg(f"resume={tmp_path}"))
    assert (tmp_path / "metrics.json").read_bytes() == before


def test_json_and_checkpoints_are_written_atomically(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"status": "completed"})
    with pytest.raises(TypeError):  # fails half-way through: the old file stays whole
        write_json(path, {"status": "completed", "bad": object()})
    assert json.loads(path.read_text()) == {"status": "completed"}
    ckpt, io = tmp_path / "last.ckpt", AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, ckpt)
    with pytest.raises(Exception, match="pickle"):  # torch.save fails after writing part of the file
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "bad": lambda: None}, ckpt)
    assert torch.load(ckpt, weights_only=True)["state_dict"]["w"].tolist() == [1.0, 1.0, 1.0]


def test_two_writers_of_one_file_never_mix_or_truncate_it(tmp_path):
    # two jobs unzipping the same Fashion-MNIST file at once, as threads: each writes in pieces, so the two
    # interleave; a reader meanwhile must only ever find one writer's whole file
    path = tmp_path / "train-images-idx3-ubyte"
    contents = {w: bytes([w]) * (1 << 20) for w in (1, 2)}
    start, seen, errors = threading.Barrier(3), [], []

    def writer(w: int) -> None:
        start.wait()
        try:
            for _ in range(20):
                with atomic_open(path) as f:
                    for i in range(0, 1 << 20, 1 << 15):
                        f.write(contents[w][i:i + (1 << 15)])
        except Exception as e:  # reported on the test's thread, below
            errors.append(e)

    writers = [threading.Thread(target=writer, args=(w,)) for w in contents]
    for t in writers:
        t.start()
    start.wait()
    while any(t.is_alive() for t in writers):
        if path.exists():
            seen.append(path.read_bytes() in contents.values())
    assert not errors and seen and all(seen)
    assert path.read_bytes() in contents.values()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_resume_of_a_folder_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(Task1Error, match=r"resume=.*nowhere is not a run folder: .*config.yaml does not exist"):
        resume_argv(["task1.train", f"resume={tmp_path / 'nowhere'}"])
    with pytest.raises(Task1Error, match=r"there is no .*last.ckpt \(the run stopped before its first checkpoint\)"):
        check_run_folder(tmp_path, resuming=True)


def test_entry_points_turn_a_task1_error_into_one_logged_line_and_exit_1(caplog):
    from task1.cli import exit_on_error

    @exit_on_error
    def entry(x):
        if x:
            raise Task1Error("data.root=nowhere: no such folder")
        return "ran"

    assert entry(0) == "ran"
    with pytest.raises(SystemExit) as exit_info:
        entry(1)
    assert exit_info.value.code == 1
    assert [r.getMessage() for r in caplog.records] == ["data.root=nowhere: no such folder"]
