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

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from task1 import Task1Error, drawer
from task1.cli import CONF, compose_conf
from task1.io import hold, write_json
from task1.results import read_run

log = logging.getLogger("task1")
PathLike = str | os.PathLike


def compose(*overrides: str, config_name: str = "config", config_dir: PathLike | Sequence[PathLike] = ()) -> DictConfig:
    """The config `python -m task1.train <overrides>` composes (config_name: `show`, `lr_schedule` for those
    tools), with its `hydra` node: where the run folder goes, the choices and overrides a run records.
    `config_dir`: folders of configs of your own searched after task1's (`--config-dir`), e.g. a model/ of yours."""
    return _compose(CONF, config_name, [*_search_path(config_dir), *overrides])


def _compose(primary: Path, config_name: str, overrides: list[str]) -> DictConfig:
    """Hydra's compose from the config folder `primary`; its mistakes as a Task1Error of one line."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose_conf(overrides, primary, config_name, hydra_node=True)
    except MissingConfigException as e:
        group, _, name = (e.missing_cfg_file or config_name).rpartition("/")
        if not e.options:
            raise Task1Error(f"{e.missing_cfg_file}: no such config in {primary}.") from None
        raise Task1Error(f"{group}={name}: {group} has no option {name}; choose one of {', '.join(e.options)} "
                         f"(or add {group}/{name}.yaml to a config_dir= of yours).") from None
    except (HydraException, OmegaConfBaseException) as e:  # an unknown key, a syntax error: Hydra's words, one line
        lines = [line for line in str(e).splitlines() if line.strip() and not line.startswith(("See ", "\t"))]
        where = f"{e.override}: " if isinstance(e, OverrideParseException) else ""
        raise Task1Error(where + " ".join(lines)) from None


def _search_path(config_dir: PathLike | Sequence[PathLike]) -> list[str]:
    """`config_dir=` as the `hydra.searchpath=[...]` override that `--config-dir` amounts to."""
    from task1.cli import searchpath_override

    folders = [config_dir] if isinstance(config_dir, str | os.PathLike) else list(config_dir)
    for folder in folders:
        if not Path(folder).is_dir():
            raise Task1Error(f"config_dir={folder} is not a folder: pass the folder that holds your config "
                             f"groups (model/, data/, ...).")
    return searchpath_override([f"file://{Path(f).resolve()}" for f in folders])


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


def train(*cfg_or_overrides: DictConfig | str, config_dir: PathLike | Sequence[PathLike] = ()) -> Result:
    """Train a config from `compose` (or Hydra's own compose), or the one these overrides compose (with the
    config groups of your own in `config_dir`, as `compose` takes them)."""
    cfg = _full(cfg_or_overrides, config_dir=config_dir)
    return _train(cfg, _run_folder(cfg, "run"))


def rerun(folder: PathLike, *overrides: str, config_dir: PathLike | Sequence[PathLike] = ()) -> Result:
    """`task1 rerun <folder> [overrides]`: a run trained again from its saved config, into a new run folder;
    overrides that choose a config option (`model=mlp`) compose the run's overrides afresh from task1's configs
    and the run's own config folders (or `config_dir`, which replaces them)."""
    from task1.cli import rerun_main_argv

    given = [*_search_path(config_dir), *overrides]
    flags = [o for o in overrides if o.startswith("-")]
    if flags:
        raise Task1Error(f"{' '.join(flags)}: rerun() takes overrides (key=value); use sweep() for several runs.")
    with _as_found():  # `trust=` joins TASK1_TRUST for the check of the saved config alone
        args = rerun_main_argv(["rerun", str(folder), *given])[1:]
    if args[:1] == ["--config-path"]:  # the run's saved config, as the command line composes it
        cfg = _compose(Path(args[1]), args[3], args[4:])
    else:
        cfg = _compose(CONF, "config", args)
    return _train(cfg, _run_folder(cfg, "run"))


def evaluate(ckpt_path: PathLike, *overrides: str, split: str = "test", out: PathLike | None = None) -> dict:
    """`task1 eval ckpt_path=... [split=val] [overrides]`: the checkpoint's model scored on its run's test (or
    validation) split; writes `<split>.json`, the prediction grid and the confusion matrix into `out` (default
    `<run>/eval/<checkpoint name>/`) and returns the metrics ({"test/loss": ..., "test/acc": ...})."""
    from task1.tools import eval as tool

    path = Path(ckpt_path)
    with _as_found():
        return tool.evaluate(path, list(overrides), split, Path(out) if out else tool.default_out(path))


def sweep(*overrides: str, config_dir: PathLike | Sequence[PathLike] = ()) -> list[Result]:
    """One run per combination of the swept values (`optimizer.lr=0.03,0.1 seed=0,1,2`, Hydra's syntax), one
    after the other into `<paths.output_dir>/multiruns/<date>_<time>/<job>/`, then the sweep report there
    (summary.md, summary.csv, summary.png). Every job's config is checked before the first one trains; a run
    that fails while training (it diverged) is recorded as failed, and the others go on."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as e:
        raise Task1Error(f"{e.override}: {e.message.splitlines()[0]} (Hydra's override syntax: key=a,b,c)") from None
    axes = []
    for o in parsed:
        if o.is_sweep_override() and not o.is_discrete_sweep():
            raise Task1Error(f"{o.input_line}: a sweep here lists its values (a,b,c, choice(...), range(...)).")
        values = o.sweep_string_iterator() if o.is_sweep_override() else [o.get_value_element_as_str()]
        axes.append([f"{o.get_key_element()}={v}" for v in values])
    jobs = [_full(combination, config_dir=config_dir) for combination in itertools.product(*axes)]
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

def _full(given: Sequence[DictConfig | str], config_name: str = "config",
          config_dir: PathLike | Sequence[PathLike] = ()) -> DictConfig:
    """A config with its hydra node: composed from overrides, or a given one (a config without a hydra node, from
    Hydra's compose, gets task1's, with no choices or overrides recorded)."""
    if len(given) == 1 and isinstance(given[0], DictConfig):
        cfg = given[0]
        if config_dir:
            raise Task1Error("config_dir= is for composing: give it to api.compose(..., config_dir=...), whose "
                             "config train() then takes as it is.")
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
    return compose(*given, config_name=config_name, config_dir=config_dir)


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
    task1_log, added = logging.getLogger("task1"), []
    if not task1_log.hasHandlers():
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        added.append((task1_log, console))
    if task1_log.getEffectiveLevel() > logging.INFO:
        task1_log.setLevel(logging.INFO)
    added += [(logging.getLogger(name), file) for name in ("task1", "lightning.pytorch", "lightning.fabric")]
    for logger, handler in added:
        logger.addHandler(handler)
    try:
        yield
    finally:
        # taken off here, not only by _as_found: a logger made during the call (Lightning's, on the first call of
        # a process) is not among those it puts back, and would send the next run's lines into this run's log
        for logger, handler in added:
            logger.removeHandler(handler)
        file.close()


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

