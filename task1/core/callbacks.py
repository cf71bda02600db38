"""Lightning callbacks: the stop at a non-finite loss, the figures of a run's predictions (example grids,
confusion matrices, per-class accuracy), and a search trial's reports and pruning. The checkpoint callback is in
checkpoints.py."""

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from task1 import Task1Error, drawer

log = logging.getLogger("task1")


class DivergedError(Task1Error):
    """The loss or the weights stopped being finite: with a seed, the same run diverges again at the same step."""

    def __init__(self, epoch: int, step: int, what: str):
        super().__init__(f"Training diverged: {what} in epoch {epoch + 1} at step {step} (optimizer steps since the "
                         f"start). Lower the learning rate (optimizer.lr) and start again; the last good checkpoint "
                         f"is kept.")


class FiniteLoss(L.Callback):
    """Stops the run at the first non-finite training loss.

    On the CPU every step is checked (a few microseconds). On a GPU, reading the loss forces the host to wait
    for the device, so only every `gpu_every` steps are checked there; a NaN in between is caught at the next
    check, and the checkpoint guard below keeps it out of every file meanwhile.
    """

    def __init__(self, gpu_every: int = 50):
        self.gpu_every = gpu_every

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        step = trainer.global_step
        if loss is None or (loss.device.type != "cpu" and step % self.gpu_every):
            return
        value = loss.item()
        if not math.isfinite(value):
            where = "" if loss.device.type == "cpu" else f" (checked every {self.gpu_every} steps on a GPU)"
            raise DivergedError(trainer.current_epoch, step, f"the loss is {value}{where}")


class StopOnRequest(L.Callback):
    """Ends training at the end of the current batch once `request(why)` was called, the way Lightning ends it
    on SIGTERM: `checkpoints/last.ckpt` is written and metrics.json says `interrupted`, so the run resumes
    exactly. A signal handler calls `request` (task1.sweeps.slurm: the cluster's warning before a time limit or
    a preemption); the request is kept until the process ends, so one that comes before training starts stops
    it after its first batch. Under DDP the ranks agree on the batch (one all-reduce per batch).
    """

    requested: str | None = None  # why, for the log: "SIGUSR2: preempted"
    at = 0.0  # from when (time.time()) on

    @classmethod
    def request(cls, why: str, at: float | None = None) -> None:
        """Stop at the end of the first batch that ends after `at` (default: now)."""
        cls.requested, cls.at = why, time.time() if at is None else at

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        stop = self.requested is not None and time.time() >= self.at
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            from task1.core.shortcuts import stop_as_on_sigterm

            log.info("stopping at the end of batch %d of epoch %d (%s): writing the checkpoint",
                     batch_idx + 1, trainer.current_epoch + 1, self.requested or "another rank was asked to")
            stop_as_on_sigterm(trainer)


def judge(trial, metric: str, measured: dict[str, float], epoch: int, max_epochs: int) -> bool | None:
    """Report `metric` of epoch `epoch` (from 0) to a search's `trial`, taken from `measured` (the epoch's val
    metrics as metrics.json keeps them: the study agrees with the history), and say whether its pruner prunes the
    run now. The last epoch is reported but not judged: a run that trained all its epochs is complete. None when
    `metric` is not measured after each epoch (warned: the trial gets its final value, it cannot be pruned).
    Shared by Pruning (a job alone) and a packed member (task1.pack.member)."""
    value = measured.get(metric)
    if value is None:  # e.g. test/acc
        log.warning("optimized_metric=%s is not measured after each epoch, so this trial cannot be pruned "
                    "(after each epoch: %s)", metric, ", ".join(sorted(measured)))
        return None
    trial.report(value, epoch)
    return epoch + 1 < max_epochs and trial.should_prune()


