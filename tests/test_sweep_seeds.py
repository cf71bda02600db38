"""Jobs that differ only in seed, taken together: the sweep report's statistics and the mean learning curves."""

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from task1.sweeps.report import summarize
from task1.tools import curves

LRS, SEEDS = ("0.05", "0.5"), ("1", "2", "3")


def seed_rows(sweep: Path) -> list[dict]:
    with open(sweep / "summary_seeds.csv", newline="") as f:
        return list(csv.DictReader(f))


def a_job(folder: Path, overrides: list[str], status: str = "completed", final: dict | None = None) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / "metrics.json").write_text(json.dumps({"status": status, "final": final or {}, "wall_time_s": 1.0}))


def test_report_takes_the_seeds_of_each_setting_together(tmp_path):
    accs = {("0.1", "1"): 0.7, ("0.1", "2"): 0.8, ("0.1", "3"): 0.9, ("0.3", "1"): 0.6, ("0.3", "2"): 0.5}
    for i, ((lr, seed), acc) in enumerate(accs.items()):
        a_job(tmp_path / str(i), ["trainer=cpu", f"optimizer.lr={lr}", f"seed={seed}"],
              final={"val/acc": acc, "val/loss": 1 - acc})
    a_job(tmp_path / "5", ["trainer=cpu", "optimizer.lr=0.3", "seed=3"], status="failed")  # not counted
    summarize(tmp_path)
    rows = seed_rows(tmp_path)
    assert [(r["optimizer.lr"], r["seeds"]) for r in rows] == [("0.1", "1 2 3"), ("0.3", "1 2 3")]
    assert float(rows[0]["val/acc mean"]) == pytest.approx(0.8) and float(rows[0]["val/acc std"]) == pytest.approx(0.1)
    assert rows[0]["val/acc n"] == "3" and rows[1]["val/acc n"] == "2"
    assert float(rows[1]["val/loss mean"]) == pytest.approx(0.45)
    assert float(rows[1]["val/acc std"]) == pytest.approx(statistics.stdev([0.6, 0.5]))
    md = (tmp_path / "summary.md").read_text()
    assert "## Over seeds" in md and "| 0.1 | 1 2 3 | 0.8 ± 0.1 (3) |" in md
    assert "Best mean val/acc: **0.8000** ± 0.1000 over 3 seeds (optimizer.lr=0.1)" in md
    assert (tmp_path / "summary.png").read_bytes().startswith(b"\x89PNG")

    one_seed = tmp_path / "one_seed"
    for i, lr in enumerate(("0.1", "0.3")):
        a_job(one_seed / str(i), [f"optimizer.lr={lr}"], final={"val/acc": 0.5})
    summarize(one_seed)
    assert not (one_seed / "summary_seeds.csv").exists() and "Over seeds" not in (one_seed / "summary.md").read_text()


@pytest.fixture(scope="module")
def seed_sweep(fake_root, tmp_path_factory) -> Path:
    """A real multirun: 3 seeds x 2 learning rates, 2 epochs each on the generated data."""
    sweep = tmp_path_factory.mktemp("seeds") / "sweep"
    result = run_cli("--multirun", f"data.root={fake_root}", "trainer=cpu", "trainer.max_epochs=2", "logger=none",
                     "figures.enabled=false", "data.val_size=100", f"optimizer.lr={','.join(LRS)}",
                     f"seed={','.join(SEEDS)}", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return sweep


def job_metrics(sweep: Path) -> dict[tuple[str, str], dict]:
    """(lr, seed) -> the job's metrics.json."""
    found = {}
    for path in sweep.glob("*/.hydra/overrides.yaml"):
        overrides = dict(o.split("=", 1) for o in yaml.safe_load(path.read_text()))
        found[overrides["optimizer.lr"], overrides["seed"]] = json.loads((path.parent.parent / "metrics.json")
                                                                         .read_text())
    return found


@pytest.mark.slow
def test_seed_sweep_reports_mean_std_and_count_per_learning_rate(seed_sweep):
    jobs = job_metrics(seed_sweep)
    assert len(jobs) == 6 and all(m["status"] == "completed" for m in jobs.values())
    rows = {r["optimizer.lr"]: r for r in seed_rows(seed_sweep)}
    assert sorted(rows) == sorted(LRS)
    for lr, row in rows.items():
        assert row["seeds"] == " ".join(SEEDS)
        for metric in ("val/acc", "train/loss", "test/loss"):
            values = [jobs[lr, s]["final"][metric] for s in SEEDS]
            assert float(row[f"{metric} mean"]) == statistics.fmean(values)
            assert float(row[f"{metric} std"]) == statistics.stdev(values) and row[f"{metric} n"] == "3"
    md = (seed_sweep / "summary.md").read_text()
    assert "6 jobs: 6 completed" in md and "## Over seeds" in md
    assert (seed_sweep / "summary.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_curves_draw_each_learning_rate_as_the_mean_of_its_seeds(seed_sweep, tmp_path):
    runs = curves.find_runs([seed_sweep])
    groups = curves.group_seeds(list(runs))
    assert groups == {f"optimizer.lr={lr}": [f"optimizer.lr={lr} seed={s}" for s in SEEDS] for lr in LRS}
    jobs = job_metrics(seed_sweep)
    mean, std = curves.mean_history([runs[label] for label in groups["optimizer.lr=0.5"]])
    for epoch in range(2):
        losses = [jobs["0.5", s]["history"][epoch]["train/loss"] for s in SEEDS]
        assert mean[epoch]["train/loss"] == statistics.fmean(losses)
        assert std[epoch]["train/loss"] == statistics.stdev(losses) and mean[epoch]["epoch"] == epoch + 1
    result = run_cli("-m", "task1", "curves", str(seed_sweep), "--group-seeds", "--out", str(tmp_path / "c.png"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG")
