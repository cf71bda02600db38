"""Look at the data before training on it: `task1 show [data=...] [show.split=test] [show.count=30]`.

Fashion-MNIST: a grid of images with their text labels (d2l's `show_fashion_mnist`); synthetic regression data:
the label against each feature (d2l 3.2's scatter plot). Saved as `<split>.png` and logged to TensorBoard.
"""

import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter

from task1 import Task1Error, cli, plots
from task1.core.config import validate

log = logging.getLogger("task1")


def class_indices(classes: list, names: tuple[str, ...]) -> list[int]:
    """Class names or indices -> indices; an unknown one is an error that lists the valid names."""
    indices = []
    for c in classes:
        if isinstance(c, int) and 0 <= c < len(names):
            indices.append(c)
        elif str(c) in names:
            indices.append(names.index(str(c)))
        else:
            raise Task1Error(f"show.classes: {c!r} is not a class. Use indices 0-{len(names) - 1} or names: "
                             f"{', '.join(names)}.")
    return indices


def show(cfg: DictConfig) -> Path:
    """Draw `cfg.show.count` examples of one split of `cfg.data`; return the PNG's path."""
    validate(cfg)  # a typo in show.* (or data.*) would otherwise be shown the defaults without a word
    opts, out = cfg.show, Path(cfg.output_dir)
    data = instantiate(cfg.data)  # the data set alone: no Lightning
    data.setup()
    if opts.split not in data.splits:
        raise Task1Error(f"show.split={opts.split}: choose one of {', '.join(data.splits)}.")
    if opts.count < 1:
        raise Task1Error(f"show.count={opts.count}: show at least one example.")
    X, y = data.splits[opts.split]
    names = data.labels
    if names is None:  # regression data: no classes, no images
        if opts.classes:
            raise Task1Error(f"show.classes: {cfg.data._target_} has no classes; leave show.classes=null.")
        fig = plots.scatter_figure(X[:opts.count], y[:opts.count])
    else:
        if opts.classes:
            keep = torch.isin(y, torch.tensor(class_indices(list(opts.classes), tuple(names))))
            X, y = X[keep], y[keep]
            if not len(y):
                raise Task1Error(f"show.classes={list(opts.classes)}: the {opts.split} split has none of them.")
        X, y = X[:opts.count], y[:opts.count]
        if X.ndim < 3:  # data=arrays of feature vectors: no images to draw
            raise Task1Error(f"task1 show draws images, and the examples of {cfg.data._target_} are vectors of "
                             f"{X.shape[1]} numbers: there is nothing to show.")
        X = X.mean(dim=1) if X.ndim == 4 else X  # (n, c, h, w) -> (n, h, w): colour shown in grey
        fig = plots.image_grid(X, [names[i] for i in y.tolist()], ncols=opts.ncols)
    image = plots.to_array(fig)
    path = plots.save(image, out / f"{opts.split}.png")
    with SummaryWriter(str(out / "tensorboard")) as writer:
        writer.add_image(f"data/{opts.split}", image, 0, dataformats="HWC")
    log.info("%d %s examples -> %s (and TensorBoard: tensorboard --logdir %s)", len(X), opts.split, path, out)
    return path


@hydra.main(version_base="1.3", config_path=str(cli.CONF), config_name="show")
@cli.exit_on_error
def main(cfg: DictConfig) -> None:
    show(cfg)


if __name__ == "__main__":
    cli.answer_help(lambda: cli.config_help(__doc__, "show"))
    main()
