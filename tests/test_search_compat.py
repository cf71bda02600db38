"""task1's Optuna sweeper as a drop-in for hydra-optuna-sweeper: the plugin's documented examples (sphere, multi-
objective, custom search space), written out here as the plugin documents them with one line changed (the
sweeper's name), run from a folder outside the repo as their users run them; the cases the plugin's own tests
cover; and the plugin installed beside task1."""

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from task1 import Task1Error
from task1.sweeps.search import storage_spec
from task1.sweeps.space import distribution, grid, search_space

# The plugin's documented examples: each app's objective and its config, hydra/sweeper: optuna_search standing for
# the documented `optuna` (the one line a user changes).
SPHERE = '''
    import hydra

    @hydra.main(config_path="conf", config_name="config")
    def sphere(cfg):
        if cfg.get("error", False):
            raise RuntimeError("cfg.error is True")
        return cfg.x**2 + cfg.y**2

    if __name__ == "__main__":
        sphere()
'''
SPHERE_CONF = {
    "defaults": [{"override hydra/sweeper": "optuna_search"}, {"override hydra/sweeper/sampler": "tpe"}],
    "hydra": {"sweeper": {"sampler": {"seed": 123}, "direction": "minimize", "study_name": "sphere",
                          "storage": None, "n_trials": 20, "n_jobs": 1, "max_failure_rate": 0.0,
                          "params": {"x": "range(-5.5, 5.5, step=0.5)", "y": "choice(-5 ,0 ,5)"}}},
    "x": 1, "y": 1, "z": 1, "error": False,
}
BINH_AND_KORN = '''
    import hydra

    @hydra.main(config_path="multi-objective-conf", config_name="config")
    def binh_and_korn(cfg):
        return 4 * cfg.x**2 + 4 * cfg.y**2, (cfg.x - 5) ** 2 + (cfg.y - 5) ** 2

    if __name__ == "__main__":
        binh_and_korn()
'''
BINH_AND_KORN_CONF = {
    "defaults": [{"override hydra/sweeper": "optuna_search"}, {"override hydra/sweeper/sampler": "nsgaii"}],
    "hydra": {"sweeper": {"sampler": {"seed": 123}, "direction": ["minimize", "minimize"],
                          "study_name": "multi-objective", "storage": None, "n_trials": 20, "n_jobs": 1,
                          "params": {"x": "range(0, 5, step=0.5)", "y": "range(0, 3, step=0.5)"}}},
    "x": 1, "y": 1,
}
CUSTOM_SPACE = '''
    import hydra

    @hydra.main(config_path="custom-search-space", config_name="config")
    def multi_dimensional_sphere(cfg):
        return cfg.w**2 + cfg.x**2 + cfg.y**2 + cfg.z**2

    def configure(cfg, trial):
        x = trial.params["x"]
        trial.suggest_float("z", x - cfg.max_z_difference_from_x, x + cfg.max_z_difference_from_x)
        trial.suggest_float("+w", 0.0, 1.0)  # +w: w is a new key

    if __name__ == "__main__":
        multi_dimensional_sphere()
'''
CUSTOM_SPACE_CONF = {
    "defaults": [{"override hydra/sweeper": "optuna_search"}],
    "hydra": {"sweeper": {"sampler": {"seed": 123}, "direction": "minimize", "study_name": "custom-search-space",
                          "storage": None, "n_trials": 20, "n_jobs": 1,
                          "params": {"x": "range(-5.5, 5.5, 0.5)", "y": "choice(-5, 0, 5)"},
                          "custom_search_space": "custom-search-space-objective.configure"}},
    "x": 1, "y": 1, "z": 100, "max_z_difference_from_x": 0.5,
}
EXAMPLES = {"sphere": (SPHERE, "conf", SPHERE_CONF),
            "multi-objective": (BINH_AND_KORN, "multi-objective-conf", BINH_AND_KORN_CONF),
            "custom-search-space-objective": (CUSTOM_SPACE, "custom-search-space", CUSTOM_SPACE_CONF)}
# what a run of an example takes from its documented tests: a sweep folder, jobs in their folders, more trials
COMMON = ["hydra.job.chdir=True", "hydra.sweeper.n_jobs=1"]


