"""Figures of a run, `task1.show` and `task1.curves`: real fits and real CLIs on generated data, PNGs and
TensorBoard event files read back."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CONF, run_cli
from hydra import compose, initialize_config_dir
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from task1 import Task1Error, drawer
from task1.data import LABELS
from task1.data.fashion_mnist import read_split
from task1.tools import curves
from task1.tools.show import show
from task1.train import train


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size  # (width, height)


def tensorboard_images(folder: Path) -> dict[str, list]:
    """{tag: image events} of every event file under `folder`."""
    events = {}
    for path in folder.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(path), size_guidance={"images": 0})
        acc.Reload()
        for tag in acc.Tags()["images"]:
            events.setdefault(tag, []).extend(acc.Images(tag))
    return events


def test_classification_run_draws_predictions_confusion_curves_and_per_class_accuracy(make_cfg, tmp_path, fake_root):
    metrics = train(make_cfg("model=softmax", "trainer.max_epochs=2", "logger=tensorboard",
                             "figures.every_n_epochs=1"))
    figures = tmp_path / "figures"
    assert {p.name for p in figures.iterdir()} == {"val_predictions.png", "val_confusion.png", "test_predictions.png",
                                                   "test_confusion.png", "curves.png"}
    assert png_size(figures / "test_predictions.png") == (1040, 525)  # 8 x 3 examples
    assert png_size(figures / "test_confusion.png") == (590, 540)
    assert png_size(figures / "curves.png") == (1260, 340)  # loss, accuracy, lr
    images = tensorboard_images(tmp_path / "tensorboard")
    assert set(images) == {"val/predictions", "val/confusion", "test/predictions", "test/confusion"}
    assert len(images["val/predictions"]) == 2 and len(images["test/confusion"]) == 1  # every epoch; the test once
    assert (images["test/predictions"][0].width, images["test/predictions"][0].height) == (1040, 525)

    per_class = json.loads((tmp_path / "metrics.json").read_text())["per_class_acc"]
    assert per_class == metrics["per_class_acc"] and set(per_class) == {"val", "test"}
    _, y = read_split(fake_root, train=False)
    counts = {name: int((y == i).sum()) for i, name in enumerate(LABELS)}
    assert set(per_class["test"]) == {n for n, c in counts.items() if c}
    assert all(0 <= a <= 1 for a in per_class["test"].values())
    # the class accuracies, weighted by class size, are the test accuracy the system measured itself
    weighted = sum(per_class["test"][n] * counts[n] for n in per_class["test"]) / len(y)
    assert weighted == pytest.approx(metrics["final"]["test/acc"], abs=1e-5)


def test_regression_run_draws_parameters_against_the_truth(make_cfg, tmp_path):
    metrics = train(make_cfg("model=linear", "trainer.max_epochs=2", "data.num_examples=200"))
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {"curves.png", "regression.png"}
    assert png_size(tmp_path / "figures" / "regression.png") == (900, 340)
    assert png_size(tmp_path / "figures" / "curves.png") == (840, 340)  # loss, lr: no accuracy panel
    assert "per_class_acc" not in metrics


def test_figures_can_be_turned_off(make_cfg, tmp_path):
    metrics = train(make_cfg("model=softmax", "figures.enabled=false"))
    assert not (tmp_path / "figures").exists() and "per_class_acc" not in metrics


def test_show_cli_saves_a_labelled_grid_and_logs_it(fake_root, tmp_path):
    result = run_cli("-m", "task1", "show", f"data.root={fake_root}", "show.count=5", "show.ncols=5",
                     "show.classes=[trouser,3]", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert png_size(tmp_path / "train.png") == (650, 170)  # one row of five
    image = tensorboard_images(tmp_path / "tensorboard")["data/train"][0]
    assert (image.width, image.height) == (650, 170)


def show_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="show", overrides=[f"output_dir={tmp_path}", *overrides])


def test_show_filters_classes_and_names_a_bad_one(fake_root, tmp_path):
    path = show(show_cfg(tmp_path, f"data.root={fake_root}", "show.split=test", "show.count=30", "show.ncols=10",
                         "show.classes=[bag]"))
    _, y = read_split(fake_root, train=False)
    rows = -(-min(30, int((y == LABELS.index("bag")).sum())) // 10)
    assert path == tmp_path / "test.png" and png_size(path) == (1300, 165 * rows + 5)
    with pytest.raises(Task1Error, match=r"'jacket' is not a class.*ankle boot"):
        show(show_cfg(tmp_path, f"data.root={fake_root}", "show.classes=[jacket]"))
    with pytest.raises(Task1Error, match=r"show.colls is not a field of show: did you mean show.ncols\?"):
        show(show_cfg(tmp_path, f"data.root={fake_root}", "+show.colls=3"))


def test_show_plots_synthetic_data_against_each_feature(tmp_path):
    path = show(show_cfg(tmp_path, "data=synthetic", "show.count=500"))
    assert png_size(path) == (720, 320)  # two features


@pytest.mark.slow
def test_curves_overlays_the_jobs_of_a_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "task1.train", "-m", "model=linear", "optimizer.lr=0.01,0.03", "trainer=cpu",
                     "trainer.max_epochs=2", "data.num_examples=200", "logger=none", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = curves.find_runs([sweep])
    assert list(runs) == ["optimizer.lr=0.01", "optimizer.lr=0.03"]  # what the jobs share is left out
    assert all(len(h) == 2 for h in runs.values())
    curves.main([str(sweep)])
    width, height = png_size(sweep / "curves.png")
    assert height == 340 and width > 840  # two panels plus the legend
    with pytest.raises(SystemExit):
        curves.main([str(tmp_path / "nothing here")])


def test_curves_orders_runs_numerically_beside_named_folders(tmp_path):
    # jobs 2 and 10 beside a folder with a name: numbers compare as numbers, names after them, no type clash
    for name in ("10", "extra", "2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"history": [{"epoch": 0, "train/loss": 1.0}]}))
    assert list(curves.find_runs([tmp_path])) == ["2", "10", "extra"]


def test_a_sweeps_figures_are_drawn_beside_its_jobs_and_all_there_when_it_ends(fake_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("--multirun", f"data.root={fake_root}", "trainer=cpu", "trainer.max_epochs=1",
                     "data.batch_size=64", "seed=1,2,3", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1", "2"):
        assert {p.name for p in (sweep / job / "figures").iterdir()} == {
            "val_predictions.png", "val_confusion.png", "test_predictions.png", "test_confusion.png", "curves.png"}
        assert png_size(sweep / job / "figures" / "test_confusion.png") == (590, 540)
        # TensorBoard's images came from the drawer's own event file, beside the logger's
        assert set(tensorboard_images(sweep / job / "tensorboard")) == {
            "val/predictions", "val/confusion", "test/predictions", "test/confusion"}
        assert len(list((sweep / job / "tensorboard").glob("*.figures"))) == 1


def test_the_drawer_imports_no_torch_and_without_it_the_run_draws(tmp_path, monkeypatch):
    code = "import sys, task1.drawer, task1.plots; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    confusion = (np.eye(10, dtype=np.int64) * 5 + 1, LABELS, "val")
    drawer.start()
    drawer.draw("confusion_figure", confusion, tmp_path / "drawn.png", [(str(tmp_path / "tb"), "val/confusion", 3)])
    drawer.settle()
    assert png_size(tmp_path / "drawn.png") == (590, 540)
    (image,) = tensorboard_images(tmp_path / "tb")["val/confusion"]
    assert (image.step, image.width, image.height) == (3, 590, 540)
    # a drawer that died is replaced; one that cannot start leaves the figure to this process
    drawer._drawer.process.kill()
    drawer._drawer.close()
    assert not drawer._drawer.alive
    drawer.draw("confusion_figure", confusion, tmp_path / "again.png")
    drawer.settle()
    assert png_size(tmp_path / "again.png") == (590, 540)

    def cannot_start():
        raise OSError("no processes left")

    monkeypatch.setattr(drawer, "_drawer", None)
    monkeypatch.setattr(drawer, "Drawer", cannot_start)
    drawer.draw("confusion_figure", confusion, tmp_path / "here.png", [(str(tmp_path / "tb2"), "val/confusion", 1)])
    assert png_size(tmp_path / "here.png") == (590, 540) and "val/confusion" in tensorboard_images(tmp_path / "tb2")


def test_a_framed_figure_is_the_fresh_figure_pixel_for_pixel():
    # the drawer draws every grid and matrix over the kept frame of the last one; the pixels are a fresh figure's
    from task1 import plots

    rng = np.random.default_rng(0)
    for _ in range(2):  # the second over the first one's frame
        counts = rng.integers(0, 900, (10, 10)) * (rng.random((10, 10)) > 0.3)
        X, y, y_hat = rng.random((24, 1, 28, 28)), rng.integers(0, 10, 24), rng.integers(0, 10, 24)
        assert np.array_equal(plots.confusion_figure(counts, LABELS, "val", framed=True),
                              plots.to_array(plots.confusion_figure(counts, LABELS, "val")))
        assert np.array_equal(plots.prediction_grid(X, y, y_hat, LABELS, framed=True),
                              plots.to_array(plots.prediction_grid(X, y, y_hat, LABELS)))


def test_the_same_figure_twice_is_drawn_once(tmp_path, monkeypatch):
    # with data.val_size=0 the last validation's grid is the test's: the drawer renders it once, writes it twice
    from task1 import plots

    calls, draw = [], plots.prediction_grid
    monkeypatch.setattr(plots, "prediction_grid", lambda *a: calls.append(1) or draw(*a))
    rng, state = np.random.default_rng(1), {}
    X, y, y_hat = rng.random((24, 1, 28, 28)), rng.integers(0, 10, 24), rng.integers(0, 10, 24)
    for name in ("val", "test"):
        drawer.draw_one("prediction_grid", (X, y, y_hat, LABELS, 8, True), str(tmp_path / f"{name}.png"), [], state)
    drawer.draw_one("prediction_grid", (X, y, 9 - y_hat, LABELS, 8, True), str(tmp_path / "other.png"), [], state)
    assert len(calls) == 2 and (tmp_path / "val.png").read_bytes() == (tmp_path / "test.png").read_bytes()
    assert (tmp_path / "other.png").read_bytes() != (tmp_path / "val.png").read_bytes()


# -- what the figures say: axis limits, ticks, markers, legends (the data behind the pixels) ----------------------

def in_view(ax, axis: str = "x") -> list[float]:
    """The major tick values inside the axis's view."""
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    ticks = ax.xaxis.get_major_locator()() if axis == "x" else ax.yaxis.get_major_locator()()
    return [float(t) for t in ticks if lo <= t <= hi]


