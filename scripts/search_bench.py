"""Wall time and best val/acc of the Optuna search with its default pruner against the same search unpruned,
or (--launch) with its trials asynchronous against batched.

    python scripts/search_bench.py [--trials 24] [--epochs 5] [--first median|nop]
                                   [--pruners median nop hyperband percentile] [--rounds 1]
                                   [--out outputs/search_bench] [--tiny]
    python scripts/search_bench.py --launch [--trials 16] [--epochs 4] [--rounds 2] [--tiny]

--launch runs the preset's search (median pruning) with two trials in flight under joblib
(`hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweeper.n_jobs=2`, one core each), once asynchronous (a
trial starts as soon as one ends, the default) and once in batches of two (`hydra.sweeper.asynchronous=false`,
as Hydra's sweepers run them), and compares them as below, asynchronous/batched.

Runs `python -m task1.train -m hparams_search=optuna` twice, one after the other, as a user would: the same
trials, epochs and sampler seed (`seed`, 42), `data.val_size=10000`, once with the preset's MedianPruner and once
with `hydra/sweeper/pruner=nop`, each in its own sweep folder (its own study). Prints, and writes to
<out>/search_bench.json, the wall time and the CPU time (user + system, of all its processes) of each whole search
(start-up included), its best val/acc, how its trials ended and the epochs they trained, and pruned against
unpruned side by side. On a machine shared with other work the wall time follows the others' load, which can
change between the two searches, and the CPU time with it (the same 78 epochs measured 0.54 and 0.75 of the
unpruned search's wall time in two runs): `--rounds 2` runs nop, median, median, nop and sums each one's times,
so that a drift of the machine's load falls on both alike; `--first` chooses who starts.
Uses the real Fashion-MNIST in data/; `--tiny` runs 4 trials of 2 epochs on generated data (a smoke test).

It then replays the unpruned search's trials, in their order and with their per-epoch values, through other
pruners (`REPLAYS`) in a fresh in-memory study: which trials each would have stopped, after how many epochs, and
the share of the unpruned search's epochs and trial time that leaves (a stopped trial's time taken as its share
of epochs). The replay assumes the sampler draws the same trials. That holds for the 10 random trials, and in the
runs measured so far for the median pruner's TPE trials too. Under the percentile pruner TPE drew 10 of the 24
differently: it learns from the pruned trials' values.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's task1, also when another copy is installed

from task1.io import write_json  # noqa: E402

REPLAYS = {  # name -> (Optuna pruner class, its arguments); the default's first
    "median 5/0 (default)": ("MedianPruner", {"n_startup_trials": 5, "n_warmup_steps": 0}),
    "median 5/1": ("MedianPruner", {"n_startup_trials": 5, "n_warmup_steps": 1}),
    "median 1/0": ("MedianPruner", {"n_startup_trials": 1, "n_warmup_steps": 0}),
    "percentile 25, 1/0": ("PercentilePruner", {"percentile": 25.0, "n_startup_trials": 1, "n_warmup_steps": 0}),
    "percentile 25, 5/0": ("PercentilePruner", {"percentile": 25.0, "n_startup_trials": 5, "n_warmup_steps": 0}),
    "successive halving": ("SuccessiveHalvingPruner", {"min_resource": 1, "reduction_factor": 3}),
    "hyperband": ("HyperbandPruner", {"min_resource": 1, "reduction_factor": 3}),
}
PRUNERS = {"median": [], "nop": ["hydra/sweeper/pruner=nop"], "hyperband": ["hydra/sweeper/pruner=hyperband"],
           "percentile": ["hydra/sweeper/pruner=percentile"]}
# --launch: two trials in flight under joblib, each with one of the two cores, median pruning
IN_PARALLEL = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2"]
LAUNCHES = {"batched": [*IN_PARALLEL, "hydra.sweeper.asynchronous=false"], "asynchronous": IN_PARALLEL}
SEARCHES = {**PRUNERS, **LAUNCHES}


def search(name: str, overrides: list[str], sweep: Path) -> dict:
    """One whole search as a subprocess: its wall time and what its sweep folder says."""
    cmd = [sys.executable, "-m", "task1.train", "--multirun", "hparams_search=optuna", *overrides,
           *SEARCHES[name], f"hydra.sweep.dir={sweep}"]
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        sys.exit(f"{name}: the search failed:\n{(result.stdout + result.stderr)[-3000:]}")
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    jobs = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "best_val_acc": results.get("best_value"),
            "best_trial": results.get("best_trial"), "trials": results["states"],
            "epochs": sum(j["epochs"] for j in jobs), "sweep": str(sweep)}


def against(run: dict, base: dict) -> dict:
    """A search's wall time, CPU time and epochs as ratios to the base search's (the unpruned one; the batched
    one), and its best val/acc's gap."""
    return {"wall": round(run["wall_s"] / base["wall_s"], 3), "cpu": round(run["cpu_s"] / base["cpu_s"], 3),
            "epochs": round(run["epochs"] / base["epochs"], 3),
            "best_val_acc_diff": round((run["best_val_acc"] or 0) - (base["best_val_acc"] or 0), 4)}


def summed(rounds: list[dict]) -> dict:
    """One search's rounds as one: their wall and CPU times summed (each round's kept), the rest from the first
    (seeded, they draw and train alike: the epochs of every round are kept to show it)."""
    return {**rounds[0], "wall_s": round(sum(r["wall_s"] for r in rounds), 1),
            "cpu_s": round(sum(r["cpu_s"] for r in rounds), 1), "rounds_wall_s": [r["wall_s"] for r in rounds],
            "rounds_epochs": [r["epochs"] for r in rounds]}


