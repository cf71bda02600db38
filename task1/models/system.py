"""The LightningModule ("system") that trains any of the nets: one loop for all models and impls."""

import logging
import math
import time

import lightning as L
import torch
from torch import nn

from task1.core.shortcuts import QuietHooks, backward_sync, go_manual, store_signature
from task1.optim.schedule import scheduler_steps, steps_scheduler, with_run_length

log = logging.getLogger("task1")


class EpochSums:
    """One split's running sums over an epoch: the per-example losses, the correct predictions, the examples.

    Cheap per step and free of host syncs. A step adds its loss into one tensor in place and keeps its detached
    logits; the correct predictions are counted for `count_every` steps' logits at once, and when read (counting
    them step by step took about ten small torch calls a step: docs/performance.md). The losses are added in step
    order, so a run resumed mid-epoch sums exactly as an uninterrupted one; counts are integers, exact in any
    grouping.
    """

    def __init__(self, total: torch.Tensor | None = None, count_every: int = 64):
        self.count_every = count_every
        self._loss = self._correct = None  # 0-dim tensors, on the batches' device
        self._n = 0
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        if total is not None:  # [loss sum, correct, examples], as `total()` returns it
            self._loss, self._correct, self._n = total[0].clone(), total[1].round().long(), int(total[2])

    def add(self, loss: torch.Tensor, weight: int, n: int, logits: torch.Tensor | None, y: torch.Tensor) -> None:
        """`loss * weight` is the batch's sum of per-example losses; `logits` is None for regression."""
        if self._loss is None:
            self._loss = torch.zeros((), device=loss.device)
            self._correct = torch.zeros((), dtype=torch.long, device=loss.device)
        elif self._loss.device != loss.device:  # restored from a checkpoint, which is read onto the CPU
            self._loss, self._correct = self._loss.to(loss.device), self._correct.to(loss.device)
        self._loss.add_(loss.detach(), alpha=weight)
        self._n += n
        if logits is not None:
            self._logits.append(logits.detach())
            self._targets.append(y)
            if len(self._logits) >= self.count_every:
                self._count()

    def _count(self) -> None:
        if self._logits:
            self._correct += (torch.cat(self._logits).argmax(dim=1) == torch.cat(self._targets)).sum()
            self._logits, self._targets = [], []

    def total(self) -> torch.Tensor:
        """[sum of per-example losses, correct predictions, examples] as one float tensor."""
        self._count()
        return torch.stack([self._loss.float(), self._correct.float(), self._loss.new_tensor(float(self._n))])


def add_batch(sums: dict[str, EpochSums], stage: str, loss: torch.Tensor, y_hat: torch.Tensor, y: torch.Tensor,
              reduction: str, classify: bool) -> None:
    """A batch's `loss` (reduced by `reduction`) and logits `y_hat` into the `stage` sums of an epoch."""
    n = len(y)
    split = sums.get(stage) or sums.setdefault(stage, EpochSums())
    split.add(loss, n if reduction == "mean" else 1, n, y_hat if classify else None, y)


def split_metrics(total: list[float], stage: str, classify: bool) -> dict[str, float]:
    """A split's epoch means from its sums (`EpochSums.total()`, over every process): loss, and accuracy."""
    loss_sum, correct, n = total
    metrics = {f"{stage}/loss": loss_sum / n}
    if classify:
        metrics[f"{stage}/acc"] = correct / n
    return metrics


def start_point(net: nn.Module) -> dict:
    """Where a fresh run of a linear regression starts (the figure's epoch 0); {} for the other nets."""
    if not hasattr(net, "get_w_b"):
        return {}
    w, b = net.get_w_b()
    return {"w_start": w.tolist(), "b_start": b.reshape(-1).tolist()}


def epoch_record(epoch: int, train: dict, val: dict, net: nn.Module, history: list[dict], start: dict) -> dict:
    """A finished epoch's entry of the history (epochs count from 1): its train and val metrics, and for a linear
    regression its weights; the first entry keeps where the run `start`ed too."""
    record = {"epoch": epoch, **train, **val}
    if hasattr(net, "get_w_b"):
        w, b = net.get_w_b()
        record.update(w=w.tolist(), b=b.reshape(-1).tolist())
        if not history:
            record.update(start)
    return record


def epoch_line(record: dict) -> str:
    """An epoch's metrics for its log line: accuracies as fractions, the rest in significant digits (a
    regression's loss of 9.5e-05 is no 0.0001)."""
    return "  ".join(f"{k} {v:.4f}" if k.endswith("/acc") else f"{k} {v:.4g}" for k, v in record.items()
                     if isinstance(v, float))