def write_app(folder: Path, name: str, source: str, conf_dir: str, conf: dict) -> Path:
    """An app as its user has it: `<name>.py` beside `<conf_dir>/config.yaml`, outside this repo."""
    (folder / conf_dir).mkdir(parents=True, exist_ok=True)
    (folder / conf_dir / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    app = folder / f"{name}.py"
    app.write_text(textwrap.dedent(source))
    return app


def run_app(app: Path, *args: str, env: dict | None = None, status: int = 0) -> str:
    """`python <app> --multirun <args>` from the app's folder; its output, after checking the exit status."""
    result = subprocess.run([sys.executable, app.name, "--multirun", *args], cwd=app.parent, capture_output=True,
                            text=True, timeout=600, env={**os.environ, **(env or {})})
    out = result.stdout + result.stderr
    assert result.returncode == status, out[-4000:]
    return out


def example(tmp_path: Path, name: str, conf: dict | None = None) -> Path:
    assert not tmp_path.resolve().is_relative_to(ROOT)
    source, conf_dir, given = EXAMPLES[name]
    return write_app(tmp_path / "app", name, source, conf_dir, conf or given)


def results(sweep: Path) -> dict:
    return yaml.safe_load((sweep / "optimization_results.yaml").read_text())


def dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("with_commandline", [pytest.param(True, marks=pytest.mark.slow), False])
def test_sphere_example_finds_its_minimum(tmp_path, with_commandline):
    storage, sweep = f"sqlite:///{tmp_path / 'test.db'}", tmp_path / "sweep"
    extra = ["x=choice(0, 1, 2)", "y=0"] if with_commandline else []
    run_app(example(tmp_path, "sphere"), f"hydra.sweep.dir={sweep}", *COMMON, "hydra.sweeper.n_trials=20",
            f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=test-optuna-example",
            "hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.seed=123", "~z", *extra)
    found, best = results(sweep), optuna.load_study(storage=storage, study_name="test-optuna-example").best_trial
    assert found["name"] == "optuna" and found["best_value"] == best.value and found["best_params"] == best.params
    assert ("y" in best.params) != with_commandline  # a fixed value is not searched
    assert found["best_value"] <= 2.27  # the plugin's own bound for TPE, seed 123: its 95th percentile over seeds
    assert found["n_trials"] == 20 and found["states"] == {"complete": 20}


@pytest.mark.parametrize("with_commandline", [pytest.param(True, marks=pytest.mark.slow), False])
def test_multi_objective_example_writes_its_pareto_front(tmp_path, with_commandline):
    sweep = tmp_path / "sweep"
    extra = ["x=range(0, 5)", "y=range(0, 3)"] if with_commandline else []
    run_app(example(tmp_path, "multi-objective"), f"hydra.sweep.dir={sweep}", *COMMON, "hydra.sweeper.n_trials=20",
            "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123", *extra)
    front = results(sweep)["solutions"]
    study = optuna.load_study(study_name="multi-objective", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep / "optuna_journal.log"))))
    assert [s["number"] for s in front] == sorted(t.number for t in study.best_trials) and front
    for a in front:
        assert a["values"] == [4 * a["params"]["x"] ** 2 + 4 * a["params"]["y"] ** 2,
                               (a["params"]["x"] - 5) ** 2 + (a["params"]["y"] - 5) ** 2]
        assert {a["params"]["x"] % 1, a["params"]["y"] % 1} <= ({0} if with_commandline else {0, 0.5})
        assert not any(dominates(b["values"], a["values"]) for b in front)
    others = [t for t in study.trials if t.number not in {s["number"] for s in front}]
    assert all(any(dominates(s["values"], t.values) for s in front) for t in others)  # the rest are dominated


def test_custom_search_space_example_suggests_from_its_function(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_app(example(tmp_path, "custom-search-space-objective"), f"hydra.sweep.dir={sweep}", *COMMON,
                  "hydra.sweeper.n_trials=20", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123",
                  "max_z_difference_from_x=0.3")
    best = results(sweep)["best_params"]
    assert abs(best["x"] - best["z"]) <= 0.3 and 0 <= best["+w"] <= 1
    assert out.count("+w=") >= 20  # every trial got the new key as an addition


def test_a_grid_is_built_from_params_and_runs_out_cleanly(tmp_path):
    conf = {"defaults": [{"override hydra/sweeper": "optuna_search"}, {"override hydra/sweeper/sampler": "grid"}],
            "hydra": {"sweeper": {"direction": "minimize", "study_name": "sphere", "storage": None, "n_trials": 20,
                                  "n_jobs": 1, "params": {"x": "choice(-1, 1)", "y": "range(-1.0, 1.0, step=1)",
                                                          "z": 'choice("foo", "bar")'}}},
            "x": 1, "y": 1, "z": "foo"}
    app = example(tmp_path, "sphere", conf)
    for n_trials in (10, 1):
        sweep = tmp_path / f"sweep{n_trials}"
        out = run_app(app, f"hydra.sweep.dir={sweep}", "hydra.job.chdir=False", f"hydra.sweeper.n_trials={n_trials}")
        found = results(sweep)
        assert found["n_trials"] == min(n_trials, 8) and "Study.stop" not in out  # 2 x 2 x 2 points, each once
        if n_trials == 10:
            assert found["best_value"] == 1 and abs(found["best_params"]["x"]) == 1 and found["best_params"]["y"] == 0
        assert found["best_params"]["z"] in ("foo", "bar")
    study = optuna.load_study(study_name="sphere", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "sweep10" / "optuna_journal.log"))))
    points = {(t.params["x"], t.params["y"], t.params["z"]) for t in study.trials}
    assert len(points) == 8 and all(t.state == TrialState.COMPLETE for t in study.trials)