def test_linear_regressions_parameters_start_at_epoch_0(make_cfg, tmp_path):
    from task1.plots import regression_figure

    metrics = train(make_cfg("model=linear", "trainer.max_epochs=2", "data.num_examples=200"))
    first = metrics["history"][0]
    assert len(first["w_start"]) == 2 and len(first["b_start"]) == 1  # the weights before the first step
    ax_params, ax_error = regression_figure(metrics["history"], metrics["true_w"], metrics["true_b"]).axes
    w0 = ax_params.get_lines()[0]
    assert list(w0.get_xdata()) == [0, 1, 2] and w0.get_ydata()[0] == first["w_start"][0]
    assert in_view(ax_params) == in_view(ax_error) == [0.0, 1.0, 2.0]


def test_a_constant_learning_rate_is_flat_on_an_axis_from_0():
    from task1.plots import learning_curves, lr_figure

    history = [{"train/loss": 1.0 / e, "val/loss": 1.2 / e, "train/lr": 0.1} for e in (1, 2, 3)]
    lr_ax = learning_curves({"": history}).axes[-1]
    assert lr_ax.get_title() == "learning rate" and lr_ax.get_ylim()[0] == 0 and lr_ax.get_ylim()[1] > 0.11
    schedule = lr_figure([0.1] * 30, 10).axes[0]
    assert schedule.get_ylim()[0] == 0 and schedule.get_ylim()[1] > 0.11