class Pruning(L.Callback):
    """Reports `metric` to a search's trial after every epoch's validation, and stops the run when the trial's
    pruner says so (then `pruned` is true and, once fit ends, the trial is finished as pruned).

    `trial` has `report(value, step)`, `should_prune()` and `prune()` (task1.sweeps.trial.StudyTrial, which
    imports Optuna); None where there is nothing to report to. Steps count epochs from 0, as Optuna's pruners
    expect. The last epoch is reported but not judged: a run that trained all its epochs is complete. Rank 0
    reports and decides for all ranks.
    """

    def __init__(self, trial, metric: str | None):
        self.trial, self.metric, self.pruned = trial, metric, False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero and self.trial is not None:
            self.metric = self.metric or pl_module.monitor[0]  # (None: the metric the best checkpoint follows)
            judged = judge(self.trial, self.metric, pl_module.last_metrics("val"), trainer.current_epoch,
                           trainer.max_epochs)
            if judged is None:
                self.trial = None
            prune = bool(judged)
        self.pruned = bool(trainer.strategy.broadcast(prune))
        if self.pruned:
            trainer.should_stop = True

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.pruned and trainer.is_global_zero:
            self.trial.prune()


class PredictionFigures(L.Callback):
    """After validation and test: a grid of examples (true / predicted, mistakes marked) and a confusion matrix.

    Both are logged as TensorBoard images (tags `val/predictions`, `val/confusion`, `test/...`) and saved as
    `<out_dir>/<split>_predictions.png`, `<out_dir>/<split>_confusion.png`. Validation figures are drawn after the
    last epoch only, plus every `every_n_epochs` epochs when that is > 0; task1.drawer draws them in a process of
    its own, and the run waits for them before its metrics.json says it is over (task1.core.build.report_run:
    they cannot be drawn again without the model). The net runs once more over the batches that validation
    already sees (one big batch at the default eval_batch_size), and only on those epochs. `per_class_acc[split]`
    holds the accuracy of each class, summed over processes.
    """

    def __init__(self, out_dir: Path, names: Sequence[str], every_n_epochs: int = 0, num_examples: int = 24):
        self.out_dir, self.names = Path(out_dir), list(names)
        self.every_n_epochs, self.num_examples = every_n_epochs, num_examples
        self.per_class_acc: dict[str, dict[str, float]] = {}
        self._active = False

    def _start(self, active: bool) -> None:
        self._active, self._confusion, self._examples = active, None, []

    def _collect(self, pl_module: L.LightningModule, batch) -> None:
        if not self._active:
            return
        X, y = batch
        y_hat = pl_module(X).argmax(dim=1)
        k = len(self.names)
        confusion = torch.bincount(y * k + y_hat, minlength=k * k).reshape(k, k)  # [true, predicted]
        self._confusion = confusion if self._confusion is None else self._confusion + confusion
        missing = self.num_examples - sum(len(e[0]) for e in self._examples)
        if missing > 0:
            self._examples.append((X[:missing].cpu(), y[:missing].cpu(), y_hat[:missing].cpu()))

    def _finish(self, trainer: L.Trainer, split: str) -> None:
        if not self._active or self._confusion is None:
            return
        self._active = False
        confusion = trainer.strategy.reduce(self._confusion, reduce_op="sum").cpu()
        per_class = confusion.diag().double() / confusion.sum(dim=1).clamp(min=1)
        present = confusion.sum(dim=1) > 0  # a class absent from the split has no accuracy
        self.per_class_acc[split] = {n: round(float(a), 6) for n, a, p in zip(self.names, per_class, present,
                                                                                strict=True) if p}
        if not trainer.is_global_zero:
            return
        X, y, y_hat = (torch.cat(parts).numpy() for parts in zip(*self._examples, strict=True))
        # framed: each drawn over the kept frame of the last one of its kind (task1.plots.Frame)
        figures = {}
        if X.ndim in (3, 4):  # images, (n, h, w) or (n, c, h, w), shown in grey; a grid of feature vectors is none
            grey = X.mean(axis=1) if X.ndim == 4 else X
            figures[f"{split}/predictions"] = ("prediction_grid", (grey, y, y_hat, self.names, 8, True))
        figures[f"{split}/confusion"] = ("confusion_figure", (confusion.numpy(), self.names, split, True))
        for tag, (name, args) in figures.items():
            boards = [(lg.log_dir, tag, trainer.global_step) for lg in trainer.loggers
                      if isinstance(lg, TensorBoardLogger)]
            drawer.draw(name, args, self.out_dir / f"{tag.replace('/', '_')}.png", boards)

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        every = self.every_n_epochs
        return not trainer.sanity_checking and (epoch == trainer.max_epochs or (every > 0 and epoch % every == 0))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(self._due(trainer))

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(True)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(pl_module, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(pl_module, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, "test")
