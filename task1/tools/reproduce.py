"""Reproduce the book's reported runs over several seeds and judge each against what the book printed.

    task1 reproduce                                   # every conf/experiment/*.yaml, seeds 0,1,2
    task1 reproduce --experiments d2l_3_2_linear_scratch,d2l_3_9_mlp_scratch --seeds 0,1,2,3,4
    task1 reproduce trainer=gpu                       # key=value overrides go to every run
    task1 reproduce paths.data_dir=/datasets          # the data elsewhere (or TASK1_DATA_DIR=/datasets)

The seeds are swept by Hydra's multirun (`python -m task1.train -m experiment=... seed=...`), one run folder per
experiment and seed under `<out>/runs/<experiment>/seed_<seed>/` (`<out>`: `<paths.output_dir>/reproduce/<date>`).
The table goes to stdout, `<out>/reproduce.md` and `<out>/reproduce.json`; the exit status is 1 when any row fails.
Only completed runs are judged: a seed that diverged, was stopped or never ran is named in its experiment's row,
which then fails, and every other row is still judged.

A row passes when the book's final-epoch figure lies inside our range over seeds, widened by a stated tolerance:
- test accuracy: [min - 0.02, max + 0.02] (test accuracy moves by 0.02-0.03 between epochs and runs);
- learned w and b: [min - 0.01, max + 0.01];
- loss of linear regression: the book's figure is a mean of squared residuals over n examples (n = 1000 in 3.2,
  one mini-batch of 10 in 3.3), so it scatters like chi2(n)/n around the per-example loss; the band is
  [min * q(0.005), max * q(0.995)] with q the quantiles of chi2(n)/n (Wilson-Hilferty);
- d2l-zh's runs print no figures but assert, after 10 epochs, train loss < 0.5 and train and test accuracy
  in (0.7, 1]: every seed must satisfy them.
"""

import argparse
import math
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from task1 import Task1Error, first_line
from task1.cli import CONF, exit_on_error, paths
from task1.io import natural_key, read_json, write_atomic, write_json
from task1.results import read_run
from task1.sweeps.seeds import mean_std

EXPERIMENTS = CONF / "experiment"
ACC_TOL, PARAM_TOL, LOSS_P = 0.02, 0.01, 0.99


def available() -> list[str]:
    """The experiment configs in conf/experiment/, in the book's order."""
    return sorted((p.stem for p in EXPERIMENTS.glob("*.yaml")), key=natural_key)


def chi2_ratio(n: int, p: float) -> float:
    """The p-quantile of chi2(n) / n, by the Wilson-Hilferty approximation (within 1% for n >= 10)."""
    a = 2 / (9 * n)
    return (1 - a + statistics.NormalDist().inv_cdf(p) * math.sqrt(a)) ** 3


def sweep(experiments: list[str], seeds: list[int], runs: Path, overrides: list[str]) -> int:
    """Run every experiment with every seed as one Hydra multirun; return its exit status."""
    cmd = [sys.executable, "-m", "task1.train", "-m", f"experiment={','.join(experiments)}",
           f"seed={','.join(map(str, seeds))}", f"hydra.sweep.dir={runs}",
           "hydra.sweep.subdir=${hydra.runtime.choices.experiment}/seed_${seed}", *overrides]
    print("+ " + " ".join(cmd[1:]), flush=True)
    return subprocess.run(cmd).returncode


def _stats(values: list[float]) -> dict:
    mean, std = mean_std(values)
    return {"values": values, "mean": mean, "min": min(values), "max": max(values), "std": std or 0.0}


def _row(metric: str, reported, per_epoch: list[list[float]], final: list[float], band, passed: bool | None,
         fmt: str) -> dict:
    """One table row: the book's figure, ours over seeds (per epoch and final), the band and the verdict."""
    epochs = [statistics.fmean(e) for e in zip(*per_epoch, strict=True)] if per_epoch else []
    return {"metric": metric, "reported": reported, "ours_per_epoch_mean": epochs,
            "ours_final": _stats(final) if final else None, "band": band, "passed": passed, "fmt": fmt}


