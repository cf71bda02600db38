"""Trials that never wait for each other: with n_jobs in flight, a trial starts as soon as any running one ends,
under the launchers that run jobs in parallel, and Optuna hears of each result as it comes; batches stay
available (`asynchronous: false`)."""

import json
import time

import optuna
import pytest
from test_search_compat import results, run_app, write_app

# Trial 0 waits until trial 3 has started (or `patience` seconds have passed) and says which came first. With
# two trials in flight, trial 3 can start while trial 0 runs only if trials 1, 2 and 3 did not wait for it.
WAITING = '''
    import json, time
    from pathlib import Path

    import hydra
    from hydra.core.hydra_config import HydraConfig

    @hydra.main(config_path="conf", config_name="config", version_base="1.3")
    def task(cfg):
        marks, n = Path(cfg.marks), HydraConfig.get().job.num
        (marks / f"{n}.start").write_text(str(time.time()))
        saw = None
        if n == 0:
            deadline = time.time() + cfg.patience
            while not (marks / "3.start").exists() and time.time() < deadline:
                time.sleep(0.05)
            saw = (marks / "3.start").exists()
        (marks / f"{n}.end").write_text(json.dumps({"time": time.time(), "saw_trial_3": saw}))
        return cfg.x

    if __name__ == "__main__":
        task()
'''
LAUNCHERS = {"joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
             "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]}


def run_waiting(tmp_path, launcher: str, asynchronous: bool, patience: float) -> tuple[dict, optuna.Study]:
    marks, sweep = tmp_path / "marks", tmp_path / "sweep"
    marks.mkdir()
    conf = {"defaults": [{"override hydra/sweeper": "optuna_search"}, {"override hydra/sweeper/sampler": "random"}],
            "hydra": {"sweeper": {"n_trials": 4, "n_jobs": 2, "asynchronous": asynchronous,
                                  "params": {"x": "interval(0, 1)"}}},
            "x": 0.0, "marks": str(marks), "patience": patience}
    out = run_app(write_app(tmp_path / "app", "task", WAITING, "conf", conf), f"hydra.sweep.dir={sweep}",
                  *LAUNCHERS[launcher])
    assert ("trials: asynchronous, 2 in flight" in out) == asynchronous
    ends = {n: json.loads((marks / f"{n}.end").read_text()) for n in range(4)}
    starts = {n: float((marks / f"{n}.start").read_text()) for n in range(4)}
    study = optuna.load_study(study_name=None, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep / "optuna_journal.log"))))
    assert results(sweep)["n_trials"] == 4 and all(t.value == t.params["x"] for t in study.trials)
    return {"starts": starts, "ends": ends}, study


@pytest.mark.parametrize("launcher", [pytest.param(n, marks=pytest.mark.slow) if n == "submitit_local" else n
                                      for n in LAUNCHERS])
def test_trials_start_as_soon_as_one_ends(tmp_path, launcher):
    times, study = run_waiting(tmp_path, launcher, asynchronous=True, patience=240)
    assert times["ends"][0]["saw_trial_3"]  # trials 1, 2, 3 ran one after the other beside trial 0
    assert times["starts"][3] < times["ends"][0]["time"]
    # and Optuna was told of each as it ended: trials 1 and 2 were complete while trial 0 still ran
    complete = {t.number: t.datetime_complete.timestamp() for t in study.trials}
    assert complete[1] < times["ends"][0]["time"] and complete[2] < times["ends"][0]["time"]


@pytest.mark.slow
def test_batches_wait_for_their_slowest_trial(tmp_path):
    start = time.time()
    times, _ = run_waiting(tmp_path, "joblib", asynchronous=False, patience=5)
    assert not times["ends"][0]["saw_trial_3"] and time.time() - start > 5  # trial 0 waited for nothing
    assert min(times["starts"][2], times["starts"][3]) >= times["ends"][0]["time"]
