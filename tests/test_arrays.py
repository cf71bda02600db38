"""data=arrays: the user's own arrays from an .npz or .pt file, no class to write."""


import numpy as np
import pytest
import torch
import yaml
from conftest import compose_cfg, no_traceback, run_cli

from task1 import Task1Error
from task1.core.config import validate
from task1.data import ArraysData
from task1.train import train


def blobs(n: int, num_inputs: int = 5, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable classes: class k's examples lie around 4 in feature k, 0 in the others."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = rng.normal(size=(n, num_inputs))
    X[np.arange(n), y] += 4
    return X.astype(np.float32), y


def write_npz(path, **arrays):
    (X_train, y_train), (X_test, y_test) = blobs(300), blobs(100, seed=1)
    np.savez(path, **{"X_train": X_train, "y_train": y_train, "X_test": X_test, "y_test": y_test, **arrays})
    return path


def cfg_for(tmp_path, path, *overrides):
    return compose_cfg(f"output_dir={tmp_path}", "trainer=cpu", "trainer.max_epochs=2", "logger=none",
                       "data=arrays", f"data.path={path}", "data.batch_size=32", *overrides)


def test_a_classification_file_trains_with_the_model_sized_by_the_data(tmp_path):
    path = write_npz(tmp_path / "blobs.npz", labels=np.array(["low", "mid", "high"]))
    metrics = train(cfg_for(tmp_path / "run", path, "model=mlp", "model.num_hiddens=16", "trainer.max_epochs=5"))
    assert metrics["status"] == "completed" and metrics["final"]["test/acc"] > 0.8
    model = yaml.safe_load((tmp_path / "run" / "config_resolved.yaml").read_text())["model"]
    assert model["num_inputs"] == 5 and model["num_outputs"] == 3  # not mlp's 784 and 10
    assert set(metrics["per_class_acc"]["test"]) == {"low", "mid", "high"}
    figures = {p.name for p in (tmp_path / "run" / "figures").glob("*.png")}
    assert "test_confusion.png" in figures and "test_predictions.png" not in figures  # no images to show


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28), (3, 16, 16)], ids=["NHW", "N1HW", "NCHW"])
def test_images_train_and_are_shown_as_image_grids(tmp_path, shape):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 240)
    X = rng.integers(0, 60, (240, *shape)).astype(np.uint8)
    X[np.arange(240), ..., :4] = (60 * y)[:, None, None] if len(shape) == 2 else (60 * y)[:, None, None, None]
    np.savez(tmp_path / "images.npz", X_train=X[:200], y_train=y[:200], X_test=X[200:], y_test=y[200:])
    metrics = train(cfg_for(tmp_path / "run", tmp_path / "images.npz"))
    assert metrics["status"] == "completed"
    assert (tmp_path / "run" / "figures" / "test_predictions.png").is_file()
    data = ArraysData(str(tmp_path / "images.npz"))
    data.setup()
    X_train = data.splits["train"][0]
    assert X_train.shape == (200, *(shape if len(shape) == 3 else (1, *shape))) and X_train.dtype == torch.float32
    assert float(X_train.max()) <= 1.0 and data.labels == ("0", "1", "2", "3")  # pixels scaled as Fashion-MNIST's


def test_a_regression_file_in_pt_trains_a_linear_model(tmp_path):
    X = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 3.0
    torch.save({"X_train": X[:200], "y_train": y[:200], "X_test": X[200:], "y_test": y[200:]}, tmp_path / "r.pt")
    metrics = train(cfg_for(tmp_path / "run", tmp_path / "r.pt", "model=linear", "trainer.max_epochs=10",
                            "optimizer.lr=0.1"))
    assert metrics["final"]["test/loss"] < 0.01
    assert metrics["w"] == pytest.approx([1.0, -2.0, 0.5], abs=0.05) and "true_w" not in metrics


def test_val_size_holds_out_a_seeded_split_of_the_training_arrays(tmp_path):
    path = str(write_npz(tmp_path / "blobs.npz"))
    splits = []
    for split_seed in (0, 0, 1):
        data = ArraysData(path, val_size=50, split_seed=split_seed)
        data.setup()
        splits.append(data.splits)
    assert len(splits[0]["train"][0]) == 250 and len(splits[0]["val"][0]) == 50 and len(splits[0]["test"][0]) == 100
    assert torch.equal(splits[0]["val"][0], splits[1]["val"][0])
    assert not torch.equal(splits[0]["val"][0], splits[2]["val"][0])
    every = torch.cat([splits[0]["train"][0], splits[0]["val"][0]])  # nothing lost, nothing twice
    assert sorted(every.sum(dim=1).tolist()) == sorted(torch.from_numpy(np.load(path)["X_train"]).sum(1).tolist())
    no_val = ArraysData(path)
    no_val.setup()
    assert no_val.splits["val"][0] is no_val.splits["test"][0]  # val_size=0: validate on the test split