@pytest.mark.parametrize("max_failure_rate", [0.5, 1.0])
def test_failed_trials_say_why_and_end_the_command_as_the_rate_says(tmp_path, max_failure_rate):
    sweep = tmp_path / "sweep"
    out = run_app(example(tmp_path, "sphere"), f"hydra.sweep.dir={sweep}", "hydra.job.chdir=True",
                  "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2", "hydra/sweeper/sampler=random",
                  "hydra.sweeper.sampler.seed=123", f"hydra.sweeper.max_failure_rate={max_failure_rate}",
                  "error=true", status=1)
    assert "RuntimeError: cfg.error is True" in out  # the job's own error, with its traceback
    study = optuna.load_study(study_name="sphere", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep / "optuna_journal.log"))))
    assert all(t.user_attrs["fail_reason"] == "RuntimeError: cfg.error is True" for t in study.trials)
    if max_failure_rate < 1:  # the first batch of two failed: the search stopped there
        assert len(study.trials) == 2 and "the search stopped: more than hydra.sweeper.max_failure_rate=0.5" in out
    else:  # failures never stop it, but a search where every trial failed did not succeed
        assert len(study.trials) == 6 and "6 of 6 trials failed; trial 0: RuntimeError: cfg.error is True" in out
    assert results(sweep)["states"] == {"fail": len(study.trials)}


RETURNS = '''
    import hydra, numpy, torch

    @hydra.main(config_path="conf", config_name="config", version_base="1.3")
    def task(cfg):
        return {"np32": numpy.float32(1.5), "tensor": torch.tensor(2.5), "text": "3.5", "infinite": float("inf"),
                "word": "fast", "none": None}[cfg.kind]

    if __name__ == "__main__":
        task()
'''


def test_any_value_float_takes_counts_and_the_others_fail_with_a_reason(tmp_path):
    conf = {"defaults": [{"override hydra/sweeper": "optuna_search"}, {"override hydra/sweeper/sampler": "grid"}],
            "hydra": {"sweeper": {"params": {"kind": "choice(np32, tensor, text, infinite, word, none)"},
                                  "max_failure_rate": 1.0}}, "kind": "np32"}
    sweep = tmp_path / "sweep"
    out = run_app(write_app(tmp_path / "app", "task", RETURNS, "conf", conf), f"hydra.sweep.dir={sweep}")
    study = optuna.load_study(study_name=None, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep / "optuna_journal.log"))))
    ended = {t.params["kind"]: t for t in study.trials}
    assert {k: t.value for k, t in ended.items() if t.state == TrialState.COMPLETE} == {
        "np32": 1.5, "tensor": 2.5, "text": 3.5}
    assert ended["word"].user_attrs["fail_reason"] == "the job returned 'fast', not a number"
    assert ended["none"].user_attrs["fail_reason"] == "the job returned None, not a number"
    assert ended["infinite"].user_attrs["fail_reason"] == "the job returned inf, which is not finite"
    assert f"trial {ended['word'].number} failed: the job returned 'fast', not a number" in out
    assert results(sweep)["best_value"] == 1.5


def test_the_search_adds_no_override_a_job_folder_name_would_spell_out(tmp_path):
    # hydra.job.override_dirname names the folders by what was searched, and by nothing else
    conf = {"defaults": [{"override hydra/sweeper": "optuna_search"}, {"override hydra/sweeper/sampler": "grid"}],
            "hydra": {"sweeper": {"params": {"x": "choice(-1, 1)", "y": "choice(2, 3)"}},
                      "sweep": {"subdir": "${hydra.job.override_dirname}"}}, "x": 0, "y": 0}
    sweep = tmp_path / "sweep"
    run_app(write_app(tmp_path / "app", "sphere", SPHERE, "conf", conf), f"hydra.sweep.dir={sweep}")
    folders = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert folders == ["x=-1,y=2", "x=-1,y=3", "x=1,y=2", "x=1,y=3"]
    assert all(yaml.safe_load((sweep / f / ".hydra" / "overrides.yaml").read_text()) == f.split(",")
               for f in folders)


