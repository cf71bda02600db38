"""task1 from Python, for notebooks and scripts: what the command line does, as calls.

    from task1 import api
    run = api.train("model=mlp", "trainer.max_epochs=3")       # or api.train(api.compose("model=mlp", ...))
    run.final["test/acc"], run.history, run.folder, run.model  # metrics.json, the run folder, the LightningModule
    run.show()                                                 # its figures, inline in Jupyter
    runs = api.sweep("optimizer.lr=0.03,0.1", "seed=0,1")     # one run per combination, and the sweep report
    api.compare(runs, group_seeds=True)                        # a table of the runs, their curves overlaid

A run lands in a folder laid out as the command line's (`<paths.output_dir>/runs/<date>_<time>/`: .hydra/,
config_resolved.yaml, metrics.json, checkpoints/, figures/, train.log), with the same checks, held by this
process while it trains; a mistake raises task1's `Task1Error` (one line) instead of exiting. Each call leaves
the process as it found it: torch threads, deterministic flags, random generators, environment variables,
signal handlers, logging handlers and levels, warning filters, and Hydra's own state.
"""

import contextlib
import copy
import itertools
import logging
import os
import random
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig, OmegaConf, open_dict

from task1 import Task1Error, drawer
from task1.cli import CONF
from task1.io import hold, write_json
from task1.results import read_run

log = logging.getLogger("task1")


def compose(*overrides: str, config_name: str = "config") -> DictConfig:
    """The config `python -m task1.train <overrides>` composes (config_name: `show`, `lr_schedule` for those
    tools), with its `hydra` node: where the run folder goes, the choices and overrides a run records."""
    backup = get_gh_backup()  # a notebook may be inside a Hydra initialize() of its own
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), job_name="train", version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    finally:
        restore_gh_from_backup(backup)


@dataclass
class Result:
    """A run: its folder, its metrics.json, and the trained LightningModule (None for a run read back by `load`)."""

    folder: Path
    metrics: dict
    model: Any = None

    @property
    def status(self) -> str:
        return self.metrics.get("status", "incomplete")

    @property
    def final(self) -> dict:
        return self.metrics.get("final", {})

    @property
    def history(self) -> list[dict]:
        return self.metrics.get("history", [])

    def show(self, *names: str) -> list[Path]:
        """Its figures (all, or those whose names start with one of `names`: "curves", "test_confusion")."""
        return show(self.folder, *names)

    def __repr__(self) -> str:
        shown = [self.status, f"{self.metrics.get('epochs', 0)} epochs",
                 *(f"{k} {v:.4f}" for k, v in self.final.items() if k.split("/")[0] in ("val", "test"))]
        return f"Result({self.folder}, {', '.join(shown)})"


def load(folder: str | os.PathLike) -> Result:
    """A finished run (of the command line or of `train`) read back from its folder."""
    run = read_run(folder)
    if not run.data:
        raise Task1Error(f"{folder} holds no metrics.json: pass the folder of a run that has ended.")
    return Result(run.folder, run.data)


def train(*cfg_or_overrides: DictConfig | str) -> Result:
    """Train a config from `compose` (or Hydra's own compose), or the one these overrides compose."""
    cfg = _full(cfg_or_overrides)
    return _train(cfg, _run_folder(cfg, "run"))


