"""The learning rate at every optimizer step of a configured run, before the run: `task1 lr-schedule ...`.

It builds the run's real scheduler on the optimizer's hyperparameters and steps it as Lightning's fit loop does
(`task1.optim.schedule`, the same rule the training uses), without data, a Trainer or Lightning. Prints the
schedule, and saves `lr_schedule.png` (epoch boundaries dotted) and `lr_schedule.csv` (step, epoch, lr) in the
output folder.
"""

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from task1 import Task1Error, cli
from task1.core.config import validate
from task1.io import write_atomic

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
    from task1 import plots
    from task1.optim import schedule

    validate(cfg)
    out = Path(cfg.output_dir)
    n = cfg.lr_schedule.train_examples
    n = train_examples(cfg.data) if n is None else n
    trainer = cfg.trainer
    epochs, accumulate = trainer.get("max_epochs"), trainer.get("accumulate_grad_batches") or 1
    max_steps = trainer.get("max_steps", -1)
    if n < 1:
        raise Task1Error(f"{n} training examples: check data.val_size and lr_schedule.train_examples.")
    batches = schedule.limited_batches(schedule.batches(n, cfg.data.batch_size), trainer.get("limit_train_batches"))
    spec = OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else {}
    interval, frequency = spec.pop("interval", "epoch"), spec.pop("frequency", 1)
    optimizer = schedule.HyperparametersOnly(instantiate(cfg.optimizer))
    scheduler = None
    if spec:
        length = lambda: schedule.scheduler_steps(interval, frequency, batches, epochs, accumulate, max_steps)  # noqa: E731
        scheduler = schedule.with_run_length(instantiate(spec), length)(optimizer)
    lrs = schedule.lr_per_step(optimizer, scheduler, interval, frequency, batches, epochs, accumulate, max_steps)
    steps = -(-batches // accumulate)
    name = type(scheduler).__name__ if scheduler is not None else "constant lr"
    title = (f"{name}, interval={interval}, frequency={frequency}: {epochs} epochs x {steps} optimizer steps "
             f"({n} examples / batch {cfg.data.batch_size})")
    print(title)
    print("\n".join(describe(lrs, steps)))
    plots.save(plots.lr_figure(lrs, steps, title), out / "lr_schedule.png")
    lines = [f"{i},{i // steps + 1},{lr!r}" for i, lr in enumerate(lrs)]
    write_atomic(out / "lr_schedule.csv", "step,epoch,lr\n" + "\n".join(lines) + "\n")
    log.info("plot: %s, every step: %s", out / "lr_schedule.png", out / "lr_schedule.csv")
    return lrs


@hydra.main(version_base="1.3", config_path=str(cli.CONF), config_name="lr_schedule")
@cli.exit_on_error
def main(cfg: DictConfig) -> None:
    lr_schedule(cfg)


if __name__ == "__main__":
    cli.answer_help(lambda: cli.config_help(__doc__, "lr_schedule"))
    main()
