"""Build and run one training: config -> data module, system, trainer -> fit, test -> metrics.json.

`fit(cfg)` is the whole training (task1.train.train runs it); `build(cfg)` returns what it fits (scripts/bench.py
times it). Nothing below this
module reads the config object: the classes take plain arguments.
"""

import json
import logging
import time
import warnings
from functools import partial
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from task1 import Task1Error, drawer, error_line
from task1.core import ddp
from task1.core.callbacks import FiniteLoss, PredictionFigures, Pruning, StopOnRequest
from task1.core.checkpoints import AtomicCheckpointIO, LastCheckpoint, check_compatible, load_checkpoint
from task1.core.config import entries, validate
from task1.core.hparams import log_final
from task1.core.provenance import provenance
from task1.core.runs import check_resume, check_run_folder, failure_metrics, no_space_error, run_dir, task1_command
from task1.core.shortcuts import QuietProfiler
from task1.data.module import DataModule
from task1.io import write_json
from task1.models.system import System

log = logging.getLogger("task1")
# Lightning's advertising: noise in every run's log
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "Tip:" not in r.getMessage())
# `import lightning` gives its logger a console handler of its own, beside the root logger's that Hydra (or the
# user) set up: every line of Lightning's twice. Where the root logger has handlers, they alone print.
if logging.getLogger().handlers:
    for _handler in [h for h in logging.getLogger("lightning").handlers if type(h) is logging.StreamHandler]:
        logging.getLogger("lightning").removeHandler(_handler)
# a deprecation inside Lightning itself, and the advice to use srun that Lightning gives every local run on a
# cluster's login node (task1's SLURM launcher runs its jobs under srun)
# and its advice to sync epoch metrics under DDP, which System has summed over the ranks itself
LIGHTNING_NOISE = (r"(.*LeafSpec|The `srun` command is available on your system but is not used|It is recommended to "
                   r"use `self.log\(.*sync_dist=True)")
warnings.filterwarnings("ignore", message=LIGHTNING_NOISE)


class Built(NamedTuple):
    """What `fit(cfg)` fits: also what scripts/bench.py times."""

    datamodule: DataModule
    system: System
    trainer: L.Trainer
    out: Path  # the run folder
    resume_from: Path | None  # the checkpoint a resumed run goes on from
    predictions: PredictionFigures | None


def build(cfg: DictConfig, callbacks: tuple[Callback, ...] = ()) -> Built:
    """Validate `cfg`, then build the data module, the system and the trainer (with `callbacks` added)."""
    validate(cfg)
    return assemble(cfg, callbacks)


def assemble(cfg: DictConfig, callbacks: tuple[Callback, ...] = ()) -> Built:
    """`build` of a config already checked (task1.core.config.validate)."""
    check_devices(cfg.trainer)
    out, resume_from = run_folder(cfg)
    set_threads_and_seed(cfg)
    datamodule = DataModule(built("data", cfg.data))
    system = build_system(cfg)
    start_from_checkpoint(system, cfg, resume_from)  # a refused resume leaves the folder as it was
    save_config(system, cfg, out)
    callbacks, predictions = make_callbacks(cfg, out, system, datamodule, callbacks)
    trainer = build_trainer(cfg, out, callbacks)
    if (cfg.get("figures") or {}).get("enabled") and trainer.is_global_zero:
        drawer.start()  # it imports matplotlib while the run trains
    return Built(datamodule, system, trainer, out, resume_from, predictions)


def run_folder(cfg: DictConfig) -> tuple[Path, Path | None]:
    """The run folder, made; when resuming, the checkpoint to go on from (a finished run is never trained over)."""
    out = run_dir(cfg)
    resume_from = check_run_folder(out, resuming=cfg.get("resume") is not None)
    out.mkdir(parents=True, exist_ok=True)
    return out, resume_from


def set_threads_and_seed(cfg: DictConfig) -> None:
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)


def build_system(cfg: DictConfig) -> System:
    """The LightningModule for `cfg.model`, `cfg.optimizer` and `cfg.scheduler`."""
    scheduler = OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else {}
    interval, frequency = scheduler.pop("interval", "epoch"), scheduler.pop("frequency", 1)
    loop = cfg.get("loop") or {}  # configs saved before loop=manual existed have none
    return System(
        net=built("model.net", cfg.model.net),
        loss=_plain_partial(built("model.loss", cfg.model.loss)),
        optimizer=built("optimizer", cfg.optimizer),
        scheduler=built("scheduler", scheduler) if scheduler else None,
        loss_reduction=cfg.model.loss_reduction,
        task=cfg.model.task,
        scheduler_interval=interval,
        scheduler_frequency=frequency,
        loop=loop.get("name", "automatic"),
        zero_grad=loop.get("zero_grad", True),
    )


