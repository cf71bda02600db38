"""Sweep report: `task1 summarize <sweep folder>`, and the Hydra callback that runs it after every multirun.

One row per job (its overrides, final metrics, wall time, status, and the first line of the error of a failed
job) in `summary.csv` and `summary.md`, and `summary.png`: the chosen metric against each swept parameter. When
several seeds were swept, jobs that differ only in `seed` are also taken together (`summary_seeds.csv`, a second
table in `summary.md`, and the plot shows their means with standard-deviation error bars).
"""

import argparse
import csv
import io
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from task1 import Task1Error, error_line
from task1.cli import exit_on_error
from task1.core.runs import no_space_error
from task1.core.trust import read_saved_overrides, read_saved_yaml
from task1.io import held, holder, natural_key, write_atomic
from task1.results import read_run
from task1.sweeps import seeds

log = logging.getLogger("task1")
SPLITS = ("train", "val", "test")
MODES = {"max": "max", "min": "min", "maximize": "max", "minimize": "min"}  # a study's directions are the long names


def read_jobs(sweep: Path) -> list[dict]:
    """One dict per job folder of a sweep (a folder holding .hydra/overrides.yaml), in job order. Below a folder
    where Hydra recorded the sweep (multirun.yaml), job folders at any depth, named by their relative path
    (task1.reproduce's `<experiment>/seed_<seed>`); elsewhere the folder's own subfolders only."""
    pattern = "**/.hydra/overrides.yaml" if (sweep / "multirun.yaml").is_file() else "*/.hydra/overrides.yaml"
    folders = [p.parent.parent for p in sweep.glob(pattern)]
    folders.sort(key=lambda p: [natural_key(part) for part in p.relative_to(sweep).parts])
    jobs = []
    for folder in folders:
        name = folder.relative_to(sweep).as_posix()
        overrides = read_saved_overrides(folder / ".hydra" / "overrides.yaml")  # data: a Python tag is refused
        run = read_run(folder)  # no metrics.json: killed (or still running) before it could write one: incomplete
        status, error = run.status, run.error
        if status not in ("completed", "pruned") and held(folder):  # running elsewhere now, not lost
            status, error = "in use", f"by {holder(folder) or 'another process'}"
        # +optuna.*: where the jobs of searches before 2026-12 found their trial, not a parameter
        pairs = (o.split("=", 1) for o in overrides if "=" in o and not o.startswith("+optuna."))
        jobs.append({"job": name, "overrides": dict(pairs), "status": status, "final": run.final,
                     "wall_time_s": run.data.get("wall_time_s"), "error": error})
    return jobs


def swept_params(jobs: list[dict]) -> list[str]:
    """The override keys whose value is not the same in every job."""
    keys = sorted({k for j in jobs for k in j["overrides"]}, key=lambda k: min(
        list(j["overrides"]).index(k) for j in jobs if k in j["overrides"]))
    return [k for k in keys if len({j["overrides"].get(k) for j in jobs}) > 1]


def metric_names(jobs: list[dict]) -> list[str]:
    """Final metric names present in any job: train, val, test first, then the rest, alphabetically."""
    names = {k for j in jobs for k in j["final"]}
    order = {s: i for i, s in enumerate(SPLITS)}
    return sorted(names, key=lambda k: (order.get(k.split("/")[0], len(SPLITS)), k))


def pick_metric(jobs: list[dict], metric: str | None) -> str | None:
    """`metric` if given, else val/acc where there is one (classification), else val/loss."""
    if metric:
        return metric
    names = metric_names(jobs)
    return next((m for m in ("val/acc", "val/loss") if m in names), None)


def pick_mode(sweep: Path, metric: str | None, mode: str | None) -> str | None:
    """How to rank by `metric`: `mode` (max or min) when given; else the direction of the Optuna study that
    searched it (optimization_results.yaml); else max for an accuracy and min for a loss, as task1 writes them;
    else None: the report names no best job and says to give a mode."""
    if mode is not None:
        if mode not in MODES:
            raise Task1Error(f"mode={mode} is not allowed: expected max or min (how to rank the jobs by {metric}).")
        return MODES[mode]  # a study's long names too: maximize is max
    path = sweep / "optimization_results.yaml"
    study = read_saved_yaml(path) if path.is_file() else {}
    if isinstance(study, dict) and study.get("optimized_metric") == metric and study.get("direction") in MODES:
        return MODES[study["direction"]]
    if metric:
        return next((m for suffix, m in (("/acc", "max"), ("/loss", "min")) if metric.endswith(suffix)), None)
    return None


