"""Every stop recovers exactly, and nothing a stop leaves is lost or overwritten: a sweep resumed with
interpolated overrides, runs trained one after the other in one process, a rerun composed afresh, a second
command into a folder that a run holds, a disk that fills during a checkpoint, a damaged last.ckpt."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import ROOT, compose_cfg, no_traceback, run_cli
from omegaconf import OmegaConf

from task1 import Task1Error, api
from task1.core.runs import resume_command
from task1.io import hold


def tiny(fake_root, tmp_path) -> list[str]:
    return [f"data.root={fake_root}", "data.batch_size=64", "trainer=cpu", "trainer.max_epochs=1", "logger=none",
            "figures.enabled=false", f"paths.output_dir={tmp_path}"]


@pytest.mark.slow
def test_a_sweep_resumed_keeps_its_interpolated_overrides_and_reuses_its_jobs(fake_root, tmp_path):
    sweep = tmp_path / "sweep"
    args = [*tiny(fake_root, tmp_path), "optimizer.lr=0.1,0.2", "optimizer.weight_decay=${optimizer.lr}"]
    first = run_cli("--multirun", *args, f"hydra.sweep.dir={sweep}")
    assert first.returncode == 0, first.stderr[-3000:]
    for job, lr in (("0", 0.1), ("1", 0.2)):
        ran = OmegaConf.load(sweep / job / "config_resolved.yaml").optimizer
        assert ran.lr == ran.weight_decay == lr
    again = run_cli(f"resume={sweep}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("reused, completed in an earlier start") == 2
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]  # no job trained again elsewhere


@pytest.mark.slow
def test_runs_trained_one_after_the_other_in_a_fresh_process_log_into_their_own_folders(fake_root, tmp_path):
    # in a fresh process Lightning's loggers are made inside the first call: its handlers must go with it
    script = textwrap.dedent(f"""
        from task1 import api
        for name in ("first", "second"):
            api.train(*{tiny(fake_root, tmp_path)!r}, f"hydra.run.dir={tmp_path}/{{name}}")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("first", "second"):
        log = (tmp_path / name / "train.log").read_text()
        assert log.count("GPU available") == 1 and log.count("final metrics") == 1, log


@pytest.mark.slow
def test_a_rerun_composed_afresh_refuses_a_value_its_overrides_do_not_compose(fake_root, tmp_path):
    cfg = api.compose(*tiny(fake_root, tmp_path))
    cfg.optimizer.lr = 0.2  # set in Python: no override records it
    run = api.train(cfg).folder
    refused = run_cli("-m", "task1", "rerun", str(run), "logger=csv", f"hydra.run.dir={tmp_path / 'refused'}")
    out = no_traceback(refused)
    assert "optimizer.lr: 0.2 in the run, 0.1 composed" in out and not (tmp_path / "refused").exists()
    # the refusal names the overrides that make the rerun what the run was, less what it changes
    fix = shlex.split(out[out.index(" rerun ") + 1:].split(";")[0])[2:]
    assert "optimizer.lr=0.2" in fix and "logger=csv" in fix
    given = run_cli("-m", "task1", "rerun", str(run), *fix, f"hydra.run.dir={tmp_path / 'given'}")
    assert given.returncode == 0, given.stderr[-3000:]
    ran = OmegaConf.load(tmp_path / "given" / "config_resolved.yaml")
    assert ran.optimizer.lr == 0.2 and (tmp_path / "given" / "csv").is_dir()


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_second_command_into_a_held_folder_touches_nothing(fake_root, tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_cfg(*tiny(fake_root, tmp_path)), run / ".hydra" / "config.yaml")
    (run / ".hydra" / "overrides.yaml").write_text("- trainer=cpu\n")
    (run / "train.log").write_text("the running run's log\n")
    with hold(run):  # as a run training there holds it
        before = snapshot(run)
        for args in ([f"hydra.run.dir={run}", "model=mlp"], [f"resume={run}"]):
            out = no_traceback(run_cli(*args))
            assert f"{run} is in use by process {os.getpid()}" in out
            assert snapshot(run) == before, args  # .hydra/ and train.log as the running run left them


