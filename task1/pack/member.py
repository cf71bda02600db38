"""One member of a packed run: a sweep job's net, optimizer, scheduler, batch order, sums and files.

A member is built exactly as the job trained alone builds its system (task1.core.build: the job's seed, then
`build_system`), so that it starts from the same weights, and it ends by writing what that job writes into its
own folder: `config_resolved.yaml`, `metrics.json` (with its history), `checkpoints/last.ckpt` and `best.ckpt`,
its loggers' files (TensorBoard's events and HParams) and its figures. The pack (task1.pack.trainer) owns the loop.
A member that is a trial of task1's Optuna search reports to its trial after each epoch, as the job alone does
(task1.core.callbacks.judge), and ends as that job ends when its trial is pruned.
"""

import logging
import math
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from task1 import Task1Error
from task1.core.build import (
    build_all,
    build_system,
    final_metrics,
    report_run,
    run_metrics,
    save_config,
    set_threads_and_seed,
)
from task1.core.callbacks import DivergedError, FiniteLoss, PredictionFigures, judge
from task1.core.checkpoints import AtomicCheckpointIO, check_compatible, load_checkpoint
from task1.core.provenance import provenance
from task1.core.runs import config_changes, failure_metrics, stopped_metrics
from task1.data.loader import TensorLoader
from task1.io import write_json
from task1.models.system import EpochSums, add_batch, epoch_line, epoch_record, split_metrics, start_point
from task1.optim.schedule import scheduler_steps, with_run_length
from task1.pack import PACK_STATE
from task1.sweeps.folders import REUSE_MAY_CHANGE

log = logging.getLogger("task1")
GPU_EVERY = FiniteLoss().gpu_every


