"""Overlay the learning curves of several runs: `task1 curves <folder> [<folder> ...] [--out curves.png]`.

Every `metrics.json` under the folders counts as one run (a sweep folder holds one per job), labelled with its
command-line overrides when Hydra saved them, else with its folder. `--group-seeds` draws runs that differ only in
`seed` as one curve, their mean, in a band of one standard deviation.
"""

import argparse
from pathlib import Path

from task1 import Task1Error, plots
from task1.cli import exit_on_error
from task1.core.trust import read_saved_overrides
from task1.io import natural_key
from task1.results import METRICS, read_run
from task1.sweeps.seeds import mean_std


def run_label(run: Path, root: Path) -> str:
    """A run's overrides ("model=mlp optimizer.lr=0.1"), or its folder relative to `root`."""
    overrides = run / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        saved = read_saved_overrides(overrides)  # data only: a Python tag is one line naming the file
        shown = [o for o in saved if not str(o).startswith(("hydra.", "output_dir="))]
        if shown:
            return " ".join(map(str, shown))
    return str(run.relative_to(root)) if run != root else run.name


def find_runs(folders: list[Path]) -> dict[str, list[dict]]:
    """{label: per-epoch history} for every metrics.json under `folders`, in folder order."""
    runs = {}
    for folder in folders:
        if not folder.is_dir():
            raise Task1Error(f"{folder} is not a folder: pass run or sweep folders (outputs/multiruns/<date>_<time>).")
        for path in sorted(folder.rglob(METRICS), key=lambda p: [natural_key(s) for s in p.parent.parts]):
            history = read_run(path.parent).history
            if history:
                label = run_label(path.parent, folder)
                runs[label if label not in runs else str(path.parent)] = history
    if not runs:
        raise Task1Error(f"no metrics.json with a per-epoch history under {', '.join(map(str, folders))}: "
                         f"a run writes one when it finishes.")
    return shorten(runs)


def shorten(runs: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Drop from the labels the overrides that all runs share: what is left is what differs."""
    words = [label.split(" ") for label in runs]
    common = set.intersection(*map(set, words)) if len(runs) > 1 else set()
    short = [" ".join(w for w in ws if w not in common) for ws in words]
    if len(set(short)) < len(runs) or not all(short):
        return runs
    return dict(zip(short, runs.values(), strict=True))


def group_seeds(labels: list[str]) -> dict[str, list[str]]:
    """The labels of runs that differ only in `seed=`, together, under their label without it."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(" ".join(w for w in label.split(" ") if not w.startswith("seed=")), []).append(label)
    return groups


def mean_history(histories: list[list[dict]]) -> tuple[list[dict], list[dict]]:
    """Per epoch and metric, the mean and the sample standard deviation over the runs that reached that epoch."""
    mean, std = [], []
    for i in range(max(map(len, histories))):
        rows = [h[i] for h in histories if i < len(h)]
        keys = dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, int | float) and k != "epoch")
        values = {k: [r[k] for r in rows if k in r] for k in keys}
        stats = {k: mean_std(v) for k, v in values.items()}
        mean.append({"epoch": rows[0].get("epoch", i), **{k: m for k, (m, _) in stats.items()}})
        std.append({k: s or 0.0 for k, (_, s) in stats.items()})
    return mean, std


def overlay(folders: list[Path], out: Path, group: bool = False) -> Path:
    """Save the overlaid learning curves of every run under `folders` as `out` (with `group`, one mean curve
    and band per group of seeds); return it."""
    runs = find_runs(folders)
    if not group:
        return plots.save(plots.learning_curves(runs), out)
    curves, bands = {}, {}
    for name, labels in group_seeds(list(runs)).items():
        if len(labels) == 1:  # nothing to average
            curves[labels[0]] = runs[labels[0]]
            continue
        name = f"{name} (mean of {len(labels)} seeds)" if name else f"mean of {len(labels)} seeds"
        curves[name], bands[name] = mean_history([runs[label] for label in labels])
    return plots.save(plots.learning_curves(curves, bands), out)


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="task1 curves", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run or sweep folders")
    parser.add_argument("--out", type=Path, help="the PNG to write (default: <first folder>/curves.png)")
    parser.add_argument("--group-seeds", action="store_true",
                        help="runs that differ only in seed: their mean curve, in a band of one standard deviation")
    args = parser.parse_args(argv)
    path = overlay(args.folders, args.out or args.folders[0] / "curves.png", args.group_seeds)
    print(path)


if __name__ == "__main__":
    main()
