"""The sweep report ranks as the search did (or as told), refuses a metric the jobs do not have, and draws each
swept parameter so that its points can be told apart and its axis read."""

import itertools
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, run_cli
from test_edges import mount_namespace  # noqa: F401 (a fixture)
from test_sweep_seeds import a_job

from task1.sweeps.report import figure, read_jobs, summarize

ERRS = {"0.1": 0.30, "0.3": 0.10, "1.0": 0.20}  # val/err: lower is better, the job at lr 0.3 is the best


def err_sweep(folder, direction: str | None = None):
    for i, (lr, err) in enumerate(ERRS.items()):
        for seed in ("1", "2"):
            a_job(folder / f"{i}{seed}", [f"optimizer.lr={lr}", f"seed={seed}"],
                  final={"val/err": err + 0.01 * int(seed), "val/acc": 1 - err})
    if direction:  # what task1's Optuna sweeper leaves beside the jobs
        (folder / "optimization_results.yaml").write_text(yaml.safe_dump(
            {"name": "optuna", "direction": direction, "optimized_metric": "val/err"}))
    return folder


@pytest.mark.parametrize(("direction", "mode", "best"), [
    ("minimize", None, "0.3"), ("maximize", None, "0.1"), (None, "min", "0.3"), ("minimize", "max", "0.1"),
    (None, "maximize", "0.1"), ("maximize", "minimize", "0.3")])  # a mode in a study's words too
def test_best_job_and_seed_group_follow_the_study_or_the_mode(tmp_path, direction, mode, best):
    summarize(err_sweep(tmp_path, direction), "val/err", mode)
    md = (tmp_path / "summary.md").read_text()
    word = "lowest" if (mode or direction) in ("min", "minimize") else "highest"
    job = {"0.1": "01", "0.3": "11", "1.0": "21"}[best] if word == "lowest" else \
        {"0.1": "02", "0.3": "12", "1.0": "22"}[best]  # the better seed of the group: seed 1 lower, seed 2 higher
    assert f"Best val/err ({word}): " in md and f"job {job} (optimizer.lr={best} " in md
    assert f"over 2 seeds (optimizer.lr={best})" in md  # the best mean over seeds too


def test_a_metric_of_unknown_direction_is_not_ranked_by_its_name(tmp_path):
    summarize(err_sweep(tmp_path), "val/err")  # no study, no mode: val/err is not an accuracy or a loss
    md = (tmp_path / "summary.md").read_text()
    assert "No best job: whether a higher val/err is better is not known here; give the mode" in md
    assert "Best mean" not in md
    summarize(tmp_path, "val/acc")  # task1's own: higher is better
    assert "Best val/acc (highest): **0.9000**" in (tmp_path / "summary.md").read_text()


def test_an_unknown_metric_is_refused_and_the_report_left_as_it_was(tmp_path):
    summarize(err_sweep(tmp_path), "val/acc")
    before = {p.name: p.read_bytes() for p in tmp_path.glob("summary*")}
    result = run_cli("-m", "task1", "summarize", str(tmp_path), "--metric", "val/accc")
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    assert "metric val/accc is not among the jobs' metrics: choose one of val/acc, val/err" in out
    assert {p.name: p.read_bytes() for p in tmp_path.glob("summary*")} == before


def test_a_second_swept_parameter_colours_the_points_with_a_legend(tmp_path):
    for i, (opt, lr) in enumerate([("sgd", "0.1"), ("sgd", "0.3"), ("adam", "0.1"), ("adam", "0.3")]):
        a_job(tmp_path / str(i), [f"optimizer={opt}", f"optimizer.lr={lr}"], final={"val/acc": 0.5 + 0.1 * i})
    fig = figure(read_jobs(tmp_path), ["optimizer", "optimizer.lr"], "val/acc")
    by_opt, by_lr = fig.axes
    assert [t.get_text() for t in by_lr.get_legend().get_texts()] == ["optimizer=adam", "optimizer=sgd"]
    assert [t.get_text() for t in by_opt.get_legend().get_texts()] == ["optimizer.lr=0.1", "optimizer.lr=0.3"]
    colours = [tuple(c.get_facecolor()[0]) for c in by_lr.collections]
    assert len(colours) == 2 and colours[0] != colours[1]
    assert [len(c.get_offsets()) for c in by_lr.collections] == [2, 2]


def test_log_axes_with_few_values_get_readable_ticks(tmp_path):
    lrs = ["0.04923847718", "0.0001873", "0.3321", "0.0077"]  # drawn from an interval: not a grid
    decays = ["0.0", "1e-05", "0.0001", "0.001"]  # a choice with 0 among log-spaced values
    for i, (lr, wd) in enumerate(zip(lrs, decays, strict=True)):
        a_job(tmp_path / str(i), [f"optimizer.lr={lr}", f"optimizer.weight_decay={wd}"], final={"val/acc": 0.5})
    by_lr, by_wd = figure(read_jobs(tmp_path), ["optimizer.lr", "optimizer.weight_decay"], "val/acc").axes
    by_lr.figure.canvas.draw()
    assert by_lr.get_xscale() == "log"
    shown = [t.get_text() for t in by_lr.get_xticklabels() if t.get_text()]
    assert not any(lr.rstrip("0") in text for lr in lrs for text in shown)  # decades, not each sampled value
    assert by_wd.get_xscale() == "symlog"  # 0 and the decades apart, each labelled once
    assert [t.get_text() for t in by_wd.get_xticklabels()] == ["0", "1e-05", "0.0001", "0.001"]
    positions = by_wd.transData.transform([(float(wd), 0) for wd in decays])[:, 0]
    assert min(b - a for a, b in itertools.pairwise(positions)) > 30  # pixels apart: no overlap