def judge(reported: dict, metrics: list[dict]) -> list[dict]:
    """The rows of one experiment from its reported figures and the metrics.json of each seed's run."""
    def hist(key: str) -> list[list[float]]:  # per seed, per epoch
        return [[h[key] for h in m["history"]] for m in metrics]

    def final(key: str) -> list[float]:  # per seed
        return [m["final"][key] for m in metrics]

    kind, rows = reported["kind"], []
    if kind == "classification":
        acc = final("test/acc")
        band = [min(acc) - ACC_TOL, max(acc) + ACC_TOL]
        rows.append(_row("test acc", reported["test_acc"], hist("val/acc"), acc, band,
                         band[0] <= reported["test_acc"][-1] <= band[1], ".3f"))
        rows.append(_row("train acc", reported["train_acc"], hist("train/acc"), final("train/acc"), None, None, ".3f"))
        if "loss" in reported:
            rows.append(_row("train loss", reported["loss"], hist("train/loss"), final("train/loss"), None, None,
                             ".4f"))
    elif kind == "regression":
        loss, n = final("val/loss"), reported["loss_examples"]
        band = [min(loss) * chi2_ratio(n, (1 - LOSS_P) / 2), max(loss) * chi2_ratio(n, (1 + LOSS_P) / 2)]
        rows.append(_row("loss", reported["loss"], hist("val/loss"), loss, band,
                         band[0] <= reported["loss"][-1] <= band[1], ".3g"))
        learned = {f"w[{i}]": (w, [m["w"][i] for m in metrics]) for i, w in enumerate(reported["w"])}
        learned["b"] = (reported["b"], [m["b"] for m in metrics])
        for name, (value, ours) in learned.items():
            band = [min(ours) - PARAM_TOL, max(ours) + PARAM_TOL]
            rows.append(_row(name, value, [], ours, band, band[0] <= value <= band[1], ".4f"))
    elif kind == "asserts":  # d2l-zh's train_ch3: checked on every seed
        for metric, key, lo, hi in (("train loss", "train/loss", None, reported["train_loss_below"]),
                                    ("train acc", "train/acc", reported["train_acc_above"], 1.0),
                                    ("test acc", "test/acc", reported["test_acc_above"], 1.0)):
            values = final(key)
            ok = all(v < hi if lo is None else lo < v <= hi for v in values)
            per_epoch = hist("val/acc" if key == "test/acc" else key)
            rows.append(_row(metric, f"< {hi}" if lo is None else f"> {lo}", per_epoch, values, [lo, hi], ok,
                             ".3f"))
    else:
        raise ValueError(f"reported.kind={kind!r}: expected classification, regression or asserts")
    return rows


def why_not_completed(metrics: dict | None) -> str | None:
    """None for a completed run; else why it did not complete, in a few words ("diverged at epoch 3")."""
    if metrics is None:
        return "no metrics.json (not run, or killed)"
    status, error = metrics.get("status"), str(metrics.get("error") or "")
    if status == "completed" and metrics.get("final"):
        return None
    if error.startswith("Training diverged"):
        epoch = re.search(r"in epoch (\d+)", error)
        return f"diverged at epoch {epoch.group(1)}" if epoch else "diverged"
    if status == "interrupted":
        return f"interrupted in epoch {metrics.get('epochs', 0) + 1}"
    return f"{status or 'unfinished'}: {first_line(error)[:80]}" if error else (status or "unfinished")


def collect(experiments: list[str], seeds: list[int], runs: Path) -> list[dict]:
    """Judge every experiment from its completed runs; a run missing or not completed fails its experiment."""
    results = []
    for name in experiments:
        reported = OmegaConf.to_container(OmegaConf.load(EXPERIMENTS / f"{name}.yaml").reported)
        folders = {s: runs / name / f"seed_{s}" for s in seeds}
        found = {s: read_run(f).data or None for s, f in folders.items()}
        why = {s: why_not_completed(m) for s, m in found.items()}
        metrics = [m for s, m in found.items() if why[s] is None]
        not_completed = [{"seed": s, "run": str(folders[s]), "why": w} for s, w in why.items() if w is not None]
        rows = judge(reported, metrics) if metrics else []
        entry = {"experiment": name, "source": reported["source"], "runs": [str(f) for f in folders.values()],
                 "completed": len(metrics), "not_completed": not_completed,
                 "missing_runs": [str(folders[s]) for s, m in found.items() if m is None], "rows": rows,
                 "passed": not not_completed and all(r["passed"] is not False for r in rows)}
        if metrics and "w" in metrics[0]:  # linear regression: learned against true parameters, as the book shows
            entry["parameters"] = {k: [m[k] for m in metrics] for k in ("w", "b", "true_w", "true_b", "w_error",
                                                                          "b_error")}
        results.append(entry)
    return results


def _fmt(value, fmt: str) -> str:
    if isinstance(value, list):
        return " ".join(_fmt(v, fmt) for v in value)
    return format(value, fmt) if isinstance(value, (int, float)) else str(value)


