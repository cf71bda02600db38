"""Sweeps on a real SLURM cluster (scripts/cluster.sh: two nodes on this machine): what clusters do to long jobs.

Each test runs `python -m task1.train -m hydra/launcher=slurm ...` as a user would, does to its jobs what a cluster
does (a time limit, SIGUSR2, `scontrol requeue`, SIGKILL, Ctrl-C of the command), and compares the results with an
uninterrupted run of the same jobs under the basic launcher: they must be equal to the last bit.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ROOT, make_fashion_mnist, run_cli

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
CLUSTER = Path(os.environ.get("TASK1_CLUSTER_DIR", "/tmp/task1-cluster"))
QUIET = ["logger=none", "figures.enabled=false", "trainer=cpu", "threads=1"]


def _up(env: dict) -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, env=env, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.split()[:1] in (["idle"], ["mix"], ["alloc"])


@pytest.fixture(scope="session")
def slurm() -> dict:
    """The environment that reaches the test cluster: started here (as root) when it is not up; in CI a cluster
    that cannot start fails the tests."""
    env = {**os.environ, "SLURM_CONF": str(CLUSTER / "slurm.conf"), "PYTHONUNBUFFERED": "1"}
    started = False
    if not _up(env) and os.geteuid() == 0:
        started = subprocess.run([str(ROOT / "scripts" / "cluster.sh"), "start"], env=env).returncode == 0
    if not _up(env):
        why = f"no SLURM cluster answers at {env['SLURM_CONF']} (scripts/cluster.sh start, as root)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    yield env
    if started:
        subprocess.run([str(ROOT / "scripts" / "cluster.sh"), "stop"], env=env)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist_cluster"), n_train=2000, n_test=200)


def sweep(env: dict, folder: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_cli("--multirun", "hydra/launcher=slurm", *overrides, f"hydra.sweep.dir={folder}", env=env,
                   timeout=timeout)


def start(env: dict, folder: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "task1.train", "-m", "hydra/launcher=slurm", *overrides, f"hydra.sweep.dir={folder}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def reference(folder: Path, *overrides: str) -> subprocess.CompletedProcess:
    """The same jobs, uninterrupted, one after the other in this machine's own process (the basic launcher)."""
    result = run_cli("--multirun", *overrides, f"hydra.sweep.dir={folder}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


def finals(folder: Path) -> dict[str, dict]:
    """job folder name -> (status, final metrics) of every job of a sweep."""
    out = {}
    for path in sorted(folder.glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        out[path.parent.name] = (metrics["status"], metrics["final"])
    return out


def squeue(env: dict, *args: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", *args], capture_output=True, text=True, env=env)
    return out.stdout.split()


def wait_for(what, timeout: float = 180, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while not (found := what()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(every)
    return found


def plant_pickles(submitit: Path, marker: Path) -> int:
    """A result pickle in each job's submitit folder whose unpickling writes `marker`: what anyone who can write
    the sweep folder could leave there. Returns how many."""
    import pickle

    class Planted:
        def __reduce__(self):
            return Path.write_text, (marker, "unpickled")

    folders = [p for p in submitit.iterdir() if p.is_dir()]
    for folder in folders:
        (folder / f"{folder.name}_result.pkl").write_bytes(pickle.dumps(Planted()))
    return len(folders)


def failing_squeue(folder: Path, hangs: bool = False) -> tuple[Path, Path]:
    """A folder holding an `squeue` that fails, as an unreachable controller makes it fail (or, `hangs`, gives no
    answer at all outside a job), while the flag file exists (else it is the real one), and that flag: put the
    folder first on PATH."""
    folder.mkdir()
    flag, real = folder / "down", subprocess.run(["which", "squeue"], capture_output=True, text=True).stdout.strip()
    down = ("[ -z \"$SLURM_JOB_ID\" ] && exec sleep 600" if hangs else
            "echo 'squeue: error: slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2; "
            "exit 1")
    (folder / "squeue").write_text(f"#!/bin/sh\nif [ -e {flag} ]; then {down}; fi\nexec {real} \"$@\"\n")
    (folder / "squeue").chmod(0o755)
    return folder, flag


def log(folder: Path) -> str:
    return "".join(p.read_text() for p in sorted(folder.glob("*.log")))


def test_a_cpu_node_sweep_ctrl_c_collect_and_restart_submit_only_what_needs_work(slurm, small, tmp_path):
    args = [f"paths.data_dir={small}", *QUIET, "trainer.max_epochs=80", "model=mlp", "model.num_hiddens=32",
            "data.batch_size=16", "optimizer.lr=0.1,0.3"]
    with ThreadPoolExecutor(1) as pool:
        uninterrupted = pool.submit(reference, tmp_path / "basic", *args)
        # Ctrl-C of the submitting command: one line, and the jobs go on
        folder = tmp_path / "slurm"
        command = start(slurm, folder, *args)
        wait_for(lambda: list(folder.glob("*/checkpoints/last.ckpt")))
        command.send_signal(signal.SIGINT)
        out = command.communicate(timeout=60)[0]
        assert command.returncode == 130, out[-3000:]
        said = [line for line in out.splitlines() if "Interrupted:" in line]
        assert len(said) == 1 and "Traceback" not in out, out[-3000:]
        array = said[0].split("squeue -j ")[1].split()[0]
        assert f"Cancel them: scancel {array}" in said[0] and "run this command again" in said[0]
        assert squeue(slurm, "-j", array), "the jobs were to go on in SLURM"
        # whoever can write the sweep folder leaves result pickles there: the command never unpickles them
        marker = tmp_path / "unpickled"
        assert plant_pickles(folder / ".submitit", marker) >= 2  # (and the array's own folder)
        # the same command again collects them: it submits nothing new and waits for the running jobs
        began = time.monotonic()
        result = sweep(slurm, folder, *args)
        collect_s = time.monotonic() - began
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        assert "waiting for 2 SLURM jobs of an earlier start" in result.stdout + result.stderr
        assert "submitting" not in result.stdout + result.stderr
        ref = uninterrupted.result()
    assert finals(folder) == finals(tmp_path / "basic")
    assert all(status == "completed" for status, _ in finals(folder).values())
    assert not marker.exists(), "a planted result pickle was unpickled"
    assert (folder / "summary.md").is_file() and "2 completed" in (folder / "summary.md").read_text()
    # a completed sweep started again submits nothing, and changes nothing
    before = {p: p.read_bytes() for p in folder.glob("*/metrics.json")}
    logs = sorted((folder / ".submitit").iterdir())
    began = time.monotonic()
    again = sweep(slurm, folder, *args)
    restart_s = time.monotonic() - began
    out = again.stdout + again.stderr
    assert again.returncode == 0 and "nothing to submit" in out and "submitting" not in out, out[-3000:]
    assert sorted((folder / ".submitit").iterdir()) == logs
    assert {p: p.read_bytes() for p in folder.glob("*/metrics.json")} == before
    print(f"\ncollect after Ctrl-C: {collect_s:.1f} s; restart of the completed sweep: {restart_s:.1f} s; "
          f"basic launcher: {ref.stdout.count('final metrics')} jobs")


@pytest.mark.parametrize("override, message", [
    ("hydra.launcher.gpus_per_node=1", r"hydra.launcher.gpus_per_node=1 \(from trainer=gpu / trainer.devices\) asks "
                                       r"for more than the nodes of partition \(the default\) have \(no GPU\)"),
    ("hydra.launcher.mem_gb=4000", r"hydra.launcher.mem_gb=4000 is more than the nodes of partition \(the default\) "
                                   r"have \(\d+ MB at most\): set hydra.launcher.mem_gb=\d+ or less"),
    ("threads=64", r"hydra.launcher.cpus_per_task=64 x tasks_per_node=1 asks for 64 CPUs on a node, and the nodes"),
    ("hydra.launcher.partition=nope", r"SLURM refused the sweep's jobs \(sbatch: error: Batch job submission failed: "
                                      r"Invalid partition name specified\).* hydra.launcher.partition=nope is what it "
                                      r"refused"),
    ("hydra.launcher.partition=short", r"hydra.launcher.timeout_min=60 is longer than partition short allows \(1 "
                                       r"minutes\)"),
])
def test_a_request_the_cluster_cannot_satisfy_is_one_line_naming_the_field(slurm, small, tmp_path, override,
                                                                          message):
    import re

    before = squeue(slurm)
    result = sweep(slurm, tmp_path, f"paths.data_dir={small}", *QUIET, "optimizer.lr=0.1,0.3", override, timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if line.strip()]
    assert re.search(message, lines[-1]), lines[-3:]
    assert squeue(slurm) == before  # nothing left in the queue


def test_a_job_pending_for_a_reason_that_never_clears_is_reported(slurm, small, tmp_path):
    failed = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "false"], capture_output=True,
                            text=True, env=slurm)
    dependency = failed.stdout.strip()
    wait_for(lambda: not squeue(slurm, "-j", dependency))
    result = sweep(slurm, tmp_path, f"paths.data_dir={small}", *QUIET, "optimizer.lr=0.1",
                   f"+hydra.launcher.additional_parameters={{dependency:afterok:{dependency}}}", timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "SLURM cannot run it: it waits for a reason that does not clear (DependencyNeverSatisfied)" in out
    metrics = json.loads((tmp_path / "0" / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and "DependencyNeverSatisfied" in metrics["error"]
    assert "1 jobs, 1 not completed" in out  # the report lists it
    assert not squeue(slurm, "-t", "pending")  # cancelled, not left waiting


@pytest.fixture(scope="module")
def real(real_root) -> str:
    return f"paths.data_dir={real_root.resolve()}"


def test_a_job_longer_than_its_time_limit_is_requeued_and_resumes_exactly(slurm, real, tmp_path):
    base = [real, *QUIET, "model=mlp", "data.batch_size=256", "optimizer.lr=0.1"]
    # as many epochs as take about 70 s here: the warning (15 s before the 1-minute limit) stops the first start
    probe = reference(tmp_path / "probe", *base, "trainer.max_epochs=3")
    per_epoch = json.loads((tmp_path / "probe" / "0" / "metrics.json").read_text())["wall_time_s"] / 3
    args = [*base, f"trainer.max_epochs={max(20, math.ceil(70 / per_epoch))}"]
    with ThreadPoolExecutor(1) as pool:
        uninterrupted = pool.submit(reference, tmp_path / "basic", *args)
        began = time.monotonic()
        result = sweep(slurm, tmp_path / "slurm", *args, "hydra.launcher.timeout_min=1")
        took = time.monotonic() - began
        uninterrupted.result()
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    job_log = log(tmp_path / "slurm" / "0")
    assert "SIGUSR2: the time limit is near" in job_log and "requeueing SLURM job" in job_log
    assert "resuming from" in job_log
    assert finals(tmp_path / "slurm") == finals(tmp_path / "basic")
    assert finals(tmp_path / "slurm")["0"][0] == "completed"
    assert probe.returncode == 0
    print(f"\n1-minute limit, {args[-1]}: {took:.0f} s through SLURM, {job_log.count('requeueing')} requeue(s)")


@pytest.fixture(scope="module")
def long_jobs(real, tmp_path_factory) -> tuple[list[str], dict]:
    """Two jobs of some 30 s each, and their uninterrupted results."""
    args = [real, *QUIET, "model=mlp", "model.num_hiddens=64", "data.batch_size=64", "trainer.max_epochs=6",
            "checkpoint_every_n_steps=100", "optimizer.lr=0.1,0.3"]
    folder = tmp_path_factory.mktemp("uninterrupted")
    reference(folder, *args)
    return args, finals(folder)


def running_jobs(env: dict, folder: Path) -> dict[str, str]:
    """job folder -> SLURM job id, of each job whose folder holds a mid-epoch checkpoint."""
    found = {}
    for lock in folder.glob("*/.lock"):
        if (lock.parent / "checkpoints" / "last.ckpt").is_file() and "SLURM job" in lock.read_text():
            found[lock.parent.name] = lock.read_text().split("SLURM job ")[1].split(")")[0]
    return found if len(found) == 2 else {}


def test_preemption_and_requeue_mid_epoch_resume_exactly(slurm, long_jobs, tmp_path):
    args, uninterrupted = long_jobs
    command = start(slurm, tmp_path, *args)
    jobs = wait_for(lambda: running_jobs(slurm, tmp_path))
    # preempted with a warning (SIGUSR1, the signal Lightning's own requeue would take; SIGUSR2, submitit's, is
    # the time limit's test), and taken back without one (SIGTERM, then requeued by SLURM)
    subprocess.run(["scancel", "--signal=USR1", jobs["0"]], env=slurm, check=True)
    subprocess.run(["scontrol", "requeue", jobs["1"]], env=slurm, check=True)
    out = command.communicate(timeout=600)[0]
    assert command.returncode == 0, out[-3000:]
    assert "SIGUSR1: preempted" in log(tmp_path / "0") and "requeueing SLURM job" in log(tmp_path / "0")
    for job in ("0", "1"):
        assert "job stopped: Stopped by a signal" in log(tmp_path / job) and "resuming from" in log(tmp_path / job)
        assert not list((tmp_path / job).glob("hpc_ckpt*"))  # Lightning's own requeue is off
    assert finals(tmp_path) == uninterrupted


@pytest.mark.parametrize("hangs, said", [
    (False, "squeue ended with status 1: squeue: error: slurm_load_jobs error: Unable to contact slurm controller"),
    (True, "squeue gave no answer within 15 s"),
])
def test_a_scheduler_that_does_not_answer_is_asked_again_then_given_up_on_in_one_line(slurm, long_jobs, tmp_path,
                                                                                      hangs, said):
    args, uninterrupted = long_jobs
    # the jobs wait 45 s before they start: longer than the command's patience (15 s here) on any machine
    args = [*args, "+hydra.launcher.additional_parameters={begin:now+45}"]
    wrappers, flag = failing_squeue(tmp_path / "bin", hangs)
    flag.touch()  # squeue fails (or hangs) from the start, for longer than the command's patience
    command = start({**slurm, "PATH": f"{wrappers}:{slurm['PATH']}"}, tmp_path / "sweep", *args,
                    "hydra.launcher.scheduler_patience_min=0.25")
    out = command.communicate(timeout=300)[0]
    assert command.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert out.count(f"SLURM does not answer ({said}") == 1, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert "SLURM has not answered squeue for 0.25 minutes" in last and "run this command again" in last, last
    assert "no longer known" not in out and "without finishing" not in out
    # the jobs were left as they are (waiting in SLURM), and no folder says "interrupted"
    array = out.split("squeue -j ")[1].split(";")[0]
    assert len(squeue(slurm, "-j", array, "-t", "pending", "-o", "%i")) == 2
    assert not any('"interrupted"' in p.read_text() for p in (tmp_path / "sweep").glob("*/metrics.json"))
    # the scheduler back, the same command follows the jobs still waiting (it submits nothing) and collects them
    again = sweep(slurm, tmp_path / "sweep", *args)
    out = again.stdout + again.stderr
    assert again.returncode == 0 and f"waiting for 2 SLURM jobs of an earlier start: {array}_" in out, out[-3000:]
    assert "submitting" not in out
    assert finals(tmp_path / "sweep") == uninterrupted


def test_a_killed_job_never_hangs_the_command_and_resumes_from_its_checkpoint(slurm, long_jobs, tmp_path):
    kill_and_resume(slurm, long_jobs, tmp_path)


def kill_and_resume(slurm: dict, long_jobs: tuple[list[str], dict], tmp_path: Path) -> str:
    """SIGKILL one job's process mid-epoch: the command ends with the report, and the same command again resumes
    the job to the uninterrupted metrics. Returns the killed job's SLURM id."""
    args, uninterrupted = long_jobs
    command = start(slurm, tmp_path, *args)
    jobs = wait_for(lambda: running_jobs(slurm, tmp_path))
    pid = int((tmp_path / "0" / ".lock").read_text().split()[1])
    os.kill(pid, signal.SIGKILL)  # the OOM killer, a node lost: no handler runs
    out = command.communicate(timeout=300)[0]
    assert command.returncode == 0, out[-3000:]
    assert f"job 0: SLURM job {jobs['0']} ended as" in out and "without finishing" in out
    status = finals(tmp_path)
    assert status["0"][0] == "interrupted" and status["1"] == uninterrupted["1"]
    assert "2 jobs, 1 not completed" in out
    again = sweep(slurm, tmp_path, *args)
    out = again.stdout + again.stderr
    assert again.returncode == 0 and "submitting 1 job to SLURM" in out, out[-3000:]
    assert "resuming from" in log(tmp_path / "0")
    assert finals(tmp_path) == uninterrupted
    return jobs["0"]


DDP = ["logger=none", "figures.enabled=false", "trainer=ddp", "trainer.accelerator=cpu", "trainer.max_epochs=2",
       "model=mlp", "model.num_hiddens=32", "data.batch_size=16", "threads=1", "optimizer.lr=0.1"]


@pytest.fixture(scope="module")
def local_ddp(small, tmp_path_factory) -> dict:
    """The final metrics of the 2-process DDP run on this machine, without SLURM."""
    folder = tmp_path_factory.mktemp("local_ddp")
    local = run_cli(f"paths.data_dir={small}", *DDP, "trainer.devices=2", f"hydra.run.dir={folder}")
    assert local.returncode == 0, (local.stdout + local.stderr)[-3000:]
    return json.loads((folder / "metrics.json").read_text())["final"]


# two ranks: two tasks on one node, or one task on each of the two nodes
@pytest.mark.parametrize("placement, asked, nodes", [
    (["trainer.devices=2"], "nodes=1, tasks_per_node=2", {"n1", "n2"}),
    (["trainer.devices=1", "trainer.num_nodes=2"], "nodes=2, tasks_per_node=1", {"n[1-2]"}),
])
def test_a_multi_task_job_trains_ddp_into_one_folder(slurm, small, local_ddp, tmp_path, placement, asked, nodes):
    result = sweep(slurm, tmp_path, f"paths.data_dir={small}", *DDP, *placement)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and asked in out, out[-3000:]
    job = tmp_path / "0"
    assert [p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")] == ["0"]
    assert (job / "train_rank_1.log").is_file() and "rank 1/2 final" in (job / "train_rank_1.log").read_text()
    assert finals(tmp_path) == {"0": ("completed", local_ddp)}
    job_id = next(p.name for p in (tmp_path / ".submitit").iterdir() if p.is_dir())
    ran_on = squeue(slurm, "-t", "all", "-j", job_id, "-o", "%N")
    assert set(ran_on) <= nodes and ran_on, ran_on  # two tasks on one node; one task on each node


@pytest.fixture
def accounting(slurm):
    """The test cluster restarted with an accounting database (slurmdbd on MariaDB), then restarted without."""
    script = str(ROOT / "scripts" / "cluster.sh")
    if os.geteuid() != 0:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("restarting the cluster with accounting needs root")
    subprocess.run([script, "stop"], env=slurm, check=True)
    try:
        started = subprocess.run([script, "start", "--accounting"], env=slurm).returncode == 0
        if not (started and _up(slurm)):
            pytest.fail("the cluster did not start with accounting (scripts/cluster.sh start --accounting)")
        yield slurm
    finally:
        subprocess.run([script, "stop"], env=slurm)
        subprocess.run([script, "start"], env=slurm, check=True)


def test_a_killed_job_never_hangs_the_command_with_an_accounting_database_either(accounting, long_jobs, tmp_path):
    job = kill_and_resume(accounting, long_jobs, tmp_path)
    # sacct knows the job here (without accounting it fails): the launcher never needed it
    states = subprocess.run(["sacct", "-n", "-X", "-j", job, "-o", "State"], capture_output=True, text=True,
                            env=accounting)
    assert states.returncode == 0 and states.stdout.split()[:1] in (["FAILED"], ["CANCELLED"]), states


def test_a_search_started_again_takes_the_result_of_a_trial_whose_job_outlived_its_command(slurm, real, tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    args = ["hparams_search=optuna", real, *QUIET, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
            "hydra/sweeper/pruner=nop", "trainer.max_epochs=20", "data.batch_size=256", "model.num_hiddens=64"]
    command = start(slurm, tmp_path, *args)
    wait_for(lambda: (tmp_path / "0" / "checkpoints" / "last.ckpt").is_file())
    command.kill()  # the submitting command dies without a word; its trial's SLURM job goes on
    command.communicate(timeout=60)
    job = (tmp_path / "0" / ".lock").read_text().split("SLURM job ")[1].split(")")[0]
    assert squeue(slurm, "-j", job)
    result = sweep(slurm, tmp_path, *args)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "trial 0 still runs" in out and "recorded as failed" not in out
    study = optuna.load_study(study_name="mlp_fashion_mnist",
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "optuna_journal.log"))))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for trial in study.trials:  # each trial's value is what its job's metrics.json says
        metrics = json.loads((tmp_path / str(trial.number) / "metrics.json").read_text())
        assert metrics["status"] == "completed" and trial.value == metrics["final"]["val/acc"]


def test_search_trials_in_flight_start_as_soon_as_one_ends_on_slurm(slurm, tmp_path, monkeypatch):
    import test_search_async

    # the same app as under joblib and submitit_local: another Hydra app than task1's, on task1's SLURM launcher
    monkeypatch.setenv("SLURM_CONF", slurm["SLURM_CONF"])
    monkeypatch.setitem(test_search_async.LAUNCHERS, "slurm", ["hydra/launcher=slurm"])
    test_search_async.test_trials_start_as_soon_as_one_ends(tmp_path, "slurm")


def test_the_cluster_script_refuses_a_folder_others_can_write_and_kills_only_its_own_daemons(tmp_path):
    script = str(ROOT / "scripts" / "cluster.sh")
    bystander = subprocess.Popen(["sleep", "300"])  # any process whose PID a planted file names

    def stop(folder: Path) -> subprocess.CompletedProcess:
        for daemon in ("slurmd-n1", "slurmctld", "munged"):
            (folder / f"{daemon}.pid").write_text(str(bystander.pid))
        return subprocess.run([script, "stop"], env={**os.environ, "TASK1_CLUSTER_DIR": str(folder)},
                              capture_output=True, text=True, timeout=60)

    hosts = Path("/etc/hosts").read_text()  # (the running cluster's node names there are not these folders')
    try:
        writable, link = tmp_path / "writable", tmp_path / "link"
        writable.mkdir()
        writable.chmod(0o777)
        link.symlink_to(writable)
        refused = [writable, link]
        if os.geteuid() == 0:  # root can make a folder that another user owns
            refused.append(tmp_path / "nobody")
            refused[-1].mkdir()
            os.chown(refused[-1], 65534, 65534)
        for folder in refused:
            out = stop(folder)
            lines = out.stderr.strip().splitlines()
            assert out.returncode == 1 and len(lines) == 1, out.stderr
            assert f"{folder} is not a folder of" in lines[0] and "set TASK1_CLUSTER_DIR" in lines[0], lines
        # a folder of our own: a PID file that names a process other than its daemon is left alone
        own = tmp_path / "own"
        own.mkdir(mode=0o755)
        out = stop(own)
        assert out.returncode == 0 and "slurmctld.pid names no live slurmctld (left alone)" in out.stderr, out.stderr
        assert bystander.poll() is None, "the cluster script killed a process that was not its daemon"
        assert Path("/etc/hosts").read_text() == hosts
    finally:
        bystander.kill()
        bystander.wait()


def test_a_sweep_and_a_search_recover_from_every_kind_of_fault(slurm, tmp_path):
    """scripts/faults.py's short schedule: each kind of fault once on a sweep and a search; started again, they end
    with every job completed and exactly the metrics (and figures) of the uninterrupted run, no trial failed,
    nothing trained twice, no file corrupt. (In this file: --dist loadfile keeps the cluster's tests in one worker,
    and the accounting test restarts the cluster.)"""
    import importlib.util

    if os.geteuid() != 0:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("losing a node and filling a disk need root")
    spec = importlib.util.spec_from_file_location("faults", ROOT / "scripts" / "faults.py")
    faults = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(faults)
    data = make_fashion_mnist(tmp_path / "data", n_train=2000, n_test=200)
    # seed 6: the sweep gets preempt, requeue, squeue_down and disk_full; the search interrupt, kill, drawer_killed
    # and node_lost (a search's trial that a full disk fails stays failed: see docs/clusters.md)
    said, problems = faults.campaign(seed=6, count=len(faults.FAULTS), work=tmp_path, data=data, jobs=3, epochs=25)
    print("\n".join(said))
    assert not problems, "\n".join(problems)
    injected = [line for line in said if any(f"] {c}: {f}: job (" in line for c in ("sweep", "search")
                                                for f in faults.FAULTS)]
    assert len(injected) >= len(faults.FAULTS) - 3, said  # (a fault finds no job under way only near the end)


# --- packed sweeps on SLURM (hydra.launcher.pack): one SLURM job per pack

PACKED = ["seed=0,1,2,3", "hydra.launcher.pack=2"]


def packed_reference(folder: Path, *overrides: str) -> dict[str, dict]:
    """The same sweep packed in this machine's own process (hydra/launcher=packed), uninterrupted: its finals."""
    result = run_cli("--multirun", "hydra/launcher=packed", *overrides, f"hydra.sweep.dir={folder}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return finals(folder)


def pack_jobs(folder: Path) -> dict[str, list[str]]:
    """SLURM job id -> the job folders whose `.slurm_job` names it."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*/.slurm_job")):
        found.setdefault(path.read_text().strip(), []).append(path.parent.name)
    return found


def test_a_packed_sweep_sends_one_slurm_job_per_pack_and_equals_the_local_packed_launcher(slurm, small, tmp_path):
    args = [f"paths.data_dir={small}", *QUIET, "trainer.max_epochs=2", *PACKED]
    with ThreadPoolExecutor(1) as pool:
        local = pool.submit(packed_reference, tmp_path / "local", *args)
        result = sweep(slurm, tmp_path / "slurm", *args)
        out = result.stdout + result.stderr
        assert result.returncode == 0, out[-3000:]
        assert "submitting 2 jobs to SLURM" in out and out.count("pack of 2:") == 2, out[-3000:]
        tasks = [p.name for p in (tmp_path / "slurm" / ".submitit").iterdir() if "_" in p.name[1:]]
        assert len([t for t in tasks if t.replace("_", "").isdigit()]) == 2, tasks  # <array>_<index>: a SLURM job
        assert sorted(pack_jobs(tmp_path / "slurm").values()) == [["0", "1"], ["2", "3"]]
        assert all((tmp_path / "slurm" / job / "checkpoints" / "pack_state.ckpt").is_file() for job in "0123")
        assert finals(tmp_path / "slurm") == local.result()  # bit for bit (stack=loop)
    assert [status for status, _ in finals(tmp_path / "slurm").values()] == ["completed"] * 4


@pytest.fixture(scope="module")
def long_packs(small, tmp_path_factory) -> tuple[list[str], dict]:
    """Two packs of two jobs each, some 20 s each here, and their uninterrupted packed results."""
    args = [f"paths.data_dir={small}", *QUIET, "model=mlp", "model.num_hiddens=32", "data.batch_size=16",
            "trainer.max_epochs=60", *PACKED]
    return args, packed_reference(tmp_path_factory.mktemp("packed"), *args)


@pytest.mark.parametrize("how", ["SIGKILL", "scancel"])
def test_a_killed_pack_resumes_every_member_exactly_and_finished_packs_are_reused(slurm, long_packs, tmp_path, how):
    args, uninterrupted = long_packs
    folder = tmp_path / "slurm"
    command = start(slurm, folder, *args)
    # the pack of jobs 0 and 1 has ended an epoch: its process is killed (a node lost; no handler runs), or its
    # SLURM job cancelled (SIGTERM: the pack stops at once)
    wait_for(lambda: (folder / "1" / "checkpoints" / "pack_state.ckpt").is_file())
    if how == "SIGKILL":
        os.kill(int((folder / "0" / ".lock").read_text().split()[1]), signal.SIGKILL)
    else:
        subprocess.run(["scancel", (folder / "0" / ".slurm_job").read_text().strip()], env=slurm, check=True)
    out = command.communicate(timeout=300)[0]
    assert command.returncode == 0 and "4 jobs, 2 not completed" in out, out[-3000:]
    status = finals(folder)
    assert status["0"][0] == status["1"][0] == "interrupted"
    assert status["2"][0] == status["3"][0] == "completed"
    done = {p: p.read_bytes() for p in (folder / "2" / "metrics.json", folder / "3" / "metrics.json")}
    # the same command again: the killed pack alone goes to SLURM, each member resumes from its pack state
    again = sweep(slurm, folder, *args)
    out = again.stdout + again.stderr
    assert again.returncode == 0 and "submitting 1 job to SLURM" in out and "pack of 2:" in out, out[-3000:]
    for job in ("0", "1"):
        assert "resuming after epoch" in log(folder / job)
    assert {p: p.read_bytes() for p in done} == done  # the finished pack's members reused, untouched
    assert finals(folder) == uninterrupted


def test_a_preempted_pack_requeues_itself_and_resumes_every_member_exactly(slurm, long_packs, tmp_path):
    args, uninterrupted = long_packs
    command = start(slurm, tmp_path, *args)
    wait_for(lambda: (tmp_path / "1" / "checkpoints" / "pack_state.ckpt").is_file())
    job = (tmp_path / "0" / ".slurm_job").read_text().strip()
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm, check=True)  # preempted, with a warning
    out = command.communicate(timeout=600)[0]
    assert command.returncode == 0 and "4 jobs, 0 not completed" in out, out[-3000:]
    said = "".join(p.read_text() for p in (tmp_path / ".submitit" / job).glob("*.out"))
    assert "SIGUSR1: preempted: requeueing SLURM job" in said, said[-3000:]
    for member in ("0", "1"):
        assert "resuming after epoch" in log(tmp_path / member)
    assert finals(tmp_path) == uninterrupted


def test_a_packed_sweep_started_again_after_ctrl_c_adopts_its_running_packs(slurm, long_packs, tmp_path):
    args, uninterrupted = long_packs
    command = start(slurm, tmp_path, *args)
    wait_for(lambda: (tmp_path / "1" / "checkpoints" / "pack_state.ckpt").is_file())
    command.send_signal(signal.SIGINT)
    out = command.communicate(timeout=60)[0]
    assert command.returncode == 130 and out.count("Interrupted: the SLURM jobs go on") == 1, out[-3000:]
    # the same command again follows the two packs (one SLURM job each, named by all their members' folders)
    again = sweep(slurm, tmp_path, *args)
    out = again.stdout + again.stderr
    assert again.returncode == 0 and "waiting for 2 SLURM jobs of an earlier start" in out, out[-3000:]
    assert "submitting" not in out and len(pack_jobs(tmp_path)) == 2
    assert finals(tmp_path) == uninterrupted


def test_a_pack_warned_before_it_ends_an_epoch_is_not_requeued_and_its_members_say_why(slurm, small, tmp_path):
    # epochs of some seconds (a batch of one example): the warning comes while the pack trains its first epoch
    args = [f"paths.data_dir={small}", *QUIET, "model=mlp", "data.batch_size=1", "trainer.max_epochs=2", "seed=0,1",
            "hydra.launcher.pack=2"]
    command = start(slurm, tmp_path, *args)
    wait_for(lambda: "SLURM job" in holder_of(tmp_path / "1"), every=0.1)
    subprocess.run(["scancel", "--signal=USR2", (tmp_path / "0" / ".slurm_job").read_text().strip()], env=slurm,
                   check=True)
    out = command.communicate(timeout=300)[0]
    assert command.returncode == 0 and "2 jobs, 2 not completed" in out, out[-3000:]
    for job in ("0", "1"):
        metrics = json.loads((tmp_path / job / "metrics.json").read_text())
        assert metrics["status"] == "failed" and "before the pack ended an epoch" in metrics["error"], metrics
        assert "Raise hydra.launcher.timeout_min" in metrics["error"]
    assert "requeueing" not in "".join(p.read_text() for p in (tmp_path / ".submitit").glob("*/*.out"))


def holder_of(folder: Path) -> str:
    try:
        return (folder / ".lock").read_text()
    except OSError:
        return ""


@pytest.mark.parametrize("override, said", [
    ("hydra.launcher.pack=0", "hydra.launcher.pack=0 is not allowed: expected the most members in a pack"),
    ("hydra.launcher.stack=fused", "hydra.launcher.stack=fused is not allowed: expected one of loop, vmap."),
])
def test_a_bad_pack_setting_is_one_line_before_anything_is_submitted(small, tmp_path, override, said):
    result = run_cli("--multirun", "hydra/launcher=slurm", "hydra.launcher.pack=2", override, "seed=0,1",
                     f"paths.data_dir={small}", *QUIET, f"hydra.sweep.dir={tmp_path}")
    out = result.stdout + result.stderr
    assert result.returncode == 1 and said in out.strip().splitlines()[-1] and "Traceback" not in out, out[-3000:]
    assert not (tmp_path / ".submitit").exists()


def test_a_pack_longer_than_its_time_limit_is_requeued_and_resumes_exactly(slurm, small, tmp_path):
    # a pack of 2-4 minutes here (35 s for 250 epochs on a quiet machine, 70 s on a loaded one): the warning (15 s
    # before the 1-minute limit) stops its first start, whatever the load
    args = [f"paths.data_dir={small}", *QUIET, "model=mlp", "model.num_hiddens=32", "data.batch_size=16",
            "trainer.max_epochs=1000", "seed=0,1", "hydra.launcher.pack=2"]
    with ThreadPoolExecutor(1) as pool:
        uninterrupted = pool.submit(packed_reference, tmp_path / "local", *args)
        result = sweep(slurm, tmp_path / "slurm", *args, "hydra.launcher.timeout_min=1")
        out = result.stdout + result.stderr
        assert result.returncode == 0 and "2 jobs, 0 not completed" in out, out[-3000:]
        said = "".join(p.read_text() for p in (tmp_path / "slurm" / ".submitit").glob("*/*.out"))
        assert "SIGUSR2: the time limit is near: requeueing SLURM job" in said, said[-3000:]
        assert "resuming after epoch" in log(tmp_path / "slurm" / "0")
        assert finals(tmp_path / "slurm") == uninterrupted.result()


def test_a_pack_on_a_lost_node_is_requeued_by_slurm_and_resumes_exactly(slurm, long_packs, tmp_path):
    args, uninterrupted = long_packs
    command = start(slurm, tmp_path, *args)
    wait_for(lambda: (tmp_path / "1" / "checkpoints" / "pack_state.ckpt").is_file())
    job = (tmp_path / "0" / ".slurm_job").read_text().strip()
    node = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True, env=slurm).stdout
    cluster = [str(ROOT / "scripts" / "cluster.sh")]
    subprocess.run([*cluster, "lose", node.strip()], env=slurm, check=True)  # its processes SIGKILLed, node down
    try:
        time.sleep(3)
    finally:
        subprocess.run([*cluster, "restore", node.strip()], env=slurm, check=True)
    out = command.communicate(timeout=600)[0]
    assert command.returncode == 0 and "4 jobs, 0 not completed" in out, out[-3000:]
    for member in ("0", "1"):
        assert "resuming after epoch" in log(tmp_path / member)
    assert finals(tmp_path) == uninterrupted


def test_a_search_on_slurm_sends_each_batch_of_trials_as_one_pack_and_ends_as_the_local_packed_search(slurm, small,
                                                                                                    tmp_path):
    from test_packed_search import PACKED as SEARCH_PACKED
    from test_packed_search import trials_of

    # 8 trials, n_jobs=4: two batches, each one SLURM job of a pack of 4; the local packed search is the reference
    args = [*SEARCH_PACKED, f"data.root={small}", "threads=1", "hydra.launcher.pack=4"]
    local = run_cli("--multirun", *args, "hydra/launcher=packed", f"hydra.sweep.dir={tmp_path / 'local'}")
    assert local.returncode == 0, (local.stdout + local.stderr)[-3000:]
    result = sweep(slurm, tmp_path / "slurm", *args)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "trials: batches of 4 (SlurmLauncher)" in out and out.count("pack of 4:") == 2, out[-3000:]
    tasks = [p.name for p in (tmp_path / "slurm" / ".submitit").iterdir()]
    assert len([t for t in tasks if t.replace("_", "").isdigit()]) == 2, tasks  # a folder per SLURM job
    # each member reported to its own trial from its SLURM job: the study equals the local one, values and all
    assert trials_of(tmp_path / "slurm") == trials_of(tmp_path / "local")
    assert {t[2].name for t in trials_of(tmp_path / "slurm")} == {"PRUNED", "COMPLETE"}