def _plain_partial(fn):
    """Hydra's `_partial_` object re-runs its target-policy check on every call (as long as a whole softmax
    step): the loss, called every step, becomes a plain functools.partial of the target Hydra checked."""
    return partial(fn.func, *fn.args, **fn.keywords) if isinstance(fn, partial) else fn


def save_config(system: System, cfg: DictConfig, out: Path) -> None:
    """The resolved config: in the checkpoints as plain data (no pickled objects: loadable with weights_only),
    and as config_resolved.yaml, exactly what ran."""
    system.hparams["config"] = OmegaConf.to_container(cfg, resolve=True)
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(system.hparams["config"]))


def start_from_checkpoint(system: System, cfg: DictConfig, resume_from: Path | None) -> None:
    """Check the checkpoint a run resumes from (or takes its weights from) before Lightning reads it."""
    init_from = resume_from or cfg.get("ckpt_path")
    if not init_from:
        return
    try:
        checkpoint = load_checkpoint(init_from)
    except Task1Error as e:
        raise (damaged_last(Path(cfg.resume), e) if resume_from else e) from None
    check_compatible(init_from, checkpoint, system)
    changed = []
    if resume_from:
        changed = check_resume(cfg, checkpoint)
    else:  # weights only: a new run, with a fresh optimizer, from epoch 1
        system.load_state_dict(checkpoint["state_dict"])
    log.info("%s from %s (epoch %d, step %d)%s", "resuming" if resume_from else "starting", init_from,
             checkpoint.get("epoch", 0) + 1, checkpoint.get("global_step", 0),
             "; changed: " + ", ".join(changed) if changed else "")


def damaged_last(out: Path, error: Task1Error) -> Task1Error:
    """A resume whose last.ckpt cannot be read (a truncated copy, a disk fault): what is left to go on from. The
    best.ckpt beside it is taken inside an epoch (at validation), so it starts a new run rather than resuming."""
    best, rerun = out / "checkpoints" / "best.ckpt", f"{task1_command()} rerun {out}"
    try:
        epoch = f"epoch {load_checkpoint(best).get('epoch', 0) + 1}"
    except Task1Error:
        return Task1Error(f"resume={out}: {error} No intact checkpoint is left: start the run again with {rerun}")
    return Task1Error(f"resume={out}: {error} The {best} beside it ({epoch}) is intact: train on from its weights "
                      f"in a new run with {rerun} ckpt_path={best}, or start the run again with {rerun}")


def make_callbacks(cfg: DictConfig, out: Path, system: System, datamodule: DataModule,
                   extra: tuple[Callback, ...]) -> tuple[list[Callback], PredictionFigures | None]:
    """The NaN stop, the best and last checkpoints, `extra` (a search trial's pruning: the caller's), the
    prediction figures."""
    monitor, mode = system.monitor
    best = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=monitor, mode=mode,
                           save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
    last = LastCheckpoint(out / "checkpoints" / "last.ckpt", cfg.get("checkpoint_every_n_steps"))
    callbacks, predictions = [FiniteLoss(), best, last, *extra], None
    if uses_ddp(cfg) and not any(isinstance(c, Pruning) for c in extra):
        # every rank takes part in the pruning decision of rank 0, also a rank that Lightning started (it has no
        # trial to report to, so no metric), and any DDP run
        callbacks.append(Pruning(None, None))
    figures = cfg.get("figures") or {"enabled": False}  # configs saved before figures existed have none
    if figures["enabled"] and system.classify:
        predictions = PredictionFigures(out / "figures", datamodule.labels, figures["every_n_epochs"])
        callbacks.append(predictions)
    return callbacks, predictions


def uses_ddp(cfg: DictConfig) -> bool:
    return str(cfg.trainer.get("strategy", "")).startswith("ddp")


def check_devices(trainer: DictConfig) -> None:
    """A GPU asked for where there is none: task1's one line, not Lightning's exception."""
    if str(trainer.get("accelerator")) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise Task1Error(f"trainer.accelerator={trainer.accelerator}: no GPU found: use trainer=cpu or trainer=auto.")