def markdown(results: list[dict], seeds: list[int], command: str) -> str:
    """The results as a Markdown table, with the learned parameters of linear regression below it."""
    n = len(seeds)
    lines = [f"`{command}` (seeds {', '.join(map(str, seeds))})", "",
             f"| experiment | source | metric | reported per epoch | ours per epoch, mean of {n} | "
             f"ours final, mean ± std | min – max | band | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        rows = res["rows"] or [{"metric": "-", "reported": "-", "ours_per_epoch_mean": [], "ours_final": None,
                                "band": None, "passed": False, "fmt": ""}]
        for i, r in enumerate(rows):
            f, s = r["fmt"], r["ours_final"]
            verdict = {True: "pass", False: "**FAIL**", None: ""}[r["passed"]]
            if i == 0 and res["not_completed"]:
                seeds_why = "; ".join(f"seed {x['seed']}: {x['why']}" for x in res["not_completed"])
                verdict = f"**FAIL** ({res['completed']} of {n} completed; {seeds_why})"
            lo, hi = r["band"] or (None, None)
            band = "" if hi is None else f"< {_fmt(hi, f)}" if lo is None else f"[{_fmt(lo, f)}, {_fmt(hi, f)}]"
            lines.append("| " + " | ".join([
                res["experiment"] if i == 0 else "", res["source"] if i == 0 else "", r["metric"],
                _fmt(r["reported"], f), _fmt(r["ours_per_epoch_mean"], f),
                f"{_fmt(s['mean'], f)} ± {_fmt(s['std'], '.2g')}" if s else "",
                f"{_fmt(s['min'], f)} – {_fmt(s['max'], f)}" if s else "", band, verdict]) + " |")
    params = [r for r in results if "parameters" in r]
    if params:
        lines += ["", f"Learned parameters of linear regression, mean of {n} seeds, against the true ones:", "",
                  "| experiment | w | b | true w | true b | error in w (true - learned) | error in b |",
                  "|---|---|---|---|---|---|---|"]
        for res in params:
            p = res["parameters"]
            w, w_error = ([statistics.fmean(v) for v in zip(*p[k], strict=True)] for k in ("w", "w_error"))
            lines.append(f"| {res['experiment']} | {_fmt(w, '.4f')} | {statistics.fmean(p['b']):.4f} | "
                         f"{_fmt(p['true_w'][0], 'g')} | {p['true_b'][0]:g} | {_fmt(w_error, '.1e')} | "
                         f"{statistics.fmean(p['b_error']):.1e} |")
    return "\n".join(lines) + "\n"


def recorded(out: Path, experiments: list[str] | None,
             seeds: list[int] | None) -> tuple[list[str], list[int], dict]:
    """The experiments and seeds of the reproduction in `out` (its reproduce.json, else its run folders), less
    what the command line chose, and its reproduce.json ({} without one); a folder with no runs is refused."""
    runs = sorted((out / "runs").glob("*/seed_*/"))
    record = read_json(out / "reproduce.json")
    if not runs and not record:
        raise Task1Error(f"--out {out} holds no runs of a reproduction (runs/<experiment>/seed_<n>/): there is "
                         f"no table to rebuild. Give the folder of an earlier `task1 reproduce`, or run one.")
    experiments = experiments or [e["experiment"] for e in record.get("experiments", [])] or \
        sorted({p.parent.name for p in runs}, key=natural_key)
    seeds = seeds or record.get("seeds") or sorted({int(p.name.removeprefix("seed_")) for p in runs})
    return experiments, seeds, record


def seed_list(text: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2]."""
    return [int(s) for s in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="task1 reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", help="comma-separated names from conf/experiment/ (all; with --no-run: "
                                               "those of the runs in --out)")
    parser.add_argument("--seeds", type=seed_list, help="comma-separated seeds (0,1,2; with --no-run: those of "
                                                        "the runs in --out)")
    parser.add_argument("--out", help="output folder (<paths.output_dir>/reproduce/<date>_<time>)")
    parser.add_argument("--no-run", action="store_true", help="only rebuild the table from the runs in --out")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run, e.g. trainer=gpu")
    args = parser.parse_args(argv)

    if args.no_run and not args.out:
        parser.error("--no-run needs --out, the folder of an earlier reproduction")
    experiments, seeds = args.experiments.split(",") if args.experiments else None, args.seeds
    earlier = {}
    if args.no_run:  # the table of what the folder holds: its experiments and seeds, not today's defaults
        experiments, seeds, earlier = recorded(Path(args.out).resolve(), experiments, seeds)
    experiments, seeds = experiments or available(), seeds or [0, 1, 2]
    unknown = sorted(set(experiments) - set(available()))
    if unknown:
        raise Task1Error(f"no experiment {', '.join(unknown)} in {EXPERIMENTS}: choose from {', '.join(available())}.")
    # relative paths are relative to the folder the command runs in, as the runs' are
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(args.out or Path(paths(args.overrides)["output_dir"]) / "reproduce" / stamp).resolve()
    start = time.perf_counter()
    status = 0 if args.no_run else sweep(experiments, seeds, out / "runs", args.overrides)
    results = collect(experiments, seeds, out / "runs")
    command = "task1 reproduce " + " ".join(argv if argv is not None else sys.argv[1:])
    wall_time = round(time.perf_counter() - start, 1)
    if earlier:  # the runs, and so the table, are still that command's
        command, wall_time, status = earlier["command"], earlier["wall_time_s"], earlier["sweep_exit_status"]
    table = markdown(results, seeds, command.strip())
    passed = all(r["passed"] for r in results)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "reproduce.md", table)
    write_json(out / "reproduce.json", {
        "command": command, "seeds": seeds, "overrides": args.overrides, "sweep_exit_status": status,
        "wall_time_s": wall_time, "passed": passed,
        "tolerances": {"test_acc": ACC_TOL, "w_b": PARAM_TOL, "loss_quantiles": LOSS_P},
        "experiments": results})
    print(table)
    print(f"{sum(r['passed'] for r in results)} of {len(results)} experiments inside their bands; "
          f"{wall_time:.0f} s; {out / 'reproduce.md'}")
    return 0 if passed and status == 0 else 1


@exit_on_error
def cli() -> None:
    """The console script: main()'s status as the exit status."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