def replay(sweep: Path, pruner_name: str, kwargs: dict) -> dict:
    """The unpruned search in `sweep` as `pruner_name` would have pruned it (see the module's docstring)."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal = optuna.storages.journal.JournalFileBackend(str(sweep / "optuna_journal.log"))
    storage = optuna.storages.JournalStorage(journal)
    done = optuna.load_study(study_name=None, storage=storage).trials
    study = optuna.create_study(direction="maximize", pruner=getattr(optuna.pruners, pruner_name)(**kwargs))
    epochs = seconds = all_seconds = 0.0
    best, stopped = None, 0
    for old in done:
        values = [old.intermediate_values[step] for step in sorted(old.intermediate_values)]
        took = (old.datetime_complete - old.datetime_start).total_seconds()
        all_seconds += took
        trial = study.ask()
        for step, value in enumerate(values):
            trial.report(value, step)
            if step < len(values) - 1 and trial.should_prune():  # a trial's last epoch is never judged
                study.tell(trial, state=TrialState.PRUNED)
                stopped, epochs, seconds = stopped + 1, epochs + step + 1, seconds + took * (step + 1) / len(values)
                break
        else:
            study.tell(trial, values[-1])
            epochs, seconds, best = epochs + len(values), seconds + took, max(best or values[-1], values[-1])
    total = sum(len(t.intermediate_values) for t in done)
    return {"pruned": stopped, "epochs": round(epochs / total, 3), "time": round(seconds / all_seconds, 3),
            "best_val_acc": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, help="trials in each search (default 24; --launch: 16)")
    parser.add_argument("--epochs", type=int, help="epochs of each trial (default 5; --launch: 4)")
    parser.add_argument("--first", choices=list(SEARCHES), help="the search that runs first")
    parser.add_argument("--pruners", nargs="+", choices=list(PRUNERS), default=["median", "nop"],
                        help="the searches to run (median and nop always; hyperband, percentile on request)")
    parser.add_argument("--launch", action="store_true", help="asynchronous trials against batches of trials "
                        "instead: two in flight under joblib, median pruning")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "search_bench")
    parser.add_argument("--tiny", action="store_true", help="4 trials of 2 epochs on generated data")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the searches this many times, every other round in reverse order (A B, B A, ...), "
                             "and compare the summed times: the machine's drift then falls on both alike")
    args = parser.parse_args()
    base, compared = ("batched", "asynchronous") if args.launch else ("nop", "median")
    args.trials = args.trials or (16 if args.launch else 24)
    args.epochs = args.epochs or (4 if args.launch else 5)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            sys.path.insert(0, str(ROOT / "scripts"))
            from bench import data_root  # the benchmark's generated files of Fashion-MNIST's shape

            args.trials, args.epochs = 4, 2
            data = [f"data.root={data_root(True, Path(tmp), 'data')[0]}", "data.val_size=100"]
        else:
            data = ["data.val_size=10000"]
        overrides = [f"hydra.sweeper.n_trials={args.trials}", f"trainer.max_epochs={args.epochs}", *data]
        names = list(LAUNCHES) if args.launch else {"median", "nop", *args.pruners}
        first = args.first or compared
        order = sorted(names, key=lambda name: (name != first, name))
        rounds: dict[str, list[dict]] = {name: [] for name in order}
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                rounds[name].append(search(name, overrides, args.out / f"{stamp}_{name}{f'_{r}' if r else ''}"))
        runs = {name: summed(found) for name, found in rounds.items()}
    ratios = {name: against(run, runs[base]) for name, run in runs.items() if name != base}
    report = {"trials": args.trials, "epochs": args.epochs, "data": "generated" if args.tiny else "Fashion-MNIST",
              "rounds": args.rounds, "order": order, "runs": runs, "compared": f"{compared}/{base}",
              "wall_ratio": ratios[compared]["wall"], "cpu_ratio": ratios[compared]["cpu"],
              "epoch_ratio": ratios[compared]["epochs"], "best_val_acc_diff": ratios[compared]["best_val_acc_diff"],
              f"against_{base}": ratios}
    if not args.launch:
        report["replay_of_nop"] = {name: replay(Path(runs["nop"]["sweep"]), *spec) for name, spec in REPLAYS.items()}
    write_json(args.out / "search_bench.json", report)
    print(f"{args.trials} trials x {args.epochs} epochs, {report['data']}, sampler seed 42, {args.rounds} round(s), "
          f"the first in this order (times summed over the rounds):")
    print(f"{'search':<13}{'wall s':>9}{'CPU s':>9}{'best val/acc':>14}{'epochs':>8}  trials; wall s of each round")
    for name, run in runs.items():
        print(f"{name:<13}{run['wall_s']:>9.1f}{run['cpu_s']:>9.1f}{run['best_val_acc'] or float('nan'):>14.4f}"
              f"{run['epochs']:>8}  {run['trials']}; {run['rounds_wall_s']}")
    for name, r in ratios.items():
        print(f"{name}/{base}: wall time {r['wall']:.3f}, CPU time {r['cpu']:.3f}, epochs {r['epochs']:.3f}, "
              f"best val/acc {r['best_val_acc_diff']:+.4f}")
    if args.launch:
        return
    print(f"the unpruned search's {args.trials} trials replayed through other pruners (share of its epochs and "
          f"trial time left):")
    for name, r in report["replay_of_nop"].items():
        print(f"  {name:<22} pruned {r['pruned']:>2}  epochs {r['epochs']:.3f}  time {r['time']:.3f}  "
              f"best val/acc {r['best_val_acc'] or float('nan'):.4f}")


if __name__ == "__main__":
    main()