def test_a_grid_search_started_again_runs_its_last_point_left_running_and_ends(tmp_path):
    # the last grid point, asked by a search that was killed before its job began: it is launched again (with its
    # own number and value) and its end ends the grid, where Optuna's GridSampler calls study.stop(), which raises
    # outside study.optimize
    conf = {"defaults": [{"override hydra/sweeper": "optuna_search"}, {"override hydra/sweeper/sampler": "grid"}],
            "hydra": {"sweeper": {"direction": "minimize", "study_name": "sphere", "storage": None, "n_trials": 2,
                                  "n_jobs": 1, "params": {"x": "choice(-1, 1)"}}},
            "x": 1, "y": 0}
    app, sweep = example(tmp_path, "sphere", conf), tmp_path / "sweep"
    run_app(app, f"hydra.sweep.dir={sweep}", "hydra.job.chdir=False", "hydra.sweeper.n_trials=1")
    study = optuna.load_study(study_name="sphere", sampler=optuna.samplers.GridSampler({"x": [-1, 1]}),
                              storage=optuna.storages.JournalStorage(
                                  optuna.storages.journal.JournalFileBackend(str(sweep / "optuna_journal.log"))))
    study.ask().suggest_categorical("x", [-1, 1])  # the other point, as a search that was killed leaves it
    out = run_app(app, f"hydra.sweep.dir={sweep}", "hydra.job.chdir=False")
    assert "Traceback" not in out and "trial 1 was left running by a search that stopped" in out, out[-3000:]
    assert "it is launched again" in out and "recorded as failed" not in out
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert sorted(t.params["x"] for t in study.trials) == [-1, 1] and results(sweep)["n_trials"] == 2


def test_a_study_that_holds_its_trials_already_is_left_as_it_is(tmp_path):
    # an RDB study already at n_trials, and a new sweep folder: nothing to run, the results written there
    storage, app = f"sqlite:///{tmp_path / 'study.db'}", example(tmp_path, "sphere")
    for sweep in ("first", "second"):
        out = run_app(app, f"hydra.sweep.dir={tmp_path / sweep}", f"hydra.sweeper.storage={storage}",
                      "hydra.sweeper.n_trials=3")
        assert results(tmp_path / sweep)["n_trials"] == 3
    assert "there is nothing to run" in out and not [p for p in (tmp_path / "second").iterdir() if p.is_dir()]


@pytest.mark.parametrize(("override", "says"), [
    ("hydra.sweeper.sampler._target_=optuna.samplers.TPESamplr",
     "hydra.sweeper.sampler (optuna.samplers.TPESamplr) cannot be built: ImportError: Error loading "
     "'optuna.samplers.TPESamplr'"),
    ("+hydra.sweeper.sampler.n_startup_trial=3", "hydra.sweeper.sampler (optuna.samplers.TPESampler) cannot be "
     "built: TypeError: TPESampler.__init__() got an unexpected keyword argument 'n_startup_trial'"),
    ("hydra.sweeper.custom_search_space=nowhere.configure", "hydra.sweeper.custom_search_space=nowhere.configure "
     "cannot be imported"),
    ("hydra.sweeper.max_failure_rate=2", "hydra.sweeper.max_failure_rate=2 is not allowed"),
    ("hydra.sweeper.direction=[minimize,up]", "hydra.sweeper.direction=['minimize', 'up'] is not allowed"),
])
def test_a_mistake_in_the_set_up_names_its_cause_in_one_line(tmp_path, override, says):
    out = run_app(example(tmp_path, "sphere"), f"hydra.sweep.dir={tmp_path / 'sweep'}", override, status=1)
    assert says in out and "full_key" not in out and "Traceback" not in out, out[-3000:]