def built(where: str, node, fix: str = "fix its settings") -> object:
    """`instantiate(node)`; what its class raises (`dropout=1.5`) is a Task1Error naming `where` and `fix`."""
    try:
        return instantiate(node)
    except Exception as e:
        cause = e
        while cause.__cause__ is not None:  # Hydra wraps what went wrong
            cause = cause.__cause__
        raise Task1Error(f"{where} ({node['_target_']}) cannot be built: {error_line(cause)}. {fix[0].upper()}"
                         f"{fix[1:]}.") from e


def build_all(path: str, node) -> list:
    """Every class a logger or callbacks node names (task1.core.config.entries), built; one that cannot be built
    (an extra not installed) is a Task1Error naming it."""
    made = []
    for name, entry in entries(node).items():
        store = str(entry.get("tracking_uri") or "")
        if store.startswith("sqlite:///"):  # MLflow's SQLite store: SQLite makes the file, not its folder
            Path(store.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        made.append(built(f"{path}.{name}" if name else path, entry,
                          "install what it needs (MLflow: pip install 'task1[mlflow]'), or fix its settings"))
    return made


def build_trainer(cfg: DictConfig, out: Path, callbacks: list[Callback]) -> L.Trainer:
    """The Trainer with task1's `callbacks`, then the user's (`callbacks=[...]`, `+trainer.callbacks=[...]`),
    and every logger `cfg.logger` names."""
    loggers = build_all("logger", cfg.get("logger"))
    callbacks = [*callbacks, *build_all("callbacks", cfg.get("callbacks")),
                 *build_all("trainer.callbacks", cfg.trainer.get("callbacks"))]
    if uses_ddp(cfg):
        ddp.prepare_ddp_relaunch(out, cfg.get("resume"))
    profiler = {} if cfg.trainer.get("profiler") else {"profiler": QuietProfiler()}
    plugins = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        # task1's launcher owns requeue and resume on SLURM (task1.sweeps.slurm): Lightning's own auto-requeue
        # would write hpc_ckpt files that a later fit and test load in place of the run's weights
        plugins.append(SLURMEnvironment(auto_requeue=False))
        callbacks = [*callbacks, StopOnRequest()]
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, plugins=plugins,
                       default_root_dir=str(out), deterministic=cfg.seed is not None, **profiler)


def summary_table(final: dict) -> str:
    """The final metrics as a small text table: one row per split."""
    columns = [c for c in ("loss", "acc") if any(k.endswith("/" + c) for k in final)]
    lines = ["split  " + "".join(f"{c:>10}" for c in columns)]
    for split in ("train", "val", "test"):
        if f"{split}/loss" in final:
            row = (final.get(f"{split}/{c}", float("nan")) for c in columns)
            # accuracies as fractions, losses in significant digits (a regression's 9.5e-05 is no 0.0001)
            lines.append(f"{split:<7}" + "".join(f"{v:>10.4f}" if c == "acc" else f"{v:>10.4g}"
                                                 for c, v in zip(columns, row, strict=True)))
    return "\n".join(lines)


def fit(cfg: DictConfig, callbacks: tuple[Callback, ...] = ()) -> tuple[dict, System]:
    """Fit, then test, the model of `cfg` (checked: task1.core.config.validate) with `callbacks` added; write
    `metrics.json` into the run folder; return its contents and the trained LightningModule. The figures may
    still be drawing (task1.drawer.settle waits for them). A full disk, before, during or after training, ends in
    task1's one line that says so."""
    try:
        return _fit(cfg, callbacks)
    except OSError as e:  # (one during training is already that line: _fit records it in metrics.json)
        full = no_space_error(e, run_dir(cfg))
        if full is None:
            raise
        raise full from e