def test_one_epoch_is_a_point_on_a_whole_epoch_tick_with_train_and_val_apart(tmp_path):
    from task1.plots import learning_curves

    history = [{"train/loss": 2.0, "val/loss": 1.3, "train/acc": 0.66, "val/acc": 0.7, "train/lr": 0.1}]
    fig = learning_curves({"": history})
    for ax in fig.axes:
        assert in_view(ax) == [1.0], ax.get_title()
    train_line, val_line = fig.axes[0].get_lines()
    assert train_line.get_marker() != val_line.get_marker()
    # `task1 curves` draws the same
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"status": "completed", "history": history}))
    assert curves.main([str(run)]) is None and (run / "curves.png").is_file()


def test_a_band_over_seeds_says_what_it_is():
    from task1.plots import learning_curves

    mean = [{"train/loss": 1.0, "val/loss": 1.1, "train/lr": 0.1},
            {"train/loss": 0.5, "val/loss": 0.6, "train/lr": 0.1}]
    std = [{"train/loss": 0.1, "val/loss": 0.1, "train/lr": 0.0}] * 2
    fig = learning_curves({"mean of 3 seeds": mean}, {"mean of 3 seeds": std})
    texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert texts == ["mean of 3 seeds", "band: mean ± 1 std over seeds"]


def test_a_search_legend_shows_learning_rates_in_a_few_digits(tmp_path):
    from test_sweep_seeds import a_job

    from task1.sweeps.report import figure, read_jobs, swept_params

    for i, (lr, batch) in enumerate([(lr, b) for lr in ("0.08471801418819976", "0.3123456789", "0.0123456789")
                                     for b in ("64", "256")]):
        a_job(tmp_path / str(i), [f"optimizer.lr={lr}", f"data.batch_size={batch}"],
              final={"val/acc": 0.5 + i / 100})
    jobs = read_jobs(tmp_path)
    by_batch = figure(jobs, swept_params(jobs), "val/acc").axes[1]  # coloured by learning rate
    assert [t.get_text() for t in by_batch.get_legend().get_texts()] == [
        "optimizer.lr=0.01235", "optimizer.lr=0.08472", "optimizer.lr=0.3123"]