def _file(tmp_path, how: str):
    (X_train, y_train), (X_test, y_test) = blobs(40), blobs(20, seed=1)
    arrays = {"X_train": X_train, "y_train": y_train, "X_test": X_test, "y_test": y_test}
    if how == "no y_test":
        del arrays["y_test"]
    elif how == "an unknown key":
        arrays["X_val"] = X_test
    elif how == "float labels":
        arrays["y_train"] = y_train.astype(np.float32)
    elif how == "a label beyond labels":
        arrays["labels"] = np.array(["a", "b"])
    elif how == "a negative label":
        arrays["y_test"] = y_test - 1
    elif how == "X and y lengths":
        arrays["y_train"] = y_train[:-1]
    elif how == "test features":
        arrays["X_test"] = X_test[:, :4]
    elif how == "NaN":
        arrays["X_train"][3, 1] = np.nan
    elif how == "strings":
        arrays["X_train"] = X_train.astype(str)
    elif how in ("a pt list", "a pt pickle"):
        torch.save([1, 2] if how == "a pt list" else {"X_train": object()}, tmp_path / "bad.pt")
        return tmp_path / "bad.pt"
    elif how == "another suffix":
        (tmp_path / "bad.csv").write_text("1,2\n")
        return tmp_path / "bad.csv"
    elif how == "no file":
        return tmp_path / "none.npz"
    np.savez(tmp_path / "bad.npz", **arrays)
    return tmp_path / "bad.npz"


@pytest.mark.parametrize(("how", "message"), [
    ("no y_test", r"has no y_test: the file must hold X_train, y_train, X_test, y_test \(and optionally labels\)"),
    ("an unknown key", r"holds X_val, which task1 does not read: .*data.val_size"),
    ("float labels", r"y_train holds float32 values: classification needs class indices 0..K-1 as integers"),
    ("a label beyond labels", r"y_train holds class 2: class indices must be 0..1 \(labels names 2 classes\)"),
    ("a negative label", r"y_test holds class -1: class indices must be 0 or more"),
    ("X and y lengths", r"X_train holds 40 examples but y_train 39: one label per example"),
    ("test features", r"X_train's examples have shape \(5,\) but X_test's \(4,\): both splits need the same"),
    ("NaN", r"X_train holds NaN, inf or true/false values: store finite numbers"),
    ("strings", r"X_train holds <U32 values: store numbers"),
    ("a pt list", r"holds a list, not a dict: torch.save\(\{'X_train'"),
    ("a pt pickle", r"cannot be read with weights_only=True \(UnpicklingError\)"),
    ("another suffix", r"expected an .npz \(numpy.savez\) or a .pt \(torch.save of a dict\) file"),
    ("no file", r"no such file: give the path of an .npz or .pt file"),
])
def test_a_mistake_in_the_file_is_one_line_naming_the_key_and_the_fix(tmp_path, how, message):
    path = _file(tmp_path, how)
    with pytest.raises(Task1Error, match=rf"^data.path={path}: {message}") as e:
        validate(cfg_for(tmp_path / "run", path))
    assert "\n" not in str(e.value)


def test_data_path_left_out_and_val_size_too_large_are_one_line(tmp_path):
    with pytest.raises(Task1Error, match=r"data.path is missing: data=arrays reads your own file"):
        validate(compose_cfg("data=arrays"))
    path = write_npz(tmp_path / "blobs.npz")
    with pytest.raises(Task1Error, match=r"data.val_size=300 is not allowed: expected 0 up to 299"):
        validate(cfg_for(tmp_path / "run", path, "data.val_size=300"))


def test_a_bad_file_on_the_command_line_ends_in_one_line_and_leaves_no_folder(tmp_path):
    path = _file(tmp_path, "float labels")
    out = no_traceback(run_cli("data=arrays", f"data.path={path}", f"hydra.run.dir={tmp_path / 'run'}"))
    assert "y_train holds float32 values" in out and not (tmp_path / "run").exists()


def test_show_draws_image_arrays_and_refuses_feature_vectors_in_one_line(tmp_path):
    from task1.tools.show import show

    rng = np.random.default_rng(0)
    X, y = rng.random((30, 3, 12, 12)).astype(np.float32), rng.integers(0, 2, 30)
    np.savez(tmp_path / "colour.npz", X_train=X[:20], y_train=y[:20], X_test=X[20:], y_test=y[20:])
    drawn = show(compose_cfg("data=arrays", f"data.path={tmp_path / 'colour.npz'}", f"output_dir={tmp_path / 'a'}",
                             config_name="show"))
    assert drawn.is_file()
    vectors = write_npz(tmp_path / "blobs.npz")
    with pytest.raises(Task1Error, match=r"task1 show draws images, and the examples of task1.data.ArraysData are "
                                         r"vectors of 5 numbers: there is nothing to show."):
        show(compose_cfg("data=arrays", f"data.path={vectors}", f"output_dir={tmp_path / 'b'}", config_name="show"))