def best_job(jobs: list[dict], metric: str, mode: str | None) -> dict | None:
    """The completed job with the best `metric`, highest or lowest as `mode` says (None: no best)."""
    done = [j for j in jobs if j["status"] == "completed" and isinstance(j["final"].get(metric), float)]
    if not done or mode is None:
        return None
    sign = 1 if mode == "max" else -1
    return max(done, key=lambda j: sign * j["final"][metric])


def val_note(jobs: list[dict], metric: str | None) -> str | None:
    """One line when the jobs validated on their test split (data.val_size=0, the book's way: their final val and
    test metrics are the same numbers), which then also chose the best job: how to hold out a validation split."""
    finals = [j["final"] for j in jobs if "val/loss" in j["final"] and "test/loss" in j["final"]]
    if not finals or any(f["val/loss"] != f["test/loss"] or f.get("val/acc") != f.get("test/acc") for f in finals):
        return None
    chosen = f", so the best {metric} is chosen on test examples" if metric and metric.startswith("val/") else ""
    return (f"val/* is the test split here (data.val_size=0, as in the book){chosen}. Hold out a validation split "
            f"with data.val_size=5000.")


def _rows(jobs: list[dict], params: list[str], metrics: list[str]) -> tuple[list[str], list[list[Any]]]:
    header = ["job", "status", *params, *metrics, "wall_time_s", "overrides", "error"]
    rows = [[j["job"], j["status"], *(j["overrides"].get(p, "") for p in params),
             *(j["final"].get(m, "") for m in metrics), j["wall_time_s"] if j["wall_time_s"] is not None else "",
             " ".join(f"{k}={v}" for k, v in j["overrides"].items()), j["error"]] for j in jobs]
    return header, rows


def _short(v: Any) -> str:
    """A value as a table or a legend shows it: a swept 0.08471801418819976 reads better as 0.08472."""
    if isinstance(v, str) and _as_float(v) is not None and not v.isdigit():
        v = float(v)
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _cell(v: Any) -> str:
    return _short(v).replace("|", "\\|").replace("\n", " ")