@pytest.fixture(scope="module")
def mount_namespace():
    """`unshare` with a mount namespace of its own (and a user namespace: no root needed where they are allowed),
    where a small tmpfs is a disk that fills up."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        # CI runs as root on a machine where this works: there a missing namespace is a failure, not a skip
        (pytest.fail if os.environ.get("CI") else pytest.skip)("no mount namespace to mount a small file system in")
    return ["unshare", "-rm", "sh", "-c"]


@pytest.mark.slow
def test_a_disk_that_fills_during_a_checkpoint_ends_in_one_line_and_the_run_resumes_exactly(fake_root, tmp_path,
                                                                                             mount_namespace):
    args = [f"data.root={fake_root}", "data.batch_size=64", "trainer=cpu", "trainer.max_epochs=2", "model=mlp",
            "model.num_hiddens=64", "logger=none", "figures.enabled=false", "checkpoint_every_n_steps=3"]
    whole = tmp_path / "whole"
    assert run_cli(*args, f"hydra.run.dir={whole}").returncode == 0
    # a checkpoint is 210 kB: 500 kB holds last.ckpt, a new one beside it and best.ckpt, not all three
    disk, train = tmp_path / "disk", f"{sys.executable} -m task1.train"
    disk.mkdir()
    script = f"""
        mount -t tmpfs -o size=500k tmpfs {disk} || exit 99
        {train} {' '.join(args)} hydra.run.dir={disk}/run > {tmp_path}/full.out 2>&1; echo $? > {tmp_path}/full.rc
        cp -a {disk}/run {tmp_path}/full
        mount -o remount,size=16m {disk}
        {train} resume={disk}/run > {tmp_path}/resumed.out 2>&1; echo $? > {tmp_path}/resumed.rc
        cp -a {disk}/run {tmp_path}/resumed
    """
    done = subprocess.run([*mount_namespace, script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    out = (tmp_path / "full.out").read_text()
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert (tmp_path / "full.rc").read_text().strip() == "1" and "Traceback" not in out, out[-3000:]
    assert len(errors) == 1 and f"no space left on tmpfs (mounted at {disk})" in errors[0], out[-3000:]
    assert f"go on with: {resume_command(disk / 'run')}" in errors[0]
    failed = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "No space left on device" in failed["error"]  # the cause kept
    torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)  # the earlier one, whole

    resumed = tmp_path / "resumed.out"
    assert (tmp_path / "resumed.rc").read_text().strip() == "0", resumed.read_text()[-3000:]
    got, want = (json.loads((r / "metrics.json").read_text()) for r in (tmp_path / "resumed", whole))
    assert got["status"] == "completed" and got["history"] == want["history"] and got["final"] == want["final"]


def test_a_damaged_last_checkpoint_names_the_intact_best_one_and_how_to_go_on(make_cfg, tmp_path):
    from task1.train import train

    run = tmp_path / "run"
    train(make_cfg(f"output_dir={run}", "figures.enabled=false"))
    (run / "metrics.json").unlink()  # as a run killed in its last epoch leaves it
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # a copy cut short
    with pytest.raises(Task1Error) as refused:
        train(make_cfg(f"resume={run}"))
    message = str(refused.value)
    assert f"{last} is not a checkpoint" in message and f"{run / 'checkpoints' / 'best.ckpt'} beside it (epoch 1)" \
        in message and f"rerun {run} ckpt_path={run / 'checkpoints' / 'best.ckpt'}" in message


def test_the_resume_hint_names_task1_as_this_user_can_run_it(tmp_path, monkeypatch):
    script = Path(sys.executable).parent / "task1"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv not active
    assert resume_command(tmp_path / "run") == f"{script} train resume={tmp_path / 'run'}"
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    assert resume_command(tmp_path / "run") == f"task1 train resume={tmp_path / 'run'}"
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")  # a sweep's job: the sweep goes on, and the job with it
    assert resume_command(tmp_path / "3") == f"task1 train resume={tmp_path}"


def test_a_bad_output_dir_is_named_as_the_user_gave_it(tmp_path):
    (tmp_path / "file").write_text("a regular file, not a folder\n")
    out = no_traceback(run_cli("trainer=cpu", f"paths.output_dir={tmp_path / 'file'}"))
    assert f"paths.output_dir={tmp_path / 'file'}: the folder {tmp_path / 'file'}/runs/" in out
    assert "hydra.run.dir" not in out and "TASK1_OUTPUT_DIR" in out