def sweep(*overrides: str) -> list[Result]:
    """One run per combination of the swept values (`optimizer.lr=0.03,0.1 seed=0,1,2`, Hydra's syntax), one
    after the other into `<paths.output_dir>/multiruns/<date>_<time>/<job>/`, then the sweep report there
    (summary.md, summary.csv, summary.png). Every job's config is checked before the first one trains; a run
    that fails while training (it diverged) is recorded as failed, and the others go on."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    axes = []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.is_sweep_override() and not o.is_discrete_sweep():
            raise Task1Error(f"{o.input_line}: a sweep here lists its values (a,b,c, choice(...), range(...)).")
        values = o.sweep_string_iterator() if o.is_sweep_override() else [o.get_value_element_as_str()]
        axes.append([f"{o.get_key_element()}={v}" for v in values])
    jobs = [_full(combination) for combination in itertools.product(*axes)]
    folder = _run_folder(jobs[0], "sweep")
    for cfg in jobs:  # a typo in one job ends the sweep before anything trains
        with _job(cfg, folder) as task:
            _validate(task)
    results = []
    for number, cfg in enumerate(jobs):
        try:
            results.append(_train(cfg, folder / str(number)))
        except Task1Error as e:  # the run recorded why in its metrics.json; the sweep goes on
            log.error("job %d failed: %s", number, e)
            results.append(_failed(cfg, folder / str(number), e))
    from task1.sweeps.report import summarize

    with _as_found():
        summarize(folder, jobs[0].get("optimized_metric"))
    return results


@dataclass
class Comparison:
    """Runs side by side: what differs between them and their final metrics; their curves in one figure."""

    runs: list[Result]
    curves: Path

    def table(self) -> str:
        """A Markdown table: one row per run, the overrides that differ, the final metrics."""
        from task1.tools.curves import run_label, shorten

        labels = shorten({run_label(r.folder, r.folder.parent) or str(r.folder): r for r in self.runs})
        keys = [k for k in ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc")
                if any(k in r.final for r in self.runs)]
        lines = ["| run | status | epochs | " + " | ".join(keys) + " |", "|---" * (len(keys) + 3) + "|"]
        for label, r in labels.items():
            cells = [f"{r.final[k]:.4f}" if k in r.final else "" for k in keys]
            lines.append(f"| {label} | {r.status} | {r.metrics.get('epochs', '')} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def _ipython_display_(self) -> None:
        from IPython.display import Image, Markdown, display

        display(Markdown(self.table()), Image(filename=str(self.curves)))

    def __str__(self) -> str:
        return f"{self.table()}\n\ncurves: {self.curves}"


def compare(runs: Sequence[Result | str | os.PathLike], group_seeds: bool = False,
            out: str | os.PathLike | None = None) -> Comparison:
    """Compare runs (results, or run folders): a table, and their learning curves overlaid in `out` (default
    `curves.png` in the folder that holds them all). With `group_seeds`, runs that differ only in `seed` are one
    mean curve in a band of one standard deviation, as `task1.curves --group-seeds` draws them."""
    from task1.tools.curves import overlay

    results = [r if isinstance(r, Result) else load(r) for r in runs]
    if not results:
        raise Task1Error("compare: no runs given.")
    common = Path(os.path.commonpath([r.folder.resolve() for r in results]))
    path = overlay([r.folder for r in results], Path(out) if out else common / "curves.png", group_seeds)
    return Comparison(results, path)


def show(run: Result | str | os.PathLike, *names: str) -> list[Path]:
    """Show a run's figures (all of `<run>/figures/`, or those whose names start with `names`) inline in Jupyter;
    return their paths (elsewhere only that)."""
    folder = run.folder if isinstance(run, Result) else Path(run)
    paths = [p for p in sorted((folder / "figures").glob("*.png")) if not names or p.stem.startswith(names)]
    _display(paths)
    return paths


def show_data(*overrides: str) -> Path:
    """`task1 show <overrides>`: examples of the data with their labels; the PNG shown and returned."""
    from task1.tools.show import show as draw

    cfg = _full(overrides, "show")
    with _job(cfg, _run_folder(cfg, "run")) as task:
        path = draw(task)
    _display([path])
    return path


def lr_schedule(*overrides: str) -> list[float]:
    """`task1 lr-schedule <overrides>`: the learning rate of every optimizer step of that run, printed,
    plotted (shown inline) and returned."""
    from task1.tools.lr_schedule import lr_schedule as schedule

    cfg = _full(overrides, "lr_schedule")
    folder = _run_folder(cfg, "run")
    with _job(cfg, folder) as task:
        lrs = schedule(task)
    _display([folder / "lr_schedule.png"])
    return lrs


# -- how a call becomes a run --------------------------------------------------------------------------------------

def _full(given: Sequence[DictConfig | str], config_name: str = "config") -> DictConfig:
    """A config with its hydra node: composed from overrides, or a given one (a config without a hydra node, from
    Hydra's compose, gets task1's, with no choices or overrides recorded)."""
    if len(given) == 1 and isinstance(given[0], DictConfig):
        cfg = given[0]
        if "hydra" in cfg:
            return copy.deepcopy(cfg)
        full = compose(config_name=config_name)
        with open_dict(full):
            for key in [k for k in full if k != "hydra"]:
                del full[key]
            full.merge_with(cfg)
            full.hydra.runtime.choices, full.hydra.overrides.task = {}, []
        return full
    if not all(isinstance(o, str) for o in given):
        raise Task1Error("give train() one config (api.compose(...)), or overrides as strings (\"model=mlp\").")
    return compose(*given, config_name=config_name)


def _run_folder(cfg: DictConfig, kind: str) -> Path:
    """Where Hydra would put this run (`hydra.run.dir`) or sweep (`hydra.sweep.dir`), resolved afresh (each call
    a new ${now:...})."""
    fresh = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    return Path(str(OmegaConf.select(fresh, f"hydra.{kind}.dir"))).absolute()


@contextlib.contextmanager
def _job(cfg: DictConfig, out: Path) -> Iterator[DictConfig]:
    """Inside: Hydra's state as in a job running in `out` (`${hydra:runtime.output_dir}` resolves to it, the
    choices are Hydra's), and the process's state saved; yields the config without its hydra node."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.hydra.run.dir = cfg.hydra.runtime.output_dir = str(out)
    with _as_found():
        HydraConfig.instance().set_config(cfg)
        task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        yield task


