"""The Optuna search for real: Hydra multiruns of tiny trials, a journal file in the sweep folder, pruning."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import CONF, ROOT, run_cli
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from test_sweeps import jobs_of, report_rows, sweep_cli

from task1 import Task1Error
from task1.sweeps.search import Search
from task1.sweeps.space import override_value, search_space

# Trials at lr 0.5 pass val/acc 0.5 by their second epoch on the generated data, trials at lr 1e-4 never do and
# are pruned there, trials at lr -1 fail the config check. The random sampler (TPE's start-up, seeded) picks.
LR = {"-1": "fail", "0.0001": "pruned", "0.5": "complete"}
SEARCH = ["hparams_search=optuna", "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=0.5",
          "hydra.sweeper.pruner.n_warmup_steps=1", "hydra.sweeper.sampler.n_startup_trials=100",
          "optimizer=sgd", "data.batch_size=64", "data.val_size=100", "trainer=cpu", "trainer.max_epochs=3",
          "logger=none"]
FIXED = [o.split("=")[0] for o in SEARCH if not o.startswith("hydra")] + ["data.root"]  # what every trial gets


def with_hydra(*overrides: str):
    """The composed config with its hydra node, where the sweeper's settings are."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def study_of(sweep, url: str | None = None) -> optuna.Study:
    """The study as Optuna itself reads it from the journal file in the sweep folder (or from the RDB `url`)."""
    storage = url or JournalStorage(JournalFileBackend(str(sweep / "optuna_journal.log")))
    return optuna.load_study(study_name="mlp_fashion_mnist", storage=storage)


def check_trials(sweep, study: optuna.Study, lrs: set[str]) -> None:
    """Every trial ended as its learning rate says, in the study, its metrics.json and the sweep report."""
    jobs, rows = jobs_of(sweep), {r["job"]: r for r in report_rows(sweep)}
    trials = study.get_trials()
    assert sorted(jobs, key=int) == [str(t.number) for t in trials]  # job folder = trial number
    assert {str(t.params["optimizer.lr"]) for t in trials} == lrs  # each kind of ending came up
    for t in trials:
        expected, metrics, row = LR[str(t.params["optimizer.lr"])], jobs[str(t.number)], rows[str(t.number)]
        assert t.state.name.lower() == expected, t
        assert row["status"] == metrics["status"] == {"fail": "failed", "complete": "completed"}.get(expected,
                                                                                                   expected)
        if expected == "pruned":  # judged from the second epoch on: stopped after it, before the test split
            assert metrics["epochs"] == 2 and sorted(t.intermediate_values) == [0, 1]
            assert "test/acc" not in metrics["final"] and row["test/acc"] == ""
            assert t.value == metrics["final"]["val/acc"] < 0.5  # exactly what metrics.json says
        elif expected == "complete":
            assert metrics["epochs"] == 3 and sorted(t.intermediate_values) == [0, 1, 2]
            assert t.value == metrics["final"]["val/acc"] and "test/acc" in metrics["final"]
            assert [t.intermediate_values[e["epoch"] - 1] for e in metrics["history"]] == [  # steps from 0
                e["val/acc"] for e in metrics["history"]]  # each epoch's report is the history's value
        else:  # the study says why, as the job's metrics.json does
            assert metrics["error"].startswith("optimizer.lr=-1 is not allowed") and not t.intermediate_values
            assert t.user_attrs["fail_reason"] == metrics["error"].splitlines()[0]
        # the job's overrides are what was searched and what was fixed: it found its trial in its Hydra config
        overrides = yaml.safe_load((sweep / str(t.number) / ".hydra" / "overrides.yaml").read_text())
        assert sorted(o.split("=")[0] for o in overrides) == sorted([*t.params, *FIXED])


