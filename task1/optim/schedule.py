"""When Lightning steps a learning-rate scheduler, in one place: the run's length in scheduler steps (for
`T_max` / `total_steps` left null) and the learning rate of every optimizer step (`task1.lr_schedule`).

Lightning's fit loop, per training batch (lightning/pytorch/loops/training_epoch_loop.py):
- the optimizer steps after every `accumulate_grad_batches`-th batch of the epoch and after its last batch;
- a per-step scheduler (`interval: step`) steps after an optimizer step whose batch number in the epoch,
  counted from 1, is a multiple of `frequency`;
- a per-epoch scheduler steps after the epoch's last batch when the epoch number, from 1, is a multiple of
  `frequency`;
- training ends after `max_epochs` epochs, or at the optimizer step that reaches `max_steps`;
- `limit_train_batches` cuts every epoch short: an int is a number of batches, a float a fraction.
"""

import inspect
import math
from collections.abc import Iterator
from functools import partial

import torch

RUN_LENGTH_KEYS = ("T_max", "total_steps")  # scheduler arguments that null means "the whole run"


def limited_batches(batches: int, limit: int | float | None) -> int:
    """Batches per epoch under `trainer.limit_train_batches` (Lightning's `_parse_num_batches`)."""
    if limit is None:
        return batches
    if isinstance(limit, bool) or not isinstance(limit, (int, float)):
        raise ValueError(f"limit_train_batches={limit!r}: expected an int or a float")
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)


def optimizer_steps(batches_per_epoch: int, max_epochs: int | None, accumulate: int = 1,
                    max_steps: int | None = -1) -> Iterator[tuple[int, int, bool]]:
    """(epoch, batch_idx, last batch of the epoch) after every optimizer step Lightning's fit loop takes."""
    if max_epochs in (None, -1) and max_steps in (None, -1):
        max_epochs = 1000  # Lightning's default when neither is set
    steps, epoch = 0, 0
    while max_epochs in (None, -1) or epoch < max_epochs:
        for batch_idx in range(batches_per_epoch):
            last = batch_idx + 1 == batches_per_epoch
            if (batch_idx + 1) % accumulate and not last:
                continue  # gradients are accumulated: no optimizer step after this batch
            yield epoch, batch_idx, last
            steps += 1
            if max_steps not in (None, -1) and steps >= max_steps:
                return
        epoch += 1
        if batches_per_epoch == 0:
            return


def scheduler_steps(interval: str, frequency: int, batches_per_epoch: int, max_epochs: int | None,
                    accumulate: int = 1, max_steps: int | None = -1) -> int:
    """How many times Lightning calls `scheduler.step()` in the run (at least 1)."""
    return max(1, sum(steps_scheduler(interval, frequency, e, b, last) for e, b, last in
                      optimizer_steps(batches_per_epoch, max_epochs, accumulate, max_steps)))


def steps_scheduler(interval: str, frequency: int, epoch: int, batch_idx: int, last: bool) -> bool:
    """Whether the scheduler steps after the optimizer step of batch `batch_idx` of `epoch` (both from 0; `last`:
    the epoch's last batch), as Lightning's fit loop decides (its `_update_learning_rates`); task1's manual loop
    decides by this too."""
    if interval == "step":
        return (batch_idx + 1) % frequency == 0
    return last and (epoch + 1) % frequency == 0


def with_run_length(scheduler_fn, length) -> partial:
    """`scheduler_fn` with its `T_max` / `total_steps` left as None set to `length()`, the run's scheduler steps."""
    unset = [k for k, v in getattr(scheduler_fn, "keywords", {}).items() if k in RUN_LENGTH_KEYS and v is None]
    return partial(scheduler_fn, **dict.fromkeys(unset, length())) if unset else scheduler_fn


def lr_per_step(optimizer, scheduler, interval: str, frequency: int, batches_per_epoch: int,
                max_epochs: int | None, accumulate: int = 1, max_steps: int | None = -1) -> list[float]:
    """The learning rate each optimizer step of the run uses, in order, stepping `scheduler` as Lightning does."""
    lrs = []
    for epoch, batch_idx, last in optimizer_steps(batches_per_epoch, max_epochs, accumulate, max_steps):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()  # no gradients, so no change; schedulers warn when stepped before their optimizer
        if scheduler is not None and steps_scheduler(interval, frequency, epoch, batch_idx, last):
            scheduler.step()
    return lrs


def batches(examples: int, batch_size: int) -> int:
    """Training batches of an epoch: the last, smaller batch is trained on too."""
    return math.ceil(examples / batch_size)


class HyperparametersOnly(torch.optim.Optimizer):
    """An optimizer's hyperparameters without parameters, for previewing a schedule: what a scheduler reads and
    writes (`param_groups`, `defaults`), and a `step` that changes nothing.

    Building a real torch optimizer imports torch._dynamo (about 1.4 s, more than the whole preview) for its
    `add_param_group`; with no gradients it would change nothing either.
    """

    def __init__(self, optimizer_fn):
        cls = getattr(optimizer_fn, "func", optimizer_fn)
        defaults = {name: p.default for name, p in inspect.signature(cls).parameters.items()
                    if p.default is not p.empty}
        defaults.update(getattr(optimizer_fn, "keywords", {}))
        self.defaults, self.state = defaults, {}
        self.param_groups = [{"params": [], **defaults}]
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}

    def step(self, closure=None) -> None:
        return None