def _validate(task: DictConfig) -> None:
    from task1.core.config import validate

    validate(task)


def _train(cfg: DictConfig, out: Path) -> Result:
    """Train `cfg` into `out` as `python -m task1.train` would: checked first (a mistake leaves no folder), then
    the folder held, .hydra/ and train.log written, fitted and tested."""
    with _job(cfg, out) as task:
        _validate(task)
        with hold(out), _logged_to(out / "train.log"):
            hydra_dir = out / ".hydra"
            hydra_dir.mkdir(exist_ok=True)
            OmegaConf.save(task, hydra_dir / "config.yaml")
            OmegaConf.save(OmegaConf.masked_copy(HydraConfig.instance().cfg, "hydra"), hydra_dir / "hydra.yaml")
            OmegaConf.save(HydraConfig.get().overrides.task, hydra_dir / "overrides.yaml")
            from task1.core.build import LIGHTNING_NOISE, fit

            warnings.filterwarnings("ignore", message=LIGHTNING_NOISE)  # (the filters are put back after)
            metrics, system = fit(task)
            drawer.settle()  # the run's figures, drawn by a process of their own, on disk before it returns
    return Result(out, metrics, system)


def _failed(cfg: DictConfig, out: Path, error: Task1Error) -> Result:
    """A sweep's job that raised: its metrics.json (written by the run, or here when it stopped before fitting)."""
    from task1.core.runs import failure_metrics

    if (out / "metrics.json").is_file():
        return load(out)
    metrics, _ = failure_metrics(error, [], cfg.get("seed"), out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    return Result(out, metrics)


@contextlib.contextmanager
def _logged_to(path: Path) -> Iterator[None]:
    """task1's log (and Lightning's) into the run's train.log, as Hydra writes it for the command line; task1's
    lines also on stdout when nothing else would show them (a notebook without logging set up)."""
    file = logging.FileHandler(path)
    file.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    task1_log = logging.getLogger("task1")
    if not task1_log.hasHandlers():
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        task1_log.addHandler(console)
    if task1_log.getEffectiveLevel() > logging.INFO:
        task1_log.setLevel(logging.INFO)
    for name in ("task1", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).addHandler(file)
    try:
        yield
    finally:
        file.close()  # the handlers and levels themselves are put back by _as_found


@contextlib.contextmanager
def _as_found() -> Iterator[None]:
    """Put back what training changes in the process: torch's threads and determinism flags, the random
    generators, environment variables (PL_GLOBAL_SEED, CUBLAS_WORKSPACE_CONFIG), signal handlers (Lightning's
    SIGINT and SIGTERM), every logger's handlers, filters and level, warning filters, and Hydra's job config."""
    import numpy as np
    import torch

    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    logs = [(lg, lg.level, list(lg.handlers), list(lg.filters), lg.propagate, lg.disabled) for lg in loggers]
    environ = dict(os.environ)
    threads = torch.get_num_threads()
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    generators = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    hydra_cfg = HydraConfig.instance().cfg
    try:
        with warnings.catch_warnings():
            yield
    finally:
        HydraConfig.instance().cfg = hydra_cfg
        for s, handler in signals.items():
            if signal.getsignal(s) is not handler:
                signal.signal(s, handler)
        random.setstate(generators[0])
        np.random.set_state(generators[1])
        torch.random.set_rng_state(generators[2])
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags[2:]
        torch.set_num_threads(threads)
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update(environ)
        for lg, level, handlers, filters, propagate, disabled in logs:
            lg.setLevel(level)
            lg.handlers[:], lg.filters[:] = handlers, filters
            lg.propagate, lg.disabled = propagate, disabled


def _display(paths: list[Path]) -> None:
    """PNGs inline, where IPython runs this (a notebook); nothing elsewhere."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    if not shell:
        return
    from IPython.display import Image, display

    for path in paths:
        display(Image(filename=str(path)))