def markdown(sweep: Path, jobs: list[dict], params: list[str], metric: str | None, mode: str | None) -> str:
    """The report as Markdown: counts, the overrides every job shares, the best job, the table, the plot, and
    the table over seeds when several were swept."""
    header, rows = _rows(jobs, params, metric_names(jobs))
    keep = [i for i, h in enumerate(header) if h != "overrides"]  # the swept ones have their own columns
    counts = {s: sum(j["status"] == s for j in jobs) for s in ("completed", "pruned", "failed", "interrupted",
                                                                       "in use", "incomplete")}
    lines = [f"# Sweep {sweep}", "", f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
    shared = [f"{k}={v}" for k, v in jobs[0]["overrides"].items() if k not in params]
    if shared:
        lines.append(f"\nEvery job: `{' '.join(shared)}`")
    best = best_job(jobs, metric, mode) if metric else None
    if best:
        swept = " ".join(f"{k}={best['overrides'][k]}" for k in params if k in best["overrides"])
        word = "highest" if mode == "max" else "lowest"
        lines.append(f"\nBest {metric} ({word}): **{best['final'][metric]:.4f}**, job {best['job']} ({swept})")
    elif metric and mode is None:
        lines.append(f"\nNo best job: whether a higher {metric} is better is not known here; give the mode "
                     f"(task1 summarize <sweep> --mode max|min, or hydra.callbacks.sweep_report.mode).")
    note = val_note(jobs, metric)
    if note:
        lines.append(f"\nNote: {note}")
    lines += ["", "| " + " | ".join(header[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    lines += ["| " + " | ".join(_cell(row[i]) for i in keep) + " |" for row in rows]
    if metric and params:
        lines += ["", f"![{metric} against each swept parameter](summary.png)"]
    if seeds.seeds_swept(jobs):
        grouped = [p for p in params if p != seeds.SEED]
        lines += seeds.markdown(seeds.seed_groups(jobs, metric_names(jobs)), grouped, metric_names(jobs), metric, mode)
    return "\n".join(lines) + "\n"


def _as_float(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


def _order(v: str) -> tuple:
    """Numbers by value (0.0123 before 0.0847 before 0.3), then other values in natural order."""
    number = _as_float(v)
    return (0, number, []) if number is not None else (1, 0.0, natural_key(v))


def _scale(ax, xs: list[float]) -> None:
    """A numeric axis: log-spaced values (learning rates, weight decays) on a log axis, symlog when 0 is among
    them; a tick on each value only for a few round ones (a grid), else the axis's own ticks."""
    positive = sorted({x for x in xs if x > 0})
    if min(xs) >= 0 and len(positive) >= 2 and positive[-1] / positive[0] >= 10:
        if min(xs) == 0:
            ax.set_xscale("symlog", linthresh=positive[0], linscale=0.5)
        else:
            ax.set_xscale("log")
    values = sorted(set(xs))
    if len(values) <= 8 and all(float(f"{x:.2g}") == x for x in values):
        ax.minorticks_off()
        ax.set_xticks(values, [f"{x:g}" for x in values], rotation=30 if len(values) > 4 else 0)


def figure(jobs: list[dict], params: list[str], metric: str, groups: list[dict] | None = None):
    """summary.png: `metric` of every completed job against each swept parameter, one panel each, coloured by
    another swept parameter with few values (its legend names them); with seed `groups`, also each group's mean
    with its standard deviation as an error bar."""
    from matplotlib.figure import Figure  # no pyplot: a report, also on a machine without a display

    # a pruned trial's metric is that of its last epoch, not a result: left out, as from the best job
    done = [j for j in jobs if j["status"] == "completed" and isinstance(j["final"].get(metric), float)]
    means = [g for g in groups or [] if g["stats"].get(metric, {}).get("mean") is not None]
    fig = Figure(figsize=(4 * len(params), 3.4))
    for ax, p in zip(fig.subplots(1, len(params), squeeze=False)[0], params, strict=True):
        pairs = [(j["overrides"].get(p, ""), j["final"][metric]) for j in done]
        xs = [_as_float(x) for x, _ in pairs]
        numeric = pairs and all(x is not None for x in xs)
        labels = sorted({x for x, _ in pairs}, key=natural_key)
        where = _as_float if numeric else labels.index  # a numeric parameter on its scale, a choice per column
        hue = next((q for q in params if q != p and 2 <= len({j["overrides"].get(q) for j in done}) <= 10), None)
        shades = sorted({j["overrides"].get(hue, "") for j in done}, key=_order) if hue else [None]
        for i, shade in enumerate(shades):
            own = [(x, y) for (x, y), j in zip(pairs, done, strict=True) if hue is None or
                   j["overrides"].get(hue, "") == shade]
            ax.scatter([where(x) for x, _ in own], [y for _, y in own], alpha=0.35 if means else None,
                       color=f"C{i % 10}" if hue else None, label=f"{hue}={_short(shade)}" if hue else
                       "one job" if means else None)
        if means:
            stats = [g["stats"][metric] for g in means]
            ax.errorbar([where(g["overrides"].get(p, "")) for g in means], [s["mean"] for s in stats],
                        yerr=[s["std"] or 0.0 for s in stats], fmt="o", color="black", capsize=4,
                        label="mean ± std over seeds")
        if hue or means:
            ax.legend(fontsize=7)
        if numeric:
            _scale(ax, xs)
        else:
            ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_xlabel(p)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric}: {len(done)} of {len(jobs)} jobs" + (f", {len(means)} groups of seeds" if means else ""))
    fig.tight_layout()
    return fig


def plot(jobs: list[dict], params: list[str], metric: str, path: Path, groups: list[dict] | None = None) -> None:
    """summary.png (see `figure`), written atomically."""
    buf = io.BytesIO()
    figure(jobs, params, metric, groups).savefig(buf, format="png", dpi=100)
    write_atomic(path, buf.getvalue())


def _write_csv(path: Path, rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    write_atomic(path, buf.getvalue())


def summarize(sweep: str | os.PathLike, metric: str | None = None, mode: str | None = None) -> list[dict]:
    """Write summary.csv, summary.md, (when something was swept) summary.png and (when seeds were)
    summary_seeds.csv into `sweep`, ranked by `metric` as `mode` says (see `pick_mode`); return the jobs. An
    unknown `metric` is refused before anything is written."""
    sweep = Path(sweep)
    jobs = read_jobs(sweep)
    if not jobs:
        raise Task1Error(f"{sweep} holds no job folders (<job>/.hydra/overrides.yaml): pass the folder of a "
                         f"multirun, e.g. outputs/multiruns/<date>_<time>")
    params, names = swept_params(jobs), metric_names(jobs)
    if metric and names and metric not in names:
        raise Task1Error(f"metric {metric} is not among the jobs' metrics: choose one of {', '.join(names)}. "
                         f"The report was left as it was.")
    metric = pick_metric(jobs, metric)
    mode = pick_mode(sweep, metric, mode)
    header, rows = _rows(jobs, params, names)
    _write_csv(sweep / "summary.csv", [header, *rows])
    write_atomic(sweep / "summary.md", markdown(sweep, jobs, params, metric, mode))
    groups, panels = None, params
    if seeds.seeds_swept(jobs):
        others = [p for p in params if p != seeds.SEED]
        groups = seeds.seed_groups(jobs, names)
        _write_csv(sweep / "summary_seeds.csv", seeds.csv_rows(groups, others, names))
        panels, groups = (others, groups) if others else (params, None)  # only seeds swept: against the seed
    if metric and params:
        plot(jobs, panels, metric, sweep / "summary.png", groups)
    best = best_job(jobs, metric, mode) if metric else None
    failed = sum(j["status"] != "completed" for j in jobs)
    log.info("sweep report: %s (%d jobs, %d not completed%s)", sweep / "summary.md", len(jobs), failed,
             f"; best {metric} {best['final'][metric]:.4f}: job {best['job']}" if best else "")
    note = val_note(jobs, metric)
    if note:
        log.info("note: %s", note)
    return jobs


class SweepReport(Callback):
    """Hydra callback: the sweep report, written when a multirun ends (also when some of its jobs failed)."""

    def __init__(self, metric: str | None = None, mode: str | None = None):
        self.metric, self.mode = metric, mode

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        metric = self.metric or config.get("optimized_metric")
        sweep = Path(config.hydra.sweep.dir)
        files = ["summary.csv", "summary.md", "summary_seeds.csv", "summary.png"]  # as summarize writes them

        def stamp(name: str) -> int | None:  # when it was last written (None: no such file)
            return (sweep / name).stat().st_mtime_ns if (sweep / name).exists() else None

        before = {name: stamp(name) for name in files}
        try:
            summarize(sweep, metric, self.mode)
        except Exception as e:  # the jobs' results are on disk either way: `task1 summarize` can retry
            full = no_space_error(e, sweep)
            if full is None and not isinstance(e, OSError):  # not the file system's doing: its traceback
                log.exception("could not write the sweep report for %s", sweep)
                return
            # a write error names no file: the first one not written anew (each is whole: written atomically)
            name = next((n for n in files if stamp(n) == before[n]  # summary_seeds.csv: where seeds were swept
                         and (n != files[2] or stamp(n) is not None)), "the report")
            why = str(full).partition(" while writing")[0] if full else error_line(e)
            log.error("could not write %s: %s (the files written before it are kept; to write the report again: "
                      "task1 summarize %s)", sweep / name, why, sweep)


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="task1 summarize", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="the multirun folder, e.g. outputs/multiruns/2026-01-01_12-00-00_000000")
    parser.add_argument("--metric", help="the metric to plot and rank by (default: val/acc, or val/loss)")
    parser.add_argument("--mode", choices=["max", "min"], help="higher or lower is better (default: the study's "
                        "direction, else max for an accuracy and min for a loss)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summarize(args.sweep, args.metric, args.mode)


if __name__ == "__main__":
    main()
