"""Figures for people: image grids with labels, confusion matrices, learning curves, regression fits, lr schedules.

Every function returns a matplotlib `Figure` built without pyplot, so nothing needs a display and no global
figure state leaks between runs; `save` writes it as PNG, `to_array` renders it for TensorBoard. They take
NumPy arrays or CPU tensors and import no torch: task1.drawer draws them in a process of their own.
"""

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave
from matplotlib.ticker import MaxNLocator

from task1.io import write_atomic

DPI = 100
MISTAKE = "tab:red"


def _numpy(x) -> np.ndarray:
    """An array, a list or a CPU tensor as a NumPy array."""
    return x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)


def to_array(fig: Figure) -> np.ndarray:
    """Render `fig` to an (H, W, 3) uint8 array of figsize * DPI pixels, the form TensorBoard's add_image takes."""
    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(DPI)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def png(image: np.ndarray) -> bytes:
    """An image from `to_array` as PNG bytes: for the file and for TensorBoard, encoded once."""
    buf = io.BytesIO()
    imsave(buf, image, format="png")
    return buf.getvalue()


def save(figure: Figure | np.ndarray, path: Path) -> Path:
    """Write a figure, or one already rendered by `to_array` (drawing is the slow part), as a PNG (atomically);
    return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, png(figure if isinstance(figure, np.ndarray) else to_array(figure)))
    return path


class Frame:
    """A figure of a kind drawn once, its unchanging parts (axes, ticks, labels) kept as pixels: the next
    figure of that kind draws only the artists that change over them (Agg's blitting), the same pixels as a
    fresh figure in a fraction of the time (the drawer draws every run's grids and matrices so)."""

    def __init__(self, fig: Figure, parts: dict, changing: list):
        self.fig, self.parts, self.changing = fig, parts, changing
        self.canvas = FigureCanvasAgg(fig)
        fig.set_dpi(DPI)
        visible = [a.get_visible() for a in changing]
        for a in changing:
            a.set_visible(False)
        self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(fig.bbox)
        for a, v in zip(changing, visible, strict=True):
            a.set_visible(v)

    def render(self) -> np.ndarray:
        """The figure as `to_array` renders it, the changing artists drawn over the kept pixels."""
        self.canvas.restore_region(self.background)
        renderer = self.canvas.get_renderer()
        for a in self.changing:
            a.draw(renderer)
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()


_frames: dict[tuple, Frame] = {}


def _framed(key: tuple, build) -> Frame:
    """The frame of `key`, built (`build() -> (fig, parts, changing)`) the first time."""
    if key not in _frames:
        _frames[key] = Frame(*build())
    return _frames[key]


def _grid_layout(n: int, ncols: int, h: int, w: int, title: str, scale: float):
    """An image grid's figure with empty titles over an empty mosaic: (fig, parts, changing artists)."""
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    band = 0.35  # inches above each image for its title (two lines)
    height = nrows * (scale + band) + (0.3 if title else 0.05)
    fig = Figure(figsize=(ncols * scale, height), dpi=DPI)
    pad = round(0.04 * w)  # image pixels between neighbours
    cell_w = w + 2 * pad
    band_px = round(cell_w * band / scale)  # the same pixels per inch both ways
    cell_h = h + 2 * pad + band_px
    ax = fig.add_axes((0, 0, 1, nrows * (scale + band) / height))
    corners, texts = [], []
    for i in range(n):
        r, c = divmod(i, ncols)
        top, left = r * cell_h + band_px + pad, c * cell_w + pad
        corners.append((top, left))
        texts.append(ax.text(left + w / 2, top - pad, "", ha="center", va="bottom", fontsize=7))
    mosaic = np.zeros((nrows * cell_h, ncols * cell_w), dtype=np.float32)  # 0: white under gray_r
    im = ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8, y=1 - 0.05 / height, va="top")
    return fig, {"im": im, "mosaic": mosaic, "corners": corners, "texts": texts, "hw": (h, w)}, [im, *texts]


def _grid_update(parts: dict, images: np.ndarray, titles: Sequence[str], mistakes: Sequence[bool] | None) -> None:
    h, w = parts["hw"]
    mosaic = parts["mosaic"]
    mosaic[:] = 0
    for i, ((top, left), text) in enumerate(zip(parts["corners"], parts["texts"], strict=True)):
        mosaic[top:top + h, left:left + w] = images[i]
        text.set_text(titles[i])
        text.set_color(MISTAKE if mistakes is not None and mistakes[i] else "black")
    parts["im"].set_data(mosaic)


def image_grid(X, titles: Sequence[str], ncols: int = 8, mistakes: Sequence[bool] | None = None,
               title: str = "", scale: float = 1.3, framed: bool = False) -> Figure | np.ndarray:
    """d2l's `show_images`: grey images with their titles (titles of `mistakes` in red), `scale` inches each.

    The images are pasted into one mosaic on one axes: an axes per image costs tens of ms to lay out and draw.
    `framed`: the rendered image, drawn over the kept frame of the last grid of this shape (see `Frame`).
    """
    images = _numpy(X).astype(np.float32).reshape(len(X), *X.shape[-2:])  # (n, h, w)
    layout = (len(images), ncols, *images.shape[1:], title, scale)
    if framed:
        frame = _framed(("grid", *layout), lambda: _grid_layout(*layout))
        _grid_update(frame.parts, images, titles, mistakes)
        return frame.render()
    fig, parts, _ = _grid_layout(*layout)
    _grid_update(parts, images, titles, mistakes)
    return fig


def prediction_grid(X, y, y_hat, names: Sequence[str], ncols: int = 8, framed: bool = False) -> Figure | np.ndarray:
    """Examples (n, 1, h, w) titled "true / predicted" (d2l 3.6's final figure); mistakes in red with an x."""
    y, y_hat = _numpy(y).tolist(), _numpy(y_hat).tolist()
    wrong = [t != p for t, p in zip(y, y_hat, strict=True)]
    titles = [f"{names[t]}\n{'x ' if w else ''}{names[p]}" for t, p, w in zip(y, y_hat, wrong, strict=True)]
    return image_grid(X, titles, ncols=ncols, mistakes=wrong, title="true / predicted (red: mistake)",
                      framed=framed)


def _confusion_layout(names: Sequence[str]):
    """A confusion matrix's figure with empty cells and title: (fig, parts, changing artists)."""
    k = len(names)
    fig = Figure(figsize=(1.4 + 0.45 * k, 1.2 + 0.42 * k), dpi=DPI)
    ax = fig.subplots()
    im = ax.imshow(np.zeros((k, k)), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    cells = [[ax.text(j, i, "", ha="center", va="center", fontsize=6) for j in range(k)] for i in range(k)]
    heading = ax.set_title("", fontsize=9)
    width, height = fig.get_size_inches()  # fixed margins in inches: tight_layout would draw the figure once more
    fig.subplots_adjust(left=1.1 / width, right=1 - 0.15 / width, bottom=1.0 / height, top=1 - 0.3 / height)
    # the image covers the spines' inner half: they are drawn again over it, as a whole figure draws them
    changing = [im, *ax.spines.values(), *(text for row in cells for text in row), heading]
    return fig, {"im": im, "cells": cells, "heading": heading}, changing


def _confusion_update(parts: dict, counts: np.ndarray, title: str) -> None:
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    parts["im"].set_data(fractions)
    for i, row in enumerate(parts["cells"]):
        for j, text in enumerate(row):
            text.set_text(str(counts[i, j]) if counts[i, j] else "")
            text.set_color("white" if fractions[i, j] > 0.5 else "black")
    acc = np.trace(counts) / max(counts.sum(), 1)
    parts["heading"].set_text(f"{title} accuracy {acc:.4f}".strip())


def confusion_figure(confusion, names: Sequence[str], title: str = "", framed: bool = False) -> Figure | np.ndarray:
    """Rows: true class, columns: predicted class; colour is the row's fraction, numbers are counts.
    `framed`: the rendered image, drawn over the kept frame of the last matrix of these classes (see `Frame`)."""
    counts = _numpy(confusion).astype(np.int64)
    if framed:
        frame = _framed(("confusion", *names), lambda: _confusion_layout(names))
        _confusion_update(frame.parts, counts, title)
        return frame.render()
    fig, parts, _ = _confusion_layout(names)
    _confusion_update(parts, counts, title)
    return fig


def learning_curves(runs: dict[str, Sequence[dict]], bands: dict[str, Sequence[dict]] | None = None) -> Figure:
    """Loss, accuracy (classification) and learning rate per epoch; train solid, val dashed; one colour per run.

    `bands`: for some runs (each the mean of a group of runs), the standard deviation per epoch and key, drawn
    as a shaded band around the curve.
    """
    histories = [h for h in runs.values() if h]
    has_acc = any("train/acc" in r or "val/acc" in r for h in histories for r in h)
    panels = ["loss", "acc", "lr"] if has_acc else ["loss", "lr"]
    legend = len(runs) > 1 or bool(bands)  # one run needs none (the titles say which line is which); a band does
    width = 4.2 * len(panels) + (0.3 + 0.065 * max(map(len, runs)) if legend else 0)
    height = max(3.4, 0.2 * len(runs))
    # a legend outside the panels needs the constrained layout, which draws the figure once more; one run has
    # fixed margins, in inches
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained" if legend else None)
    if not legend:
        fig.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.3 / height,
                            wspace=0.3)
    axes = dict(zip(panels, fig.subplots(1, len(panels), squeeze=False).ravel(), strict=True))
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for (name, history), color in zip(runs.items(), colors, strict=True):
        epochs = list(range(1, len(history) + 1))  # one entry an epoch, from the first
        for panel, ax in axes.items():
            keys = ["train/lr"] if panel == "lr" else [f"train/{panel}", f"val/{panel}"]
            for key in keys:
                rows = [i for i, r in enumerate(history) if key in r]
                if not rows:
                    continue
                xs, ys = [epochs[i] for i in rows], [history[i][key] for i in rows]
                val = key.startswith("val/")  # a marker of its own: a 1-epoch run's two points are no lines
                ax.plot(xs, ys, color=color, marker="x" if val else "o", markersize=4, linestyle="--" if val else "-",
                        label=name if key == keys[0] and panel == panels[0] else None)
                if name in (bands or {}):
                    std = [bands[name][i].get(key, 0.0) for i in rows]
                    ax.fill_between(xs, np.subtract(ys, std), np.add(ys, std), color=color, alpha=0.2, linewidth=0)
                    if len(xs) == 1:  # a band of one epoch has no width: a bar
                        ax.errorbar(xs, ys, yerr=std, color=color, alpha=0.5, capsize=4, linestyle="none")
    titles = {"loss": "loss (train o-, val x--)", "acc": "accuracy (train o-, val x--)", "lr": "learning rate"}
    for panel, ax in axes.items():
        ax.set_title(titles[panel], fontsize=9)
        _epoch_axis(ax, max(map(len, histories), default=1))
    if "lr" in axes:
        _lr_range(axes["lr"], [r["train/lr"] for h in histories for r in h if "train/lr" in r])
    if not has_acc:
        axes["loss"].set_yscale("log")  # regression losses fall by orders of magnitude
    if legend:
        handles, labels = axes[panels[0]].get_legend_handles_labels()
        if bands:  # what the shading is
            from matplotlib.patches import Patch

            handles.append(Patch(color="gray", alpha=0.3))
            labels.append("band: mean ± 1 std over seeds")
        fig.legend(handles, labels, loc="outside right upper", fontsize=7, frameon=False)
    return fig


def _epoch_axis(ax, epochs: int, first: int = 1) -> None:
    """Epochs `first`..`epochs` on whole-number ticks; half an epoch of room either side, so that one epoch is
    a point at its tick (matplotlib's own margin around a single point gives ticks 0.945 ... 1.05)."""
    ax.set_xlabel("epoch")
    ax.set_xlim(first - 0.5, epochs + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)


def _lr_range(ax, lrs: Sequence[float]) -> None:
    """Learning rates from 0: a constant one is a flat line, not one zoomed to +-4% where it seems to move."""
    finite = [v for v in lrs if math.isfinite(v)]
    if finite and min(finite) >= 0 and max(finite) > 0:
        ax.set_ylim(0, max(finite) * 1.15)


def regression_figure(history: Sequence[dict], true_w: Sequence[float], true_b: float) -> Figure:
    """Linear regression: w and b per epoch against the true values, and the fitted plane's parameter error; from
    epoch 0, where the run started, when its first epoch kept that (w_start, b_start)."""
    rows = [{"w": history[0]["w_start"], "b": history[0]["b_start"]}, *history] if "w_start" in history[0] \
        else list(history)
    first = len(history) - len(rows) + 1  # 0 with the start, else 1
    epochs = list(range(first, len(history) + 1))
    w = np.array([r["w"] for r in rows])  # (epochs, num_inputs)
    b = np.array([r["b"][0] if isinstance(r["b"], list) else r["b"] for r in rows])  # (epochs,)
    fig = Figure(figsize=(9, 3.4), dpi=DPI)
    ax_params, ax_error = fig.subplots(1, 2)
    for i, (column, target) in enumerate([*zip(w.T, true_w, strict=True), (b, true_b)]):
        name = f"w[{i}]" if i < len(true_w) else "b"
        ax_params.plot(epochs, column, marker=".", color=f"C{i}", label=f"{name} learned")
        ax_params.axhline(target, color=f"C{i}", linestyle="--", linewidth=1, label=f"{name} true {target:g}")
    ax_params.set_title("parameters per epoch (true: dashed)", fontsize=9)
    ax_params.legend(fontsize=7)
    w_error = np.linalg.norm(w - np.asarray(true_w), axis=1)
    ax_error.plot(epochs, w_error, marker=".", label="|w - true w|")
    ax_error.plot(epochs, np.abs(b - true_b), marker=".", label="|b - true b|")
    if any("val/loss" in r for r in rows):
        ax_error.plot(epochs, [r.get("val/loss", np.nan) for r in rows], marker=".", label="val loss")
    ax_error.set_yscale("log")
    ax_error.set_title("error of the fitted plane", fontsize=9)
    ax_error.legend(fontsize=7)
    for ax in (ax_params, ax_error):
        _epoch_axis(ax, len(history), first)
    fig.tight_layout()
    return fig


def lr_figure(lrs: Sequence[float], steps_per_epoch: int, title: str = "") -> Figure:
    """The learning rate at every optimizer step, with the epoch boundaries as dotted lines."""
    fig = Figure(figsize=(8, 3.2), dpi=DPI)
    ax = fig.subplots()
    ax.plot(range(len(lrs)), lrs, drawstyle="steps-post", linewidth=1.5)
    epochs = math.ceil(len(lrs) / steps_per_epoch)
    for e in range(1, epochs):
        ax.axvline(e * steps_per_epoch, color="gray", linestyle=":", linewidth=0.8)
    if epochs <= 20:
        for e in range(epochs):
            ax.text((e + 0.5) * steps_per_epoch, 1.0, f"epoch {e + 1}", transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=7, color="gray")
    ax.set_xlabel(f"optimizer step ({steps_per_epoch} per epoch)")
    ax.set_ylabel("learning rate")
    _lr_range(ax, lrs)
    ax.set_title(title, fontsize=9, pad=14)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def scatter_figure(X, y) -> Figure:
    """d2l 3.2's look at synthetic data: the label against each feature."""
    X, y = _numpy(X), _numpy(y).reshape(-1)
    k = X.shape[1]
    fig = Figure(figsize=(3.6 * k, 3.2), dpi=DPI)
    for i, ax in enumerate(fig.subplots(1, k, squeeze=False).ravel()):
        ax.scatter(X[:, i], y, s=2)
        ax.set_xlabel(f"feature {i}")
        ax.set_ylabel("label")
    fig.tight_layout()
    return fig


def run_figures(metrics: dict, out_dir: Path) -> list[Path]:
    """A finished run's `curves.png` and, for linear regression, `regression.png`, from its metrics.json."""
    history, out_dir = metrics.get("history") or [], Path(out_dir)
    paths = [save(learning_curves({"": history}), out_dir / "curves.png")] if history else []
    if history and "true_w" in metrics and "w" in history[0]:
        fig = regression_figure(history, metrics["true_w"], metrics["true_b"])
        paths.append(save(fig, out_dir / "regression.png"))
    return paths