@pytest.mark.parametrize(("line", "expected"), [
    ("key=choice(1,2)", CategoricalDistribution([1, 2])),
    ("key=choice(true, false)", CategoricalDistribution([True, False])),
    ("key=choice('hello', 'world')", CategoricalDistribution(["hello", "world"])),
    ("key=shuffle(range(1,3))", CategoricalDistribution([1, 2])),
    ("key=range(1,3)", IntDistribution(1, 2)),  # the stop left out, as Hydra's range does (the plugin: 1 to 3)
    ("key=interval(1, 5)", FloatDistribution(1, 5)),
    ("key=int(interval(1, 5))", IntDistribution(1, 5)),
    ("key=int(interval(-5.0, 5.0))", IntDistribution(-5, 5)),
    ("key=tag(log, interval(1, 5))", FloatDistribution(1, 5, log=True)),
    ("key=tag(log, int(interval(1, 100)))", IntDistribution(1, 100, log=True)),
    ("key=range(0.5, 5.5, step=1)", FloatDistribution(0.5, 4.5, step=1)),
])
def test_each_sweep_becomes_the_distribution_the_plugin_documents(line, expected):
    found = distribution(OverridesParser.create().parse_override(line))
    if isinstance(expected, CategoricalDistribution):  # shuffle() changes the order
        assert isinstance(found, CategoricalDistribution) and set(found.choices) == set(expected.choices)
    else:
        assert found == expected


def test_fixed_and_deleted_overrides_pass_to_every_trial():
    space, fixed = search_space(["key1=choice(1,2)", "key2=5", "key3=range(1,3)", "~z", "~w=10"])
    assert space == {"key1": CategoricalDistribution([1, 2]), "key3": IntDistribution(1, 2)}
    assert fixed == {"key2": "key2=5", "~z": "~z", "~w": "~w=10"}


def test_grid_values_and_what_has_none():
    assert grid({"a": CategoricalDistribution(["x", "y"]), "b": IntDistribution(1, 7, step=3),
                 "c": FloatDistribution(-5.5, 5.0, step=0.5), "d": IntDistribution(1, 3)}) == {
        "a": ["x", "y"], "b": [1, 4, 7], "c": [-5.5 + 0.5 * i for i in range(22)], "d": [1, 2, 3]}
    with pytest.raises(Task1Error, match="b: a grid search needs choice"):
        grid({"b": FloatDistribution(0, 1)})


def test_hydra_finds_the_sweeper_and_its_configs():
    assert "OptunaSweeper" in [p.__name__ for p in Plugins.instance().discover(Sweeper)]
    assert "OptunaSearchPath" in [p.__name__ for p in Plugins.instance().discover(SearchPathPlugin)]


def official_plugin(tmp_path: Path) -> Path:
    """hydra-optuna-sweeper installed beside task1 (without its dependencies: it pins optuna<3), from the wheel
    scripts/setup.sh keeps in .venv/wheels."""
    wheels = sorted((ROOT / ".venv" / "wheels").glob("hydra_optuna_sweeper-*.whl"))
    assert wheels, "scripts/setup.sh downloads hydra-optuna-sweeper's wheel into .venv/wheels: run it"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                    str(target), str(wheels[-1])], check=True, capture_output=True, timeout=300)
    return target


def test_both_sweepers_work_with_the_official_plugin_installed(tmp_path):
    env = {"PYTHONPATH": str(official_plugin(tmp_path))}
    app = example(tmp_path, "sphere")
    listed = subprocess.run([sys.executable, app.name, "--info", "plugins"], cwd=app.parent, capture_output=True,
                            text=True, env={**os.environ, **env}, timeout=300).stdout
    assert listed.count("OptunaSweeper") == 2 and "OptunaSearchPath" in listed  # theirs and ours
    for sweeper, name in (("optuna_search", "ours"), ("optuna", "theirs")):
        sweep = tmp_path / name
        run_app(app, f"hydra/sweeper={sweeper}", f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=4",
                "hydra.sweeper.sampler.seed=123", env=env)
        found = results(sweep)
        assert found["name"] == "optuna" and math.isfinite(found["best_value"])
        assert ("n_trials" in found) == (name == "ours")  # task1's results also count the study's trials


@pytest.mark.parametrize(("storage", "expected"), [
    (None, "/runs/sweep/optuna_journal.log"), ("study.log", "/work/study.log"), ("/abs/study.log", "/abs/study.log"),
    ("sqlite:///study.db", "sqlite:////work/study.db"), ("sqlite:////abs/study.db", "sqlite:////abs/study.db"),
    ("postgresql://host/db", "postgresql://host/db")])
def test_every_process_opens_the_storage_the_command_meant(storage, expected):
    # relative to where the command ran (hydra.runtime.cwd), also in a job Hydra moved into its folder
    hydra = OmegaConf.create({"sweeper": {"storage": storage}, "runtime": {"cwd": "/work"},
                              "sweep": {"dir": "/runs/sweep"}})
    assert storage_spec(hydra) == expected