def dashboard_view(storage: str) -> list[dict]:
    """The trials of the study in `storage` as `optuna-dashboard <storage>` serves them (its JSON API)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(Path(sys.executable).parent / "optuna-dashboard"), storage, "--host", "127.0.0.1", "--port",
               str(port), "--quiet"]
    server, url = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT), f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"{url}/api/studies", timeout=5) as answer:
                    (study,) = json.load(answer)["study_summaries"]
                break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()[-3000:]
                time.sleep(0.1)
        else:
            raise AssertionError(f"optuna-dashboard did not answer on {url} within 30 s")
        assert study["study_name"] == "mlp_fashion_mnist"
        with urllib.request.urlopen(f"{url}/api/studies/{study['study_id']}", timeout=30) as answer:
            return json.load(answer)["trials"]
    finally:
        server.kill()
        server.wait(timeout=30)


@pytest.mark.slow
def test_search_prunes_records_failures_and_continues_the_study(fake_root, tmp_path):
    sweep = tmp_path / "sweep"
    command = [*SEARCH, "optimizer.lr=choice(-1,0.0001,0.5)", f"data.root={fake_root}", f"hydra.sweep.dir={sweep}"]
    sweep_cli(*command, "hydra.sweeper.n_trials=5")
    study = study_of(sweep)
    assert len(study.trials) == 5
    check_trials(sweep, study, set(LR))
    counts = {s: sum(t.state.name.lower() == s for t in study.trials) for s in LR.values()}
    md = (sweep / "summary.md").read_text()
    assert f"5 jobs: {counts['complete']} completed, {counts['pruned']} pruned, {counts['fail']} failed" in md
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["storage"] == str(sweep / "optuna_journal.log") and results["n_trials"] == 5
    assert results["states"] == {s: n for s, n in counts.items() if n}
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
    assert (results["best_trial"], results["best_value"], results["best_params"]) == (best.number, best.value,
                                                                                    best.params)
    assert f"job {best.number} (" in md

    # the same command again goes on with the study, up to n_trials in all, with fresh draws
    sweep_cli(*command, "hydra.sweeper.n_trials=7")
    study = study_of(sweep)
    assert len(study.trials) == 7 and not study.get_trials(states=(TrialState.RUNNING,))
    check_trials(sweep, study, {str(t.params["optimizer.lr"]) for t in study.trials})
    first, added = study.trials[:5], study.trials[5:]
    assert [t.params for t in added] != [t.params for t in first[:2]]  # not the first draws again
    assert "7 jobs:" in (sweep / "summary.md").read_text()
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["n_trials"] == 7

    # the command the search's log gives to watch it: optuna-dashboard reads the journal file
    shown = dashboard_view(str(sweep / "optuna_journal.log"))
    assert [(t["number"], t["state"].lower()) for t in shown] == [(t.number, t.state.name.lower()) for t in
                                                                  study.trials]
    assert [len(t["intermediate_values"]) for t in shown] == [len(t.intermediate_values) for t in study.trials]


@pytest.mark.slow
@pytest.mark.parametrize(("launcher", "storage"), [("joblib", "journal"), ("joblib", "sqlite"),
                                                   ("submitit_local", "journal")])
def test_search_reaches_the_trials_from_other_processes(fake_root, tmp_path, launcher, storage):
    sweep, url = tmp_path / "sweep", f"sqlite:///{tmp_path / 'study.db'}" if storage == "sqlite" else None
    launch = {"joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
              "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]}[launcher]
    sweep_cli(*SEARCH, "optimizer.lr=choice(0.0001,0.5)", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
              *launch, f"data.root={fake_root}", f"hydra.sweep.dir={sweep}",
              *([f"hydra.sweeper.storage={url}"] if url else []))
    study = study_of(sweep, url)
    assert len(study.trials) == 4
    assert (sweep / "optuna_journal.log").exists() == (url is None)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["storage"] == (url or str(sweep / "optuna_journal.log"))
    check_trials(sweep, study, {"0.0001", "0.5"})  # pruning decided and told in the job processes
    if launcher == "joblib":  # it ran them two at once, each with its share of the cores
        assert {m["threads"] for m in jobs_of(sweep).values()} == {max(1, len(os.sched_getaffinity(0)) // 2)}
    else:  # each trial a submitit job of its own
        assert len(list((sweep / ".submitit").glob("*/*_log.out"))) == 4


def test_a_mistake_in_the_search_is_one_line(fake_root, tmp_path):
    result = run_cli("--multirun", "hparams_search=optuna", "hydra.sweeper.direction=up", f"data.root={fake_root}",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}")
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "hydra.sweeper.direction=up is not allowed: expected maximize or minimize" in out
    assert "Traceback" not in out and not (tmp_path / "sweep" / "0").exists()


@pytest.mark.slow
def test_a_search_where_every_trial_failed_exits_1_after_its_report(fake_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("--multirun", *SEARCH, "optimizer.lr=choice(-1,-2)", "hydra.sweeper.n_trials=2",
                     f"data.root={fake_root}", f"hydra.sweep.dir={sweep}")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert re.search(r"2 of 2 trials failed; trial 0: optimizer.lr=-[12] is not allowed: expected a number > 0.", out)
    assert "2 jobs: 2 failed" in (sweep / "summary.md").read_text()  # the report was written first
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["states"] == {"fail": 2}


def test_the_preset_searches_seeded_with_median_pruning_on_held_out_data():
    cfg = with_hydra("hparams_search=optuna", "seed=7")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.task1_optuna.sweeper.OptunaSweeper" and sweeper.direction == "maximize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 7
    assert isinstance(instantiate(sweeper.pruner), optuna.pruners.MedianPruner)
    assert cfg.optimized_metric == "val/acc" and cfg.model.num_hiddens == 256
    assert cfg.data.val_size == 10_000  # tuned on held-out training images, not on the test split
    space, fixed = search_space([f"{k}={v}" for k, v in sweeper.params.items()])
    assert set(space) == {"optimizer", "optimizer.lr", "optimizer.weight_decay", "data.batch_size",
                          "model.num_hiddens"} and fixed == {}


@pytest.mark.parametrize(("pruner", "kind"), [("median", "MedianPruner"), ("nop", "NopPruner"),
                                              ("threshold", "ThresholdPruner"), ("hyperband", "HyperbandPruner"),
                                              ("percentile", "PercentilePruner")])
def test_every_pruner_option_builds(pruner, kind):
    overrides = ["hparams_search=optuna", f"hydra/sweeper/pruner={pruner}"]
    if pruner == "threshold":
        overrides.append("hydra.sweeper.pruner.lower=0.5")
    cfg = with_hydra(*overrides)
    assert type(instantiate(cfg.hydra.sweeper.pruner)).__name__ == kind


SAMPLERS = sorted(p.stem for p in (ROOT / "hydra_plugins/task1_optuna/conf/hydra/sweeper/sampler").glob("*.yaml"))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_option_builds_and_samples(sampler):
    # each option of hydra/sweeper/sampler with Optuna 5 and the extra's dependencies (scipy, cmaes), past its
    # start-up trials, through the sweeper's own building (the grid gets the search space)
    assert SAMPLERS == ["cmaes", "gp", "grid", "nsgaii", "qmc", "random", "tpe"]
    past = ["hydra.sweeper.sampler.n_startup_trials=1"] if sampler in ("cmaes", "gp", "tpe") else []
    cfg = with_hydra("hparams_search=optuna", f"hydra/sweeper/sampler={sampler}", "seed=3", *past).hydra.sweeper
    space, _ = search_space(["x=choice(0.5, 1.5, 2.5)", "y=range(1, 4)", "z=interval(0, 1)"])
    if sampler == "grid":
        space.pop("z")  # an interval has no grid
    search = Search(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    study = optuna.create_study(sampler=search._sampler(space, 0))
    for _ in range(4):
        trial = study.ask(space)
        study.tell(trial, trial.params["x"] * trial.params["y"] + trial.params.get("z", 0))
    assert type(study.sampler).__name__ == cfg.sampler._target_.rsplit(".", 1)[1] and len(study.trials) == 4


def test_search_space_reads_hydra_sweeps_and_the_command_line_wins():
    space, fixed = search_space(["a=choice(x, y)", "b=tag(log, interval(1e-4, 1.0))", "c=interval(1, 8)",
                                 "i=tag(log, int, interval(16, 512))", "d=range(2, 10, 3)", "e=range(0.0, 1.0, 0.25)",
                                 "f=1,2", "g=choice(1,2)", "g=5", "+h=choice(true,false)", "trainer.max_epochs=3"])
    assert space["a"] == CategoricalDistribution(["x", "y"])
    assert space["b"] == FloatDistribution(1e-4, 1.0, log=True)
    assert space["c"] == FloatDistribution(1.0, 8.0) and space["i"] == IntDistribution(16, 512, log=True)
    assert space["d"] == IntDistribution(2, 8, step=3)  # Hydra's range leaves out its stop: 2, 5, 8
    assert space["e"] == FloatDistribution(0.0, 0.75, step=0.25)
    assert space["f"] == CategoricalDistribution([1, 2]) and space["+h"] == CategoricalDistribution([True, False])
    assert "g" not in space and list(fixed.values()) == ["g=5", "trainer.max_epochs=3"]
    with pytest.raises(Task1Error, match="not this one"):
        search_space(["a=glob(*)"])
    with pytest.raises(Task1Error, match="does not parse"):
        search_space(["a=choice(x"])


@pytest.mark.parametrize("value", ["sgd", "a b", "it's, 1", "1e-3", "null", 0.001, 64, True, None])
def test_sampled_values_reach_the_job_as_they_were(value):
    parsed = OverridesParser.create().parse_override(f"k={override_value(value)}").value()
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.slow
def test_tiny_search_benchmark_runs_both_searches(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "search_bench.py"), "--tiny", "--first", "nop",
                             "--rounds", "2", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    bench = json.loads((tmp_path / "search_bench.json").read_text())
    median, nop = bench["runs"]["median"], bench["runs"]["nop"]
    assert nop["trials"] == {"complete": 4} and nop["epochs"] == 8  # never pruned: every trial trains 2 epochs
    assert sum(median["trials"].values()) == 4 and median["epochs"] <= 8
    assert bench["wall_ratio"] == pytest.approx(median["wall_s"] / nop["wall_s"], abs=1e-3)
    assert min(median["cpu_s"], nop["cpu_s"]) > 0 and bench["order"] == ["nop", "median"]
    assert nop["rounds_epochs"] == [8, 8] and median["rounds_epochs"] == [median["epochs"]] * 2  # seeded: alike
    assert nop["wall_s"] == pytest.approx(sum(nop["rounds_wall_s"]), abs=0.15)
    assert "median/nop: wall time" in result.stdout
    # the replay of the unpruned trials through a pruner that prunes nothing leaves all of them
    assert bench["replay_of_nop"]["median 5/0 (default)"] == {"pruned": 0, "epochs": 1.0, "time": 1.0,
                                                               "best_val_acc": pytest.approx(nop["best_val_acc"])}


@pytest.mark.slow
def test_tiny_search_benchmark_compares_asynchronous_with_batched_trials(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "search_bench.py"), "--tiny", "--launch",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    bench = json.loads((tmp_path / "search_bench.json").read_text())
    runs = bench["runs"]
    assert set(runs) == {"asynchronous", "batched"} and bench["compared"] == "asynchronous/batched"
    assert all(sum(r["trials"].values()) == 4 for r in runs.values())
    assert bench["wall_ratio"] == pytest.approx(runs["asynchronous"]["wall_s"] / runs["batched"]["wall_s"], abs=1e-3)
    assert "asynchronous/batched: wall time" in result.stdout and "replay_of_nop" not in bench


def test_training_and_hydra_start_import_no_optuna():
    # Hydra imports every hydra_plugins module at each start; training imports Optuna only for a search's trial
    code = ("import sys, task1.core.build, hydra_plugins.task1_optuna.sweeper; "
            "print([m for m in ('optuna', 'task1.sweeps.search', 'task1.sweeps.trial') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]


@pytest.mark.slow
def test_a_ddp_trial_stops_on_both_ranks_when_pruned(fake_root, tmp_path):
    sweep = tmp_path / "sweep"
    sweep_cli(*SEARCH, "optimizer.lr=0.0001", "hydra.sweeper.n_trials=1", "trainer=ddp", "trainer.accelerator=cpu",
              "trainer.devices=2", f"data.root={fake_root}", f"hydra.sweep.dir={sweep}")
    (trial,) = study_of(sweep).trials
    metrics = jobs_of(sweep)["0"]
    assert trial.state == TrialState.PRUNED and sorted(trial.intermediate_values) == [0, 1]
    assert metrics["status"] == "pruned" and metrics["epochs"] == 2
    # rank 1 followed rank 0's decision: both stopped after the second epoch, with the same metrics
    ranks = [re.search(rf"rank {r}/2 final (\{{.*\}})", (sweep / "0" / log).read_text())
             for r, log in ((0, "train.log"), (1, "train_ddp_process_1.log"))]
    assert all(ranks) and json.loads(ranks[0][1]) == json.loads(ranks[1][1]) == metrics["final"]