def _fit(cfg: DictConfig, callbacks: tuple[Callback, ...]) -> tuple[dict, System]:
    start, origin = time.perf_counter(), provenance()  # before training: the commit the run started from
    datamodule, system, trainer, out, resume_from, predictions = assemble(cfg, callbacks)
    pruning = next((c for c in trainer.callbacks if isinstance(c, Pruning)), None)
    last = next(c for c in trainer.callbacks if isinstance(c, LastCheckpoint))  # counts the time of every start
    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        pruned = pruning is not None and pruning.pruned
        if not pruned:  # a pruned trial is abandoned: the test split stays unseen
            trainer.test(system, datamodule=datamodule, verbose=False)
    except BaseException as e:  # metrics.json says what happened, then the error goes on up
        metrics, error = failure_metrics(e, system.history, cfg.seed, out)
        if trainer.is_global_zero:
            try:
                write_json(out / "metrics.json", {**metrics, "wall_time_s": round(last.wall_time_s, 3)})
            except OSError as write_error:  # the disk is still full: the error raised below says why
                log.error("%s could not be written: %s", out / "metrics.json", error_line(write_error))
        if error is None:
            raise
        raise error from None
    finally:
        ddp.restore()  # the next job in this process starts without this one's process group and environment

    final = final_metrics(system.history, system.last_metrics("test"))  # exact, not Lightning's float32 copies
    # a callback stopped the run (EarlyStopping), or a limit on steps or time: fewer epochs than max_epochs
    stopped_early = not pruned and len(system.history) < trainer.max_epochs
    metrics = run_metrics("pruned" if pruned else "completed", cfg.seed, system, trainer.max_epochs, stopped_early,
                          last.before + time.perf_counter() - start, final, datamodule.data, predictions, origin)
    if pruned or stopped_early:
        log.info("%s after epoch %d of %d", "the search pruned this trial" if pruned else "stopped early",
                 len(system.history), trainer.max_epochs)
    if trainer.world_size > 1:  # every rank says what it ended with: they must agree (metrics are reduced)
        log.info("rank %d/%d final %s", trainer.global_rank, trainer.world_size, json.dumps(final, sort_keys=True))
    if trainer.is_global_zero:
        report_run(out, system.hparams["config"], metrics, trainer.loggers, trainer.global_step)
    return metrics, system


def final_metrics(history: list[dict], test: dict[str, float]) -> dict[str, float]:
    """A run's final metrics: its last epoch's (train, val), then the `test` split's."""
    final = {k: v for k, v in (history[-1] if history else {}).items() if isinstance(v, float)}
    final.update(test)
    return final


def run_metrics(status: str, seed: int | None, system: System, max_epochs: int, stopped_early: bool, seconds: float,
                final: dict, data, predictions: PredictionFigures | None, origin: dict) -> dict:
    """metrics.json of a run that trained to its end (`status` completed, or pruned), with `system.history`; a
    packed member's is built here too (task1.pack.member: DESIGN.md rule 21). `data` is the data set (its
    `true_w`, `true_b` where synthetic), `origin` the run's provenance."""
    history = system.history
    metrics = {"status": status, "seed": seed, "epochs": len(history), "max_epochs": max_epochs,
               "stopped_early": stopped_early, "wall_time_s": round(seconds, 3), "threads": torch.get_num_threads(),
               "final": final, "history": history, "loop": system.loop_record, "provenance": origin}
    if hasattr(system.net, "get_w_b"):  # linear regression: the learned parameters, against the true ones if known
        w, b = system.net.get_w_b()
        metrics.update(w=w.tolist(), b=float(b))
        true_w, true_b = getattr(data, "true_w", None), getattr(data, "true_b", None)
        if true_w is not None:  # synthetic data (data=arrays has no truth to compare with)
            metrics.update(true_w=true_w, true_b=true_b, b_error=true_b - float(b),
                           w_error=[t - v for t, v in zip(true_w, w.tolist(), strict=True)])
    if predictions:
        metrics["per_class_acc"] = predictions.per_class_acc
    return metrics


def report_run(out: Path, config: dict, metrics: dict, loggers: list, global_step: int,
               logger: logging.Logger = log, settled: bool = False) -> None:
    """What a run that trained to its end writes beside its checkpoints: `metrics.json`, its figures, the
    loggers' final record (task1.core.hparams), and its final lines in the log. `config` is the run's resolved
    config (as its checkpoints keep it); `settled`: its prediction figures are on disk already."""
    figures = (config.get("figures") or {}).get("enabled")
    if figures and not settled:  # the prediction figures need the model: on disk before metrics.json says the job
        drawer.settle()  # is over (a restart reuses it); the curves, if lost, are drawn again from metrics.json
    write_json(out / "metrics.json", metrics)
    if figures:
        drawer.draw_run_figures(metrics, out)
    log_final(loggers, config, metrics["final"], global_step, out / "figures")
    logger.info("final metrics (%s)\n%s", out, summary_table(metrics["final"]))
    if "w_error" in metrics:  # as d2l ends 3.2: the learned parameters against the true ones, and the error
        shown = lambda v: "[" + ", ".join(f"{x:.6g}" for x in v) + "]"  # noqa: E731
        logger.info("w %s (true %s, error %s); b %.6g (true %.6g, error %.3g)", shown(metrics["w"]),
                    shown(metrics["true_w"]), shown(metrics["w_error"]), metrics["b"], metrics["true_b"],
                    metrics["b_error"])