class System(QuietHooks, L.LightningModule):
    """Trains `net` on `loss` with an optimizer and an optional learning-rate scheduler.

    `optimizer` and `scheduler` are callables still missing their first argument (Hydra `_partial_` configs):
    `optimizer(params)` and `scheduler(optimizer)`. A scheduler keyword `T_max` or `total_steps` left as
    None is filled with the number of scheduler steps in the whole run.

    Metrics are exact per-epoch means over examples: the step accumulates sums (no host sync), the epoch end
    divides, after summing over processes when there are several.

    `loop="automatic"` leaves the update to Lightning; `loop="manual"` writes it out (`manual_update`), with the
    same result bit for bit; there `zero_grad=False` leaves out `optimizer.zero_grad()` (a teaching switch).
    """

    def __init__(self, net: nn.Module, loss, optimizer, scheduler=None, loss_reduction: str = "mean",
                 task: str = "classification", scheduler_interval: str = "epoch", scheduler_frequency: int = 1,
                 loop: str = "automatic", zero_grad: bool = True):
        super().__init__()
        if loop not in ("automatic", "manual"):
            raise ValueError(f"loop={loop!r}: expected automatic or manual")
        if not zero_grad and loop == "automatic":
            raise ValueError("zero_grad=False needs loop='manual': Lightning's loop always zeroes the gradients")
        if task not in ("classification", "regression"):
            raise ValueError(f"task={task!r}: expected classification or regression")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler interval={scheduler_interval!r}: expected epoch or step")
        self.net, self.loss = net, loss
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        self.loss_reduction, self.task = loss_reduction, task
        self.scheduler_interval, self.scheduler_frequency = scheduler_interval, scheduler_frequency
        self.loop, self.zeroes_grad = loop, zero_grad
        self.history: list[dict] = []  # one dict of metrics per finished epoch
        self._sums: dict[str, EpochSums] = {}
        self._last: dict[str, dict] = {}
        self._start: dict = {}  # where a fresh linear regression starts (start_point)

    @property
    def classify(self) -> bool:
        return self.task == "classification"

    @property
    def monitor(self) -> tuple[str, str]:
        """The metric that picks the best checkpoint, and whether higher is better."""
        return ("val/acc", "max") if self.classify else ("val/loss", "min")

    def last_metrics(self, stage: str) -> dict[str, float]:
        """The metrics of the last `stage` epoch (val, test), as exact as the history keeps them (the values
        Lightning holds are float32 copies: 0.8300999999046326 for 0.8301)."""
        return dict(self._last.get(stage, {}))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X)

    def _step(self, batch, stage: str) -> torch.Tensor:
        X, y = batch
        y_hat = self.net(X)
        loss = self.loss(y_hat, y, reduction=self.loss_reduction)
        add_batch(self._sums, stage, loss, y_hat, y, self.loss_reduction, self.classify)
        return loss

    def _epoch_metrics(self, stage: str) -> dict[str, float]:
        sums = self._sums.pop(stage, None)
        if sums is None:
            return {}
        total = self.trainer.strategy.reduce(sums.total(), reduce_op="sum").tolist()
        metrics = split_metrics(total, stage, self.classify)
        self._last[stage] = metrics
        return metrics

    @property
    def loop_record(self) -> dict:
        """Which loop trained, for metrics.json."""
        return {"name": self.loop, "zero_grad": self.zeroes_grad}

    def setup(self, stage: str) -> None:
        if self.loop == "manual":
            go_manual(self)

    def _stepping(self, batch_idx: int) -> bool:
        """Whether an optimizer step follows this batch: under gradient accumulation, the last micro-batch of each
        group of `accumulate_grad_batches`, and the epoch's last batch."""
        last = batch_idx + 1 == self.trainer.num_training_batches
        return (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0 or last

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        every = self.trainer.log_every_n_steps
        # once an optimizer step: under gradient accumulation its last micro-batch (global_step counts steps)
        if self.loggers and every and self._stepping(batch_idx) and self.global_step % every == 0:
            # straight to the loggers: Lightning's self.log costs more than a softmax step
            # the per-example mean, as train/loss is, also when the summed loss drives the update
            per_example = loss.item() / (len(batch[1]) if self.loss_reduction == "sum" else 1)
            step_metrics = {"train/loss_step": per_example, "train/lr_step": self._lr()}
            for logger in self.loggers:
                logger.log_metrics(step_metrics, step=self.global_step)
        if not self.automatic_optimization:
            self.manual_update(loss, batch_idx)
        return loss

    def manual_update(self, loss: torch.Tensor, batch_idx: int) -> None:
        """The book's loop (d2l 3.4's fit_epoch), in the order and with the arithmetic of Lightning's automatic
        loop (lightning/pytorch/loops/optimization/automatic.py), so both give the same weights bit for bit:
        zero the gradients at the first micro-batch of an accumulation, backpropagate the loss divided by
        `accumulate_grad_batches` (the gradients of the group's batches add up to their mean), then at its last
        clip the gradients if the Trainer says so, step the optimizer, and step the scheduler when its interval
        and frequency say (task1.optim.schedule.steps_scheduler: the rule Lightning follows)."""
        trainer = self.trainer
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        accumulate = trainer.accumulate_grad_batches
        if self.zeroes_grad and batch_idx % accumulate == 0:
            optimizer.zero_grad()
        stepping = self._stepping(batch_idx)
        with backward_sync(trainer.strategy, block=not stepping):  # one gradient all-reduce per step, not per batch
            self.manual_backward(loss / accumulate)
        if not stepping:
            return
        if trainer.gradient_clip_val:
            self.configure_gradient_clipping(optimizer.optimizer, trainer.gradient_clip_val,
                                             trainer.gradient_clip_algorithm)
        optimizer.step()
        last = batch_idx + 1 == trainer.num_training_batches
        if scheduler is not None and steps_scheduler(self.scheduler_interval, self.scheduler_frequency,
                                                     self.current_epoch, batch_idx, last):
            scheduler.step()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_start(self) -> None:
        self._sums.pop("train", None)
        self._epoch_start = time.perf_counter()
        self._epoch_lr = self._lr()  # epoch-interval schedulers step before on_train_epoch_end: keep this one
        if not self.history:
            self._start = start_point(self.net)

    def on_validation_epoch_start(self) -> None:
        self._sums.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._sums.pop("test", None)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.log_dict(self._epoch_metrics("val"))
        self._sums.pop("val", None)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._epoch_metrics("test"))

    def on_train_epoch_end(self) -> None:
        metrics = {**self._epoch_metrics("train"), "train/lr": self._epoch_lr}
        self.log_dict(metrics)
        record = epoch_record(self.current_epoch + 1, metrics, self._last.pop("val", {}), self.net, self.history,
                              self._start)
        self.history.append(record)
        if self.trainer.is_global_zero:  # one line per epoch, in place of a progress bar
            seconds = time.perf_counter() - self._epoch_start
            log.info(f"epoch {self.current_epoch + 1}/{self.trainer.max_epochs}  {epoch_line(record)}  "
                     f"({seconds:.1f} s)")

    def _lr(self) -> float:
        return float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["history"] = self.history
        # a checkpoint taken mid-epoch also carries the epoch's partial sums, so a resumed run ends exactly equal;
        # summed over processes (each one saves, the first one's file is written): its sums go on from them
        if "train" in self._sums:
            sums = self.trainer.strategy.reduce(self._sums["train"].total(), reduce_op="sum")
            # and, in a linear regression's first epoch, where it started (its first record keeps that)
            checkpoint["epoch_state"] = {"train_sums": sums, "lr": self._epoch_lr, "start": self._start}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = checkpoint.get("history", [])
        if "epoch_state" in checkpoint:  # Lightning skips on_train_epoch_start when it resumes mid-epoch
            sums = checkpoint["epoch_state"]["train_sums"]  # all processes' sums: the first goes on from them
            self._sums["train"] = EpochSums(sums if self.global_rank == 0 else torch.zeros_like(sums))
            self._epoch_lr, self._epoch_start = checkpoint["epoch_state"]["lr"], time.perf_counter()
            self._start = checkpoint["epoch_state"].get("start", {})  # (saved by a task1 that kept it)

    def _scheduler_steps_per_run(self) -> int:
        """How often Lightning will call scheduler.step() in this run."""
        trainer = self.trainer
        trainer.estimated_stepping_batches  # noqa: B018 (sets up the data: num_training_batches is then known)
        if not math.isfinite(trainer.num_training_batches):  # an endless run: only max_steps bounds it
            return max(1, trainer.max_steps)
        return scheduler_steps(self.scheduler_interval, self.scheduler_frequency, int(trainer.num_training_batches),
                               trainer.max_epochs, trainer.accumulate_grad_batches, trainer.max_steps)

    def configure_optimizers(self):
        optimizer = self.optimizer_fn(self.parameters())
        if self.scheduler_fn is None:
            return optimizer
        scheduler = {"scheduler": with_run_length(self.scheduler_fn, self._scheduler_steps_per_run)(optimizer),
                     "interval": self.scheduler_interval, "frequency": self.scheduler_frequency}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


store_signature(System.training_step)