class Member:
    """A job of the pack: `cfg` is its resolved config (its `output_dir` is its job folder); `trial` its search
    trial (task1.sweeps.trial.StudyTrial), or None."""

    def __init__(self, cfg: DictConfig, data, choices: dict | None = None, device: str = "cpu", trial=None):
        self.start, self.origin = time.perf_counter(), provenance()
        self.cfg, self.out, self.choices = cfg, Path(cfg.output_dir), choices
        self.out.mkdir(parents=True, exist_ok=True)
        set_threads_and_seed(cfg)  # the job's seed, then its system: the same initial weights as the job alone
        self.system = system = build_system(cfg).to(device)  # on its device before its optimizer, as in Lightning
        save_config(system, cfg, self.out)
        self.net, self.loss, self.classify = system.net, system.loss, system.classify
        self.reduction = system.loss_reduction
        seed = cfg.data.seed if cfg.data.seed is not None else int(torch.randint(0, 2**31, ()))  # as DataModule
        self.data = data
        self.loader = TensorLoader(*data.splits["train"], cfg.data.batch_size, shuffle=True, seed=seed)
        self.max_epochs = int(cfg.trainer.max_epochs)
        self.optimizer = system.optimizer_fn(system.parameters())
        self.scheduler, self.interval, self.frequency = None, system.scheduler_interval, system.scheduler_frequency
        if system.scheduler_fn is not None:
            steps = lambda: scheduler_steps(self.interval, self.frequency, len(self.loader), self.max_epochs)  # noqa: E731
            self.scheduler = with_run_length(system.scheduler_fn, steps)(self.optimizer)
        self.loggers = build_all("logger", cfg.get("logger"))
        self.log_every = int(cfg.trainer.get("log_every_n_steps") or 0)
        self.sums: dict[str, EpochSums] = {}
        self.start_w_b: dict = {}  # where a fresh linear member starts (system.start_point)
        self.global_step, self.epoch_lr = 0, self.lr()
        self.monitor, self.mode = system.monitor
        self.best: float | None = None
        self.failed: BaseException | None = None
        # a search's trial: its optimized_metric reported after each epoch (None: what the best checkpoint follows)
        self.trial, self.metric, self.pruned = trial, cfg.get("optimized_metric") or self.monitor, False
        self.result: dict | None = None  # its metrics.json once it is over (completed, pruned or failed)
        self.epochs_done = self.current_epoch = 0
        self.seconds = 0.0
        figures = cfg.get("figures") or {"enabled": False}
        self.predictions = (PredictionFigures(self.out / "figures", data.labels, figures["every_n_epochs"])
                            if figures["enabled"] and self.classify else None)
        self.view = _TrainerView(self)
        # in a sweep, the member's lines go to the train.log Hydra made for its job too (the pack logs to the sweep's)
        self.log = logging.getLogger(f"task1.pack.{self.out.name}")
        self.file_log = logging.FileHandler(self.out / "train.log") if (self.out / "train.log").is_file() else None
        if self.file_log is not None:
            self.file_log.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
            self.log.addHandler(self.file_log)
        state = self.out / "checkpoints" / PACK_STATE
        if state.is_file():  # an earlier start of the pack was stopped (the launcher reuses finished members)
            self.restore(state)
        # the time this member cost: its own work, and its share of what the pack does for all (task1.pack.trainer)
        self.seconds += time.perf_counter() - self.start

    def restore(self, path: Path) -> None:
        """Go on from the state a killed pack left at the end of an epoch: the batches of the next epoch follow
        from the seed and the epoch number, so the member ends exactly where an uninterrupted pack ends it."""
        checkpoint = load_checkpoint(path)
        check_compatible(path, checkpoint, self.system)
        changes = config_changes(self.cfg, checkpoint["hyper_parameters"]["config"], REUSE_MAY_CHANGE)
        if changes:
            raise Task1Error(f"{path} was saved under another config than this job's (conf/ changed since?): "
                             f"{changes}. Start the sweep in a new folder, or delete {self.out} to train it again.")
        self.system.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer_states"][0])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(checkpoint["lr_schedulers"][0])
        self.system.history, self.global_step = checkpoint["history"], checkpoint["global_step"]
        self.epochs_done, self.best = checkpoint["packed"]["epochs_done"], checkpoint["packed"]["best"]
        self.seconds = checkpoint["packed"].get("seconds", 0.0)  # a resumed run's time goes on from its record
        self.log.info("%s: resuming after epoch %d (%s)", self.out, self.epochs_done, path)

    @property
    def history(self) -> list[dict]:
        """The epochs' records, kept where System keeps the job alone's (what run_metrics reads)."""
        return self.system.history

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # --- the loop's calls, in the order of Lightning's fit loop (task1.optim.schedule's docstring)

    def start_epoch(self, epoch: int) -> None:
        self.current_epoch = epoch
        self.loader.set_epoch(epoch)
        if not self.history:
            self.start_w_b = start_point(self.net)
        self.sums["train"], self.epoch_lr = EpochSums(), self.lr()

    def add(self, stage: str, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """A batch's loss and logits into the `stage` sums (System._step's bookkeeping)."""
        add_batch(self.sums, stage, loss, logits, y, self.reduction, self.classify)

    def after_step(self, loss: torch.Tensor, batch_idx: int, n: int, epoch: int) -> None:
        """After the optimizer step: a NaN check (FiniteLoss), the step's log line, a per-step scheduler."""
        logged = self.loggers and self.log_every and self.global_step % self.log_every == 0
        # on a GPU, reading the loss waits for the device: checked every GPU_EVERY steps there, as FiniteLoss does
        if loss.device.type == "cpu" or logged or self.global_step % GPU_EVERY == 0:
            value = loss.item()
            if not math.isfinite(value):
                raise DivergedError(epoch, self.global_step, f"the loss is {value}")
        if logged:
            per_example = value / (n if self.reduction == "sum" else 1)
            for logger in self.loggers:
                logger.log_metrics({"train/loss_step": per_example, "train/lr_step": self.lr()}, step=self.global_step)
        self.global_step += 1
        if self.scheduler is not None and self.interval == "step" and (batch_idx + 1) % self.frequency == 0:
            self.scheduler.step()

    def epoch_metrics(self, stage: str) -> dict[str, float]:
        return split_metrics(self.sums.pop(stage).total().tolist(), stage, self.classify)

    def end_epoch(self, epoch: int, val: dict[str, float]) -> None:
        """The epoch's record with its `val` metrics (System.on_train_epoch_end), its log line, the loggers, the
        checkpoints."""
        if self.scheduler is not None and self.interval == "epoch" and (epoch + 1) % self.frequency == 0:
            self.scheduler.step()
        train = {**self.epoch_metrics("train"), "train/lr": self.epoch_lr}
        record = epoch_record(epoch + 1, train, val, self.net, self.history, self.start_w_b)
        self.history.append(record)
        for logger in self.loggers:
            logger.log_metrics({**train, **val, "epoch": epoch}, step=self.global_step)
        self.log.info("%s: epoch %d/%d  %s", self.out.name, epoch + 1, self.max_epochs, epoch_line(record))
        value = val.get(self.monitor)
        if value is not None and (self.best is None or
                                  (value > self.best if self.mode == "max" else value < self.best)):
            self.best = value
            self.save("best.ckpt", epoch)
        if self.trial is not None:  # before the pack's state: a pack stopped in between judges this epoch again
            judged = judge(self.trial, self.metric, val, epoch, self.max_epochs)
            self.trial, self.pruned = self.trial if judged is not None else None, bool(judged)
        self.epochs_done = epoch + 1
        self.save(PACK_STATE, epoch)

    def save(self, name: str, epoch: int) -> None:
        """A checkpoint as Lightning lays one out (what eval, rerun and ckpt_path= read), with the pack's own
        resume state (`packed`). A pack killed mid-epoch trains that epoch again from its start."""
        checkpoint = {"epoch": epoch, "global_step": self.global_step, "pytorch-lightning_version": L.__version__,
                      "state_dict": self.system.state_dict(), "hyper_parameters": dict(self.system.hparams),
                      "optimizer_states": [self.optimizer.state_dict()],
                      "lr_schedulers": [self.scheduler.state_dict()] if self.scheduler is not None else [],
                      "history": self.history,
                      "packed": {"epochs_done": epoch + 1, "best": self.best, "seconds": self.seconds}}
        AtomicCheckpointIO().save_checkpoint(checkpoint, self.out / "checkpoints" / name)

    # --- the end

    def fail(self, error: BaseException) -> None:
        """Mark the member failed (its metrics.json says why); the pack goes on without it."""
        self.failed = error
        metrics, _ = failure_metrics(error, self.history, self.cfg.seed, self.out)
        self.result = {**metrics, "wall_time_s": round(self.seconds, 3)}
        write_json(self.out / "metrics.json", self.result)
        self.log.error("%s: %s", self.out, error)
        self.close_log()

    def interrupted(self) -> None:
        """The pack was stopped (a signal, Ctrl-C): metrics.json says where the member will go on from."""
        kept = (f"checkpoints/{PACK_STATE} holds its state after epoch {self.epochs_done}" if self.epochs_done
                else "no epoch had ended")
        reason = (f"Stopped by a signal during epoch {self.epochs_done + 1} of a packed run ({kept}). Continue with "
                  f"the same sweep command: the pack goes on from there.")
        write_json(self.out / "metrics.json", {**stopped_metrics("interrupted", reason, self.cfg.seed, self.history),
                                               "wall_time_s": round(self.seconds, 3)})
        self.close_log()

    def finish(self, test: dict[str, float], settled: bool = False) -> dict:
        """metrics.json, the loggers' final record, the figures: what task1.core.build.fit writes, built and written
        by the same functions (its loop is the automatic one written out; the pack stops no member early but a
        pruned one, whose test split stays unseen, as a pruned job's; its trial is told once its files are
        written, so that a pack stopped in between leaves the trial to the search, which reads the folder). `settled`:
        the pack has waited for the figures already (task1.pack.trainer)."""
        status = "pruned" if self.pruned else "completed"
        metrics = run_metrics(status, self.cfg.seed, self.system, self.max_epochs, False, self.seconds,
                              final_metrics(self.history, test), self.data, self.predictions, self.origin)
        if self.pruned:
            self.log.info("%s: the search pruned this trial after epoch %d of %d", self.out.name, len(self.history),
                          self.max_epochs)
        # last.ckpt only now: Lightning would resume a run from it (resume=, a sweep started again), and it cannot
        # go on from the pack's state; a finished run is never resumed
        self.save("last.ckpt", len(self.history) - 1)
        with _Choices(self.choices):  # the job's choices, where log_final reads them
            report_run(self.out, self.system.hparams["config"], metrics, self.loggers, self.global_step, self.log,
                       settled)
        for logger in self.loggers:
            logger.finalize("success")
        self.close_log()
        if self.pruned:
            self.trial.prune()
        self.result = metrics
        return metrics

    def close_log(self) -> None:
        if self.file_log is not None:
            self.log.removeHandler(self.file_log)
            self.file_log.close()
            self.file_log = None

    def hook(self, name: str, *args) -> None:
        """PredictionFigures' hook `on_<name>` (validation_epoch_start ...), called as Lightning calls it."""
        if self.predictions is not None:
            getattr(self.predictions, f"on_{name}")(self.view, self.system, *args)


class _TrainerView:
    """What PredictionFigures reads of a Lightning Trainer, answered for one member."""

    is_global_zero, sanity_checking = True, False

    FROM_MEMBER = ("loggers", "global_step", "current_epoch", "max_epochs")

    def __init__(self, member: Member):
        self.member, self.strategy = member, self

    def reduce(self, tensor: torch.Tensor, reduce_op: str = "sum") -> torch.Tensor:
        return tensor  # one process

    def __getattr__(self, name: str):
        if name in self.FROM_MEMBER:  # read when asked: they change as the member trains
            return getattr(self.member, name)
        raise AttributeError(name)


class _Choices:
    """The job's Hydra config choices (model=softmax ...) where log_final reads them (HydraConfig), for the block."""

    def __init__(self, choices: dict | None):
        self.choices = choices

    def __enter__(self) -> None:
        from hydra.core.hydra_config import HydraConfig

        self.saved = HydraConfig.instance().cfg
        if self.choices is not None:
            HydraConfig.instance().cfg = OmegaConf.create({"hydra": {"runtime": {"choices": self.choices}}})

    def __exit__(self, *exc) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().cfg = self.saved
