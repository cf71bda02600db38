"""Jobs of a sweep that differ only in `seed`, taken together: mean, standard deviation and count per metric."""

import statistics
from typing import Any

SEED = "seed"


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation (n - 1) of `values`; None for what too few values leave open."""
    return (statistics.fmean(values) if values else None, statistics.stdev(values) if len(values) > 1 else None)


def seeds_swept(jobs: list[dict]) -> bool:
    """Whether the jobs ran more than one seed (then the report also summarises over seeds)."""
    return len({j["overrides"].get(SEED) for j in jobs}) > 1


def seed_groups(jobs: list[dict], metrics: list[str]) -> list[dict]:
    """One group per set of overrides but `seed`, in the order of its first job.

    Each: `overrides` (but seed), `jobs`, `seeds`, and `stats`: per metric the `mean`, sample standard deviation
    `std` (None for fewer than two values) and `n` over the group's completed jobs.
    """
    groups: dict[tuple, list[dict]] = {}
    for j in jobs:
        key = tuple(sorted((k, v) for k, v in j["overrides"].items() if k != SEED))
        groups.setdefault(key, []).append(j)
    out = []
    for members in groups.values():
        done = [j for j in members if j["status"] == "completed"]
        stats = {}
        for m in metrics:
            values = [j["final"][m] for j in done if isinstance(j["final"].get(m), int | float)]
            mean, std = mean_std(values)
            stats[m] = {"mean": mean, "std": std, "n": len(values)}
        out.append({"overrides": {k: v for k, v in members[0]["overrides"].items() if k != SEED},
                    "jobs": [j["job"] for j in members],
                    "seeds": [j["overrides"].get(SEED, "") for j in members], "stats": stats})
    return out


def best_group(groups: list[dict], metric: str, mode: str | None) -> dict | None:
    """The group with the best mean `metric`, highest or lowest as `mode` (max, min) says; None: no best."""
    scored = [g for g in groups if g["stats"].get(metric, {}).get("mean") is not None]
    if mode is None:
        return None
    sign = 1 if mode == "max" else -1
    return max(scored, key=lambda g: sign * g["stats"][metric]["mean"], default=None)


def csv_rows(groups: list[dict], params: list[str], metrics: list[str]) -> list[list[Any]]:
    """summary_seeds.csv: a header, then one row per group (an empty cell where a value is undefined)."""
    header = [*params, "seeds", *(f"{m} {s}" for m in metrics for s in ("mean", "std", "n"))]
    rows = [[*(g["overrides"].get(p, "") for p in params), " ".join(map(str, g["seeds"])),
             *(("" if g["stats"][m][s] is None else g["stats"][m][s]) for m in metrics for s in ("mean", "std", "n"))]
            for g in groups]
    return [header, *rows]


def markdown(groups: list[dict], params: list[str], metrics: list[str], metric: str | None,
             mode: str | None) -> list[str]:
    """The over-seeds section of summary.md: the best group, then one row per group, "mean ± std (n)"."""
    lines = ["", "## Over seeds", "", "Jobs that differ only in `seed`: mean ± sample standard deviation (number of "
             "completed jobs) of each metric; the numbers are also in summary_seeds.csv."]
    best = best_group(groups, metric, mode) if metric else None
    if best:
        s = best["stats"][metric]
        where = " ".join(f"{k}={best['overrides'][k]}" for k in params if k in best["overrides"])
        spread = f" ± {s['std']:.4f}" if s["std"] is not None else ""
        lines.append(f"\nBest mean {metric}: **{s['mean']:.4f}**{spread} over {s['n']} seeds ({where})")

    def cell(stat: dict) -> str:
        if stat["mean"] is None:
            return ""
        return f"{stat['mean']:.4g}" + (f" ± {stat['std']:.2g}" if stat["std"] is not None else "") + f" ({stat['n']})"

    header = [*params, "seeds", *metrics]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([*(str(g["overrides"].get(p, "")) for p in params), " ".join(map(str, g["seeds"])),
                                 *(cell(g["stats"][m]) for m in metrics)]) + " |" for g in groups]
    return lines
