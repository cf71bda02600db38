"""The learning rate at every optimizer step of a configured run, before the run: `python -m task1.lr_schedule ...`.

It builds the run's real optimizer and scheduler (System.configure_optimizers) and steps them as Lightning's fit
loop does, without data or a Trainer: per epoch after each epoch, or per step after each optimizer step, every
`frequency` of them. Prints the schedule, and saves `lr_schedule.png` (epoch boundaries dotted) and
`lr_schedule.csv` (step, epoch, lr) in the output folder.
"""

import logging
import math
from pathlib import Path
from types import SimpleNamespace

import hydra
from omegaconf import DictConfig

from task1 import Task1Error, exit_on_error, plots
from task1.models import System
from task1.train import build_system

log = logging.getLogger("task1")
FASHION_MNIST_TRAIN = 60_000


def train_examples(data: DictConfig) -> int:
    """The number of training examples `data` yields, from its config alone (no files read)."""
    target = str(data.get("_target_", ""))
    if target.endswith("FashionMNIST"):
        return FASHION_MNIST_TRAIN - data.val_size
    if target.endswith("SyntheticRegression"):
        return data.num_examples - data.val_size
    raise Task1Error(f"task1.lr_schedule does not know how many training examples {target} has: "
                     f"set lr_schedule.train_examples=N.")


def lr_per_step(system: System, batches_per_epoch: int, max_epochs: int, accumulate: int = 1) -> list[float]:
    """The learning rate each optimizer step of the run uses, in order."""
    steps_per_epoch = math.ceil(batches_per_epoch / accumulate)
    # configure_optimizers reads only these two from its trainer, to fill T_max / total_steps left as null
    system.trainer = SimpleNamespace(max_epochs=max_epochs, estimated_stepping_batches=steps_per_epoch * max_epochs)
    config = system.configure_optimizers()
    optimizer = config["optimizer"] if isinstance(config, dict) else config
    scheduler = config["lr_scheduler"]["scheduler"] if isinstance(config, dict) else None
    interval, frequency = system.scheduler_interval, system.scheduler_frequency
    lrs = []
    for epoch in range(max_epochs):
        for batch_idx in range(batches_per_epoch):
            if (batch_idx + 1) % accumulate and batch_idx + 1 < batches_per_epoch:
                continue  # gradient accumulation: no optimizer step after this batch
            lrs.append(float(optimizer.param_groups[0]["lr"]))
            optimizer.step()  # no gradients, so no change; schedulers warn when stepped before their optimizer
            # Lightning counts per-step frequency in batches of the current epoch (batch_idx + 1), not globally
            if scheduler is not None and interval == "step" and (batch_idx + 1) % frequency == 0:
                scheduler.step()
        if scheduler is not None and interval == "epoch" and (epoch + 1) % frequency == 0:
            scheduler.step()
    return lrs


def describe(lrs: list[float], steps_per_epoch: int, max_runs: int = 50) -> list[str]:
    """One line per run of steps with the same lr; one line per epoch when there are more than `max_runs`."""
    runs, start = [], 0
    for i in range(1, len(lrs) + 1):
        if i == len(lrs) or lrs[i] != lrs[start]:
            runs.append((start, i - 1))
            start = i
    if len(runs) > max_runs:
        lines = []
        for e in range(0, len(lrs), steps_per_epoch):
            part = lrs[e:e + steps_per_epoch]
            lines.append(f"epoch {e // steps_per_epoch + 1:>4}  steps {e:>6}-{e + len(part) - 1:<6}  lr {part[0]:.6g} "
                         f"-> {part[-1]:.6g}  (min {min(part):.6g}, max {max(part):.6g})")
        return lines

    def epochs(a: int, b: int) -> str:
        first, last = a // steps_per_epoch + 1, b // steps_per_epoch + 1
        return f"epoch {first}" if first == last else f"epochs {first}-{last}"

    return [f"steps {a:>6}-{b:<6}  {epochs(a, b):<14}  lr {lrs[a]:.6g}" for a, b in runs]


def lr_schedule(cfg: DictConfig) -> list[float]:
    """Print and plot the lr at every optimizer step of the run `cfg` configures; return the lrs."""
    out = Path(cfg.output_dir)
    n = cfg.lr_schedule.train_examples
    n = train_examples(cfg.data) if n is None else n
    epochs, accumulate = cfg.trainer.get("max_epochs"), cfg.trainer.get("accumulate_grad_batches") or 1
    if not isinstance(epochs, int) or epochs < 1:
        raise Task1Error(f"trainer.max_epochs={epochs}: the schedule needs a number of epochs >= 1.")
    if n < 1:
        raise Task1Error(f"{n} training examples: check data.val_size and lr_schedule.train_examples.")
    batches = math.ceil(n / cfg.data.batch_size)  # the last, smaller batch is trained on too
    system = build_system(cfg)
    lrs = lr_per_step(system, batches, epochs, accumulate)
    steps = math.ceil(batches / accumulate)
    name = getattr(getattr(system.scheduler_fn, "func", None), "__name__", "constant lr")
    title = (f"{name}, interval={system.scheduler_interval}, frequency={system.scheduler_frequency}: {epochs} "
             f"epochs x {steps} optimizer steps ({n} examples / batch {cfg.data.batch_size})")
    print(title)
    print("\n".join(describe(lrs, steps)))
    plots.save(plots.lr_figure(lrs, steps, title), out / "lr_schedule.png")
    lines = [f"{i},{i // steps + 1},{lr!r}" for i, lr in enumerate(lrs)]
    (out / "lr_schedule.csv").write_text("step,epoch,lr\n" + "\n".join(lines) + "\n")
    log.info("plot: %s, every step: %s", out / "lr_schedule.png", out / "lr_schedule.csv")
    return lrs


@hydra.main(version_base="1.3", config_path="../conf", config_name="lr_schedule")
@exit_on_error
def main(cfg: DictConfig) -> None:
    lr_schedule(cfg)


if __name__ == "__main__":
    main()
