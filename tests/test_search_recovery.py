"""A search stopped any way loses no trial: real Optuna searches (basic and joblib launchers) killed, interrupted,
or with a launch that raises, then started again."""

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT, make_fashion_mnist, run_cli
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from test_edges import mount_namespace  # noqa: F401 (a fixture)

from task1.sweeps.folders import held

N_TRAIN, BATCH = 2000, 16  # 125 steps an epoch
JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]


@pytest.fixture(scope="module")
def args(tmp_path_factory) -> list[str]:
    root = make_fashion_mnist(tmp_path_factory.mktemp("fmnist_search_recovery"), n_train=N_TRAIN, n_test=200)
    return ["hparams_search=optuna", "hydra/sweeper/pruner=nop", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
            "optimizer.lr=choice(0.05,0.1,0.2,0.3)", f"data.root={root}", "trainer=cpu", "trainer.max_epochs=2",
            "model=mlp", "model.num_hiddens=32", f"data.batch_size={BATCH}", "data.val_size=200",
            "checkpoint_every_n_steps=10", "logger=none", "figures.enabled=false", "threads=1"]


def study_of(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name="mlp_fashion_mnist",
                             storage=JournalStorage(JournalFileBackend(str(sweep / "optuna_journal.log"))))


def metrics(folder: Path) -> dict:
    try:
        return json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_for(what, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (found := what()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
    return found


def start(log: Path, *overrides: str) -> subprocess.Popen:
    """The search command, in a session of its own, its output in `log` (its workers may outlive it)."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "task1.train", "--multirun", *overrides], cwd=ROOT, text=True,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def end(proc: subprocess.Popen) -> None:
    """Whatever is left of the command and its workers, killed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def mid_run(sweep: Path, trials: str) -> bool:
    return all((sweep / t / "checkpoints" / "last.ckpt").is_file() for t in trials)


def search(*overrides: str) -> str:
    result = run_cli("--multirun", *overrides)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "Traceback" not in out, out[-4000:]
    return out


def check_told(sweep: Path, study: optuna.Study) -> None:
    """Every trial complete, its value exactly what its job's metrics.json says."""
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE, trial
        assert trial.value == metrics(sweep / str(trial.number))["final"]["val/acc"]


def uninterrupted(folder: Path, tmp_path: Path) -> dict:
    """metrics.json of a single run of the job in `folder`'s own overrides, never stopped."""
    overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
    out = tmp_path / f"reference_{folder.name}"
    result = run_cli(*overrides, f"hydra.run.dir={out}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return metrics(out)


@pytest.mark.slow
def test_a_search_started_again_takes_the_results_of_jobs_that_ended_after_it_was_killed(args, tmp_path):
    # the command dies; its joblib workers' jobs go on and end, as a SLURM job outlives its command
    sweep = tmp_path / "sweep"
    longer = [a if not a.startswith("trainer.max_epochs=") else "trainer.max_epochs=10" for a in args]
    command = [*longer, *JOBLIB, f"hydra.sweep.dir={sweep}"]  # both still train when the second has begun
    proc = start(tmp_path / "first.log", *command)
    try:
        wait_for(lambda: mid_run(sweep, "01"))
        os.kill(proc.pid, signal.SIGKILL)  # the command alone
        proc.wait(timeout=60)
        assert [t.state for t in study_of(sweep).trials] == [TrialState.RUNNING] * 2
        wait_for(lambda: all(metrics(sweep / t).get("status") == "completed" and not held(sweep / t)
                             for t in "01"))
    finally:
        end(proc)
    finished = {t: (sweep / t / "metrics.json").read_bytes() for t in "01"}

    out = search(*command)
    assert "recorded as failed" not in out and "launched again" not in out and "still runs" not in out
    study = study_of(sweep)
    assert len(study.trials) == 2
    check_told(sweep, study)
    assert {t: (sweep / t / "metrics.json").read_bytes() for t in "01"} == finished  # read, not trained again


@pytest.mark.slow
@pytest.mark.parametrize("how", ["basic, killed", "joblib, Ctrl-C"])
def test_a_search_started_again_resumes_the_trials_whose_jobs_stopped(args, tmp_path, how):
    sweep = tmp_path / "sweep"
    command = [*args, *(JOBLIB if how.startswith("joblib") else []), f"hydra.sweep.dir={sweep}"]
    proc = start(tmp_path / "first.log", *command)
    stopped = "01" if how.startswith("joblib") else "0"  # the basic launcher runs one trial at a time
    try:
        wait_for(lambda: mid_run(sweep, stopped))
        proc.send_signal(signal.SIGKILL if "killed" in how else signal.SIGINT)  # the command alone
        proc.wait(timeout=120)
    finally:
        end(proc)
    out = (tmp_path / "first.log").read_text()
    study = study_of(sweep)
    # a trial whose job ended before the signal reached it (a loaded machine) is told so; the others stay running
    stopped = "".join(t for t in stopped if metrics(sweep / t).get("status") != "completed")
    assert stopped, "no trial was stopped mid-run: the test proves nothing"
    assert [t.state for t in study.trials if str(t.number) in stopped] == [TrialState.RUNNING] * len(stopped)
    assert all(t.state == TrialState.COMPLETE for t in study.trials if str(t.number) not in stopped)
    if "Ctrl-C" in how:  # one line that says how to go on, the report, each job's metrics.json where it stands
        assert proc.returncode == 130 and "Traceback" not in out, out[-4000:]
        said = [line for line in out.splitlines() if "Interrupted:" in line]
        assert len(said) == 1 and "run this command again" in said[0], out[-4000:]
        assert f"{len(stopped)} not completed" in out and (sweep / "summary.md").is_file()
        assert all(metrics(sweep / t)["status"] == "interrupted" for t in stopped)
        assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["states"]["running"] == len(stopped)

    out = search(*command)
    assert all(f"trial {t} was left running by a search that stopped, before its job ended: it is launched "
               f"again" in out for t in stopped), out[-4000:]
    study = study_of(sweep)
    assert len(study.trials) == 2
    check_told(sweep, study)
    for t in stopped:  # resumed from its checkpoint, to exactly the metrics of a run never stopped
        assert "resuming from" in (sweep / t / "train.log").read_text()
        reference = uninterrupted(sweep / t, tmp_path)
        assert metrics(sweep / t)["final"] == reference["final"]
        assert metrics(sweep / t)["history"] == reference["history"]


@pytest.mark.slow
def test_the_trials_in_flight_are_told_when_another_launch_raises(args, tmp_path):
    # one trial's launch raises (its job cannot be composed) while the other trains: that one's result is not
    # dropped. (submitit: each launch a job of its own; joblib's workers are shared, and joblib kills them all
    # when one of its calls raises: those trials have no end, and stay running for the next start.)
    sweep = tmp_path / "sweep"
    command = [*[a for a in args if not a.startswith("optimizer.lr=")], "hydra/launcher=submitit_local",
               "hydra.launcher.timeout_min=10", "~hydra.sweeper.params",
               "hydra/sweeper/sampler=grid", "model=choice(mlp,nosuch)", f"hydra.sweep.dir={sweep}"]
    result = run_cli("--multirun", *command)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "nosuch" in out, out[-4000:]
    study = study_of(sweep)
    by_model = {t.params["model"]: t for t in study.trials}
    trained = by_model["mlp"]
    assert metrics(sweep / str(trained.number))["status"] == "completed"
    assert trained.state == TrialState.COMPLETE
    assert trained.value == metrics(sweep / str(trained.number))["final"]["val/acc"]
    assert by_model["nosuch"].state == TrialState.RUNNING  # never began: the next start launches it again


@pytest.mark.slow
def test_a_trial_whose_job_failed_in_a_way_that_may_pass_is_launched_again_and_resumes(args, tmp_path,
                                                                                        mount_namespace):  # noqa: F811
    # the sweep folder on a small disk (a checkpoint is 411 kB): trial 0 trains, then a checkpoint no longer fits;
    # trial 1 fails at its first one. Both failed for a full disk, which may pass: the next start, with space,
    # finishes them
    disk, journal = tmp_path / "disk", tmp_path / "optuna_journal.log"
    disk.mkdir()
    command = [*(a if not a.startswith("model.num_hiddens=") else "model.num_hiddens=64" for a in args),
               f"hydra.sweep.dir={disk}", f"hydra.sweeper.storage={journal}"]
    search = f"{sys.executable} -m task1.train --multirun {shlex.join(command)}"
    script = f"""
        mount -t tmpfs -o size=1m tmpfs {disk} || exit 99
        {search} > {tmp_path}/first.out 2>&1; echo $? > {tmp_path}/first.rc
        cp {journal} {tmp_path}/first.log
        mount -o remount,size=16m {disk}
        {search} > {tmp_path}/second.out 2>&1; echo $? > {tmp_path}/second.rc
        cp -a {disk} {tmp_path}/sweep
    """
    done = subprocess.run([*mount_namespace, script], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    first, second = ((tmp_path / f"{n}.out").read_text() for n in ("first", "second"))
    # the first start: no trial failed in the study; they are left to go on, as a sweep's failed jobs (exit 0)
    assert (tmp_path / "first.rc").read_text().strip() == "0", first[-4000:]
    for t in "01":
        assert f"trial {t} failed in a way that may pass (no space left on tmpfs (mounted at {disk})" in first
    assert "2 trials left to go on (0, 1): run this command again" in first, first[-4000:]
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "first.log")))
    assert [t.state for t in optuna.load_study(study_name="mlp_fashion_mnist", storage=storage).trials] == \
        [TrialState.RUNNING] * 2

    # the second start: each launched again with its own number and parameters, to the result of a trial never
    # stopped (trial 0 from its checkpoint)
    assert (tmp_path / "second.rc").read_text().strip() == "0" and "Traceback" not in second, second[-4000:]
    assert all(f"trial {t} failed in an earlier start in a way that may pass" in second for t in "01")
    sweep = tmp_path / "sweep"
    study = optuna.load_study(study_name="mlp_fashion_mnist",
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    assert len(study.trials) == 2 and "left to go on" not in second
    check_told(sweep, study)
    assert "resuming from" in (sweep / "0" / "train.log").read_text()
    for t in "01":
        reference = uninterrupted(sweep / t, tmp_path)
        assert metrics(sweep / t)["final"] == reference["final"]
        assert metrics(sweep / t)["history"] == reference["history"]
