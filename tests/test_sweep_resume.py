"""A sweep started again goes on where it stopped: real multiruns (basic, joblib, submitit) killed mid-job."""

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, make_fashion_mnist, no_traceback, run_cli

from task1 import Task1Error
from task1.cli import train_argv
from task1.io import FolderInUseError, hold
from task1.sweeps.folders import continue_job, job_folder

N_TRAIN, BATCH = 2000, 16
STEPS_PER_EPOCH = N_TRAIN // BATCH  # 125
LRS = ["0.05", "0.1", "0.2", "0.3"]
LAUNCHERS = {"basic": [], "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
             "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]}


def saved(folder: Path, *overrides: str) -> Path:
    """A job folder as Hydra leaves it: .hydra/overrides.yaml."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    return folder


def test_a_job_is_found_by_its_overrides_and_a_new_one_takes_a_free_number(tmp_path):
    assert job_folder(tmp_path, 0, ["a=1", "b=2"]) == "0"  # a fresh sweep: job numbers, as always
    assert job_folder(tmp_path, 1, ["a=1", "b=3"]) == "1"
    assert yaml.safe_load((tmp_path / "1" / ".hydra" / "overrides.yaml").read_text()) == ["a=1", "b=3"]  # claimed
    # started again with a value put first: the jobs keep their folders, wherever they are in the list now
    assert job_folder(tmp_path, 1, ["b=2", "a=1"]) == "0"  # the same overrides in another order: the same job
    assert job_folder(tmp_path, 2, ["a=1", "b=3"]) == "1"
    assert job_folder(tmp_path, 0, ["a=1", "b=1"]) == "2"  # its number belongs to another job: the next free one
    assert job_folder(tmp_path, 1, ["a=1", "b=0"]) == "3"
    (tmp_path / "7").mkdir()  # a folder without .hydra (a job killed before Hydra wrote it) is nobody's
    assert job_folder(tmp_path, 7, ["a=2"]) == "8"


def a_job(folder: Path, status: str | None, cfg=None, checkpoint: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if status:
        (folder / "metrics.json").write_text(json.dumps({"status": status, "error": "ValueError: x\nmore",
                                                         "final": {"val/acc": 0.5}, "history": []}))
    if cfg is not None:
        from omegaconf import OmegaConf

        (folder / "config_resolved.yaml").write_text(OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)))
    if checkpoint:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"stand-in")
    return folder


def test_what_a_job_does_with_what_its_folder_holds(make_cfg, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="task1")
    cfg = make_cfg(f"output_dir={tmp_path / 'done'}", "logger=csv")
    a_job(tmp_path / "done", "completed", cfg)
    assert continue_job(cfg)["final"] == {"val/acc": 0.5} and cfg.resume is None  # reused as it is
    assert "reused, completed in an earlier start" in caplog.text
    assert (tmp_path / "done" / "metrics.json").is_file()

    other = make_cfg(f"output_dir={tmp_path / 'done'}", "optimizer.lr=0.7")  # conf/ changed since
    with pytest.raises(Task1Error, match=r"has completed with another config .*optimizer.lr: 0.1 in the run, 0.7 now"):
        continue_job(other)

    cfg = make_cfg(f"output_dir={tmp_path / 'killed'}")
    a_job(tmp_path / "killed", None, checkpoint=True)
    assert continue_job(cfg) is None and cfg.resume == str(tmp_path / "killed")  # the single-run resume path

    # a failure that may pass (a timeout, a signal, a node lost, a refused resume): its checkpoint is never
    # deleted, the job goes on from it
    cfg = make_cfg(f"output_dir={tmp_path / 'failed'}", "logger=csv")
    a_job(tmp_path / "failed", "failed", cfg, checkpoint=True)
    (tmp_path / "failed" / "csv").mkdir()
    assert continue_job(cfg) is None and cfg.resume == str(tmp_path / "failed")
    assert (tmp_path / "failed" / "checkpoints" / "last.ckpt").read_bytes() == b"stand-in"
    assert "resuming from" in caplog.text and "(failed: ValueError: x before)" in caplog.text

    # stopped before its first checkpoint: nothing of value to keep, it starts afresh
    cfg = make_cfg(f"output_dir={tmp_path / 'early'}", "logger=csv")
    a_job(tmp_path / "early", "failed", cfg)
    (tmp_path / "early" / "csv").mkdir()
    assert continue_job(cfg) is None and cfg.resume is None
    assert sorted(p.name for p in (tmp_path / "early").iterdir()) == ["config_resolved.yaml"]  # afresh
    assert "starting again from the beginning (failed: ValueError: x before; no checkpoint)" in caplog.text

    # a seeded divergence fails the same way every time: reported, not trained again, its files kept
    cfg = make_cfg(f"output_dir={tmp_path / 'diverged'}")
    a_job(tmp_path / "diverged", "failed", cfg, checkpoint=True)
    metrics = json.loads((tmp_path / "diverged" / "metrics.json").read_text())
    (tmp_path / "diverged" / "metrics.json").write_text(json.dumps({**metrics, "repeats": True}))
    assert continue_job(cfg)["status"] == "failed" and cfg.resume is None
    assert "not trained again: it failed in an earlier start of this sweep and would fail the same way" in caplog.text
    assert f"To try it again: delete {tmp_path / 'diverged' / 'metrics.json'}" in caplog.text


def test_resume_of_a_sweep_folder_is_its_command_again(tmp_path):
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "overrides": {"hydra": ["hydra/launcher=joblib", "hydra.sweep.dir=old", "hydra.mode=MULTIRUN"],
                      "task": ["trainer=cpu", "optimizer.lr=0.1,0.2", "seed=1"]},
        "job": {"config_name": "config"},
        "runtime": {"config_sources": [{"path": str(ROOT / "conf"), "schema": "file", "provider": "main"}]}}}))
    assert train_argv(["task1.train", f"resume={tmp_path}", "optimizer.lr=0.1,0.2,0.3", "-m"]) == [
        "task1.train", "--multirun", "hydra/launcher=joblib", "trainer=cpu", "seed=1", "optimizer.lr=0.1,0.2,0.3",
        f"hydra.sweep.dir={tmp_path}"]


@pytest.fixture(scope="module")
def args(tmp_path_factory) -> list[str]:
    root = make_fashion_mnist(tmp_path_factory.mktemp("fmnist_sweep_resume"), n_train=N_TRAIN, n_test=200)
    return [f"data.root={root}", "trainer=cpu", "trainer.max_epochs=2", "model=mlp", "model.num_hiddens=32",
            f"data.batch_size={BATCH}", "checkpoint_every_n_steps=10", "logger=none", "figures.enabled=false",
            "threads=1"]  # one thread under every launcher: the same floats as the uninterrupted sweep


def multirun(*overrides: str) -> None:
    result = run_cli("--multirun", *overrides)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def folders(sweep: Path) -> dict[str, Path]:
    """optimizer.lr -> the folder of the job that swept it."""
    found = {}
    for path in sweep.glob("*/.hydra/overrides.yaml"):
        lr = [o.split("=", 1)[1] for o in yaml.safe_load(path.read_text()) if o.startswith("optimizer.lr=")]
        found[lr[0]] = path.parent.parent
    return found


@pytest.fixture(scope="module")
def uninterrupted(args, tmp_path_factory) -> dict[str, dict]:
    """optimizer.lr -> metrics.json of the job of an uninterrupted sweep of the same command."""
    sweep = tmp_path_factory.mktemp("uninterrupted") / "sweep"
    multirun(*args, f"optimizer.lr={','.join(LRS)}", f"hydra.sweep.dir={sweep}")
    return {lr: json.loads((folder / "metrics.json").read_text()) for lr, folder in folders(sweep).items()}


def mid_epoch(checkpoint: Path) -> bool:
    """Whether a checkpoint is there and was written inside an epoch (not the one written at its end)."""
    try:
        return bool(torch.load(checkpoint, weights_only=True)["global_step"] % STEPS_PER_EPOCH)
    except (OSError, RuntimeError, KeyError, EOFError):  # not there yet
        return False


def kill_mid_job(overrides: list[str], sweep: Path) -> None:
    """Start the sweep; SIGKILL its whole process group once one job has completed and every job that has begun
    since has written a checkpoint inside an epoch (not one at an epoch's end)."""
    proc = subprocess.Popen([sys.executable, "-m", "task1.train", "--multirun", *overrides], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while proc.poll() is None:
            jobs = [p for p in sweep.glob("*") if p.is_dir()]
            done = [p for p in jobs if (p / "metrics.json").exists()]
            running = [p / "checkpoints" / "last.ckpt" for p in jobs if p not in done]
            running = [c for c in running if c.exists()]
            if done and running and all(mid_epoch(c) for c in running):
                break
            time.sleep(0.002)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_killed_sweep_goes_on_where_it_stopped(args, uninterrupted, tmp_path, launcher):
    sweep = tmp_path / "sweep"
    command = [*LAUNCHERS[launcher], *args, f"optimizer.lr={','.join(LRS)}", f"hydra.sweep.dir={sweep}"]
    kill_mid_job(command, sweep)
    jobs = folders(sweep)
    completed = {lr: (f / "metrics.json").read_bytes() for lr, f in jobs.items() if (f / "metrics.json").exists()}
    interrupted = [lr for lr, f in jobs.items() if lr not in completed and (f / "checkpoints" / "last.ckpt").exists()]
    assert completed and interrupted, f"not killed mid-job: {sorted(completed)} completed, {interrupted} running"
    assert all(json.loads(m)["status"] == "completed" for m in completed.values())
    for lr in interrupted:
        step = torch.load(jobs[lr] / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
        assert step % STEPS_PER_EPOCH, f"job {lr} was not killed mid-epoch (step {step})"
    if launcher == "basic":  # a fresh sweep's folders are the job numbers, as they always were
        assert {lr: f.name for lr, f in jobs.items()} == {lr: str(i) for i, lr in enumerate(LRS) if lr in jobs}

    # the same command again (basic), or its short form (the launcher comes from the sweep's record)
    if launcher == "basic":
        multirun(*command)
    else:
        result = run_cli(f"resume={sweep}")
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    jobs = folders(sweep)
    assert sorted(jobs) == sorted(LRS)
    for lr, folder in jobs.items():
        metrics, log = json.loads((folder / "metrics.json").read_text()), (folder / "train.log").read_text()
        assert metrics["status"] == "completed"
        assert metrics["final"] == uninterrupted[lr]["final"]  # exactly: the same floats to the last bit
        assert metrics["history"] == uninterrupted[lr]["history"]
        # a job completed before the kill may lack the line: the kill can fall between metrics.json and it
        finals = log.count("final metrics (")
        assert finals == 1 or (finals == 0 and lr in completed), f"job {lr} trained more than once"
        if lr in completed:  # reused, not trained again: its results untouched, to the wall time
            assert (folder / "metrics.json").read_bytes() == completed[lr] and "reused, completed" in log
        if lr in interrupted:
            assert "resuming from" in log and "reused" not in log

    # a value added in front of the swept list: only its job runs, in a folder of its own
    before = {lr: (f / "metrics.json").read_bytes() for lr, f in jobs.items()}
    wider = f"optimizer.lr=0.02,{','.join(LRS)}"
    if launcher == "basic":
        multirun(*LAUNCHERS[launcher], *args, wider, f"hydra.sweep.dir={sweep}")
    else:
        result = run_cli(f"resume={sweep}", wider)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    jobs = folders(sweep)
    assert sorted(jobs) == sorted(["0.02", *LRS]) and jobs["0.02"].name == "4"
    assert {lr: (jobs[lr] / "metrics.json").read_bytes() for lr in LRS} == before
    assert all((jobs[lr] / "train.log").read_text().count("reused, completed") >= 1 for lr in LRS)
    assert json.loads((jobs["0.02"] / "metrics.json").read_text())["status"] == "completed"
    rows = (sweep / "summary.csv").read_text().splitlines()[1:]
    assert len(rows) == 5 and all(r.split(",")[1] == "completed" for r in rows)  # the report covers all jobs


@pytest.mark.slow
def test_ddp_job_of_a_killed_sweep_resumes_on_both_ranks(args, tmp_path):
    # Lightning starts rank 1 by running the job's command again: it must resume too, not refuse the folder
    sweep = tmp_path / "sweep"
    command = [*args, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "optimizer.lr=0.1",
               f"hydra.sweep.dir={sweep}"]
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "task1.train", "--multirun", *command], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while proc.poll() is None and not last.exists():
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    step = torch.load(last, weights_only=True)["global_step"]
    assert step % 63, f"not killed mid-epoch (step {step})"  # each rank has half of the 125 batches

    multirun(*command)
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "completed"
    for log in ("train.log", "train_ddp_process_1.log"):
        assert f"resuming from {last} (epoch 1, step {step})" in (sweep / "0" / log).read_text()


HOLD = ("import sys, time\nfrom task1.io import hold\n"
        "with hold(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)")


@contextlib.contextmanager
def held(folder: Path):
    """Another process holding `folder`, as a running job does, until the block ends (then SIGKILL: no clean-up)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "held\n"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=60)


def test_a_folder_is_held_by_one_process_and_freed_when_that_one_is_killed(tmp_path):
    run = tmp_path / "run"
    with held(run) as pid, pytest.raises(FolderInUseError, match=rf"{run} is in use by process {pid} on \S+ "), \
            hold(run):
        pass
    # killed with its lock held: the kernel let it go; held here, also against another open in this process
    with hold(run), pytest.raises(FolderInUseError, match=f"process {os.getpid()} "), hold(run):
        pass


def test_a_run_into_a_folder_another_process_holds_stops_before_it_trains(fake_root, tmp_path):
    run = tmp_path / "run"
    with held(run) as pid:
        result = run_cli(f"data.root={fake_root}", "trainer=cpu", "trainer.max_epochs=1", f"hydra.run.dir={run}")
    assert f"{run} is in use by process {pid} on " in no_traceback(result)
    assert not {"metrics.json", "checkpoints", "config_resolved.yaml"} & {p.name for p in run.iterdir()}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_sweep_started_again_leaves_a_job_that_another_process_runs_to_it(args, tmp_path, launcher):
    # e.g. a SLURM job of the first start still running when the submitting command is started again
    sweep = tmp_path / "sweep"
    command = [*args, "optimizer.lr=0.1,0.2", f"hydra.sweep.dir={sweep}", *LAUNCHERS[launcher]]
    multirun(*command)
    result = (sweep / "0" / "metrics.json").read_bytes()
    (sweep / "0" / "metrics.json").unlink()  # job 0 as it is while it still trains
    with held(sweep / "0") as pid:
        files = {p: p.read_bytes() for p in (sweep / "0").rglob("*") if p.is_file()}
        again = run_cli("--multirun", *command)
        out = again.stdout + again.stderr
        assert again.returncode == 0 and "Traceback" not in out, out[-4000:]
        # nothing in the held folder changed: .hydra/*, train.log, checkpoints, .lock, byte for byte; no metrics
        assert {p: p.read_bytes() for p in (sweep / "0").rglob("*") if p.is_file()} == files
        assert out.count(f"{sweep / '0'} is in use by process {pid} on ") == 1, out[-4000:]
        assert "reused, completed" in (sweep / "1" / "train.log").read_text()
        rows = [r.split(",")[:2] for r in (sweep / "summary.csv").read_text().splitlines()[1:]]
        assert rows == [["0", "in use"], ["1", "completed"]]  # running elsewhere, not lost
        (sweep / "0" / "metrics.json").write_bytes(result)  # the holder finishes its job

    multirun(*command)  # the holder has ended: its result is reused
    assert (sweep / "0" / "metrics.json").read_bytes() == result
    assert "reused, completed in an earlier start" in (sweep / "0" / "train.log").read_text()


def test_a_folder_on_a_file_system_without_locks_is_used_with_a_warning(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(fd, command, arg=0):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "fcntl", no_locks)  # what an NFS mount without its lock service answers
    with hold(tmp_path / "run"):
        (tmp_path / "run" / "metrics.json").write_text("{}")
    assert f"{tmp_path / 'run'} cannot be locked here (No locks available)" in caplog.text


def _claim(sweep: str, num: int, overrides: list[str]) -> str:
    return job_folder(Path(sweep), num, overrides)


def test_jobs_claim_their_folders_under_a_lock_and_other_ranks_wait_for_rank_zero(tmp_path, monkeypatch):
    import multiprocessing

    # eight processes claim at once, four jobs twice over (the same overrides, in another order): one folder a job
    jobs = [[f"lr={i}", "seed=1"] for i in range(4)]
    calls = [(str(tmp_path), i % 4, jobs[i % 4] if i < 4 else jobs[i % 4][::-1]) for i in range(8)]
    with multiprocessing.get_context("fork").Pool(8) as pool:
        found = pool.starmap(_claim, calls)
    assert found[:4] == found[4:] and sorted(found[:4]) == ["0", "1", "2", "3"]

    # a rank other than 0 never claims: it waits for the folder rank 0 made, and says so when none comes
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert job_folder(tmp_path, 9, ["seed=1", "lr=2"]) == "2"
    with pytest.raises(Task1Error, match=r"rank 1 of job 9: rank 0 made no folder for it in .* within 1 s"):
        job_folder(tmp_path, 9, ["lr=7"], wait_s=1)
    assert not (tmp_path / "4").exists()


def test_the_other_ranks_of_a_slurm_job_follow_rank_zeros_decision(make_cfg, tmp_path, monkeypatch):
    for key, value in {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2"}.items():
        monkeypatch.setenv(key, value)
    folder = a_job(tmp_path / "job", "interrupted", checkpoint=True)
    rank1 = make_cfg(f"output_dir={folder}")
    monkeypatch.setenv("SLURM_PROCID", "1")
    with pytest.raises(Task1Error, match="rank 0 of this job decided nothing within 0 s"):
        from task1.sweeps.folders import _follow_rank_zero

        _follow_rank_zero(rank1, folder, wait_s=0)
    monkeypatch.setenv("SLURM_PROCID", "0")
    rank0 = make_cfg(f"output_dir={folder}")
    assert continue_job(rank0) is None and rank0.resume == str(folder)
    # a restarted job (its restart count) is another start: an old decision is not followed
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert continue_job(rank1) is None and rank1.resume == str(folder)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.raises(Task1Error, match="decided nothing"):
        _follow_rank_zero(make_cfg(f"output_dir={folder}"), folder, wait_s=0)