def test_a_sweep_validated_on_the_test_split_says_so_once(tmp_path, caplog):
    from test_sweep_seeds import a_job

    book = tmp_path / "book"  # data.val_size=0: val/* and test/* are the same numbers
    for i, (lr, acc) in enumerate([("0.1", 0.8), ("0.3", 0.85)]):
        a_job(book / str(i), [f"optimizer.lr={lr}"], final={"val/acc": acc, "val/loss": 1 - acc, "test/acc": acc,
                                                             "test/loss": 1 - acc})
    with caplog.at_level("INFO", logger="task1"):
        summarize(book)
    note = ("val/* is the test split here (data.val_size=0, as in the book), so the best val/acc is chosen on test "
            "examples. Hold out a validation split with data.val_size=5000.")
    assert (book / "summary.md").read_text().count(note) == 1
    assert [r.message for r in caplog.records].count(f"note: {note}") == 1
    held_out = tmp_path / "held_out"  # data.val_size=5000: a validation split of its own
    for i, (lr, acc) in enumerate([("0.1", 0.8), ("0.3", 0.85)]):
        a_job(held_out / str(i), [f"optimizer.lr={lr}"], final={"val/acc": acc, "val/loss": 1 - acc,
                                                                 "test/acc": acc - 0.01, "test/loss": 1.01 - acc})
    caplog.clear()
    with caplog.at_level("INFO", logger="task1"):
        summarize(held_out)
    assert "test split" not in (held_out / "summary.md").read_text()
    assert not [r for r in caplog.records if r.message.startswith("note:")]


REPORT_AT_END = """
import logging, sys
from omegaconf import OmegaConf
from task1.sweeps.report import SweepReport
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
SweepReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": sys.argv[1]}}}))
"""


def end_of_multirun(sweep) -> str:
    """What the sweep report logs when a multirun over `sweep` ends, in a process of its own."""
    done = subprocess.run([sys.executable, "-c", REPORT_AT_END, str(sweep)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def a_sweep(folder) -> None:
    for i, lr in enumerate(ERRS):
        a_job(folder / str(i), [f"optimizer.lr={lr}"], final={"val/acc": 1 - ERRS[lr]})


def test_a_report_file_that_cannot_be_written_is_one_line_naming_it_and_the_others_are_kept(tmp_path):
    a_sweep(tmp_path)
    (tmp_path / "summary.png" / "in_the_way").mkdir(parents=True)  # a folder where the figure goes: even root fails
    out = end_of_multirun(tmp_path)
    errors = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert "Traceback" not in out and len(errors) == 1, out
    assert f"could not write {tmp_path / 'summary.png'}: " in errors[0] and f"task1 summarize {tmp_path}" in errors[0]
    assert (tmp_path / "summary.csv").is_file() and "optimizer.lr" in (tmp_path / "summary.md").read_text()


def test_a_full_disk_while_writing_the_report_is_one_line_naming_the_file_and_the_device(tmp_path,
                                                                                        mount_namespace):  # noqa: F811
    disk = tmp_path / "disk"
    disk.mkdir()
    # the jobs first, then a filler that takes all but 3 pages: summary.csv and summary.md fit, the figure not
    script = f"""
        mount -t tmpfs -o size=1m tmpfs {disk} || exit 99
        {sys.executable} -c 'import sys; sys.path[:0] = ["{ROOT / "tests"}", "{ROOT}"]; from pathlib import Path; \\
            from test_report import a_sweep; a_sweep(Path("{disk}"))'
        dd if=/dev/zero of={disk}/filler bs=4k 2>/dev/null; truncate -s -12k {disk}/filler
        {sys.executable} -c '{REPORT_AT_END}' {disk} > {tmp_path}/out 2>&1
        cp {disk}/summary.* {tmp_path}/
    """
    done = subprocess.run([*mount_namespace, script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = (tmp_path / "out").read_text() if (tmp_path / "out").exists() else ""
    assert done.returncode == 0, done.stdout + done.stderr + out
    errors = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert "Traceback" not in out and len(errors) == 1, out
    assert f"could not write {disk / 'summary.png'}: no space left on tmpfs (mounted at {disk})" in errors[0], out
    assert (tmp_path / "summary.csv").is_file() and "optimizer.lr" in (tmp_path / "summary.md").read_text()
    assert not (tmp_path / "summary.png").exists()
