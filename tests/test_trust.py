"""A run folder, a sweep folder or a checkpoint that someone else wrote is data, never code (task1.core.trust).

Each payload below is built for real: run, it would write a marker file. Placed in a run's saved config, in the
config a sweep's multirun.yaml names, and in a checkpoint's hyper_parameters.config, it must run under none of
rerun, resume= (a run, a sweep), eval, summarize, curves, reproduce --no-run and api.load; the commands that would
build from it refuse it in one line naming the target and how to trust it.
"""

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import no_traceback, run_cli

from task1 import api
from task1.core import trust


class _System:
    """Pickled, it calls os.system(command) when loaded: what torch.load(weights_only=False) or
    numpy.load(allow_pickle=True) would run."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def touch(marker: Path) -> str:
    return f"touch {marker}"


def payloads(marker: Path, site_dir: Path) -> dict[str, dict]:
    """name -> the config entries (top-level keys) that would run `touch marker`: through a target Hydra's
    blocklist lets pass, or through a saved hydra: node's logging factory."""
    blob = pickle.dumps(_System(touch(marker)))
    site_dir.mkdir(parents=True, exist_ok=True)
    (site_dir / "evil.pth").write_text(f"import os; os.system({touch(marker)!r})\n")
    buffer = {"_target_": "io.BytesIO", "_args_": [blob]}
    profiler = {  # trainer.profiler: instantiated with the Trainer by train, rerun, resume and eval alike
        "torch_load": {"_target_": "torch.load", "f": buffer, "weights_only": False},
        "numpy_load": {"_target_": "numpy.load", "file": buffer, "allow_pickle": True},
        "site_addsitedir": {"_target_": "site.addsitedir", "sitedir": str(site_dir)},
    }
    found = {name: {"trainer": {"profiler": p}} for name, p in profiler.items()}
    found["logging_factory"] = {"hydra": {"job_logging": {
        "version": 1, "handlers": {"evil": {"()": "site.addsitedir", "sitedir": str(site_dir)}},
        "root": {"handlers": ["evil"]}}}}
    return found


def with_payload(config: dict, payload: dict) -> dict:
    """`config` with the payload's entries merged in."""
    merged = dict(config)
    for key, value in payload.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


@pytest.fixture(scope="module")
def finished(fake_root, tmp_path_factory) -> Path:
    """A genuine finished run (its checkpoints too), copied by each test that plants a payload in it."""
    run = tmp_path_factory.mktemp("trust") / "run"
    result = run_cli(f"data.root={fake_root}", "trainer=cpu", "trainer.max_epochs=1", "logger=none",
                     "figures.enabled=false", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def planted(finished: Path, tmp_path: Path, payload: dict) -> dict[str, Path]:
    """The payload placed in a run folder (its saved config), a sweep folder (the config its multirun.yaml names:
    a sweep of a rerun), a checkpoint (its hyper_parameters.config; also as the last.ckpt of a stopped run) and a
    reproduction's run folder."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    saved = run / ".hydra" / "config.yaml"
    saved.write_text(yaml.safe_dump(with_payload(yaml.safe_load(saved.read_text()), payload)))

    sweep = tmp_path / "sweep"
    shutil.copytree(run, sweep / "0")
    record = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())
    record["hydra"]["mode"] = "MULTIRUN"
    record["hydra"]["overrides"]["hydra"] = ["hydra.mode=MULTIRUN"]
    for source in record["hydra"]["runtime"]["config_sources"]:
        if source["provider"] == "main":
            source["path"] = str(sweep / "0" / ".hydra")
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(record))

    checkpoint = torch.load(finished / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["config"] = with_payload(checkpoint["hyper_parameters"]["config"], payload)
    ckpt = tmp_path / "shared.ckpt"
    torch.save(checkpoint, ckpt)

    stopped = tmp_path / "stopped"  # a run stopped mid-way (no metrics.json) whose last.ckpt carries the payload
    shutil.copytree(finished, stopped)
    (stopped / "metrics.json").unlink()
    shutil.copy(ckpt, stopped / "checkpoints" / "last.ckpt")

    reproduction = tmp_path / "reproduce"
    shutil.copytree(run, reproduction / "runs" / "d2l_3_7_softmax_concise" / "seed_0")
    return {"run": run, "sweep": sweep, "ckpt": ckpt, "stopped": stopped, "reproduce": reproduction}


def refused(result, *words: str) -> str:
    """The one line a refused command ends with (exit status 1, no traceback), holding `words`."""
    out = no_traceback(result)
    lines = [line for line in out.splitlines() if all(w in line for w in words)]
    assert lines, out[-3000:]
    return lines[0]


def test_allowlist_matches_whole_module_names(monkeypatch):
    monkeypatch.delenv(trust.TRUST_ENV, raising=False)
    for name in ("task1.models.torch.MLP", "task1.data.FashionMNIST", "task1.optim.SGD", "task1.cli.WritableFolder",
                 "task1.sweeps.report.SweepReport", "torch.optim.SGD", "torch.optim.lr_scheduler.OneCycleLR",
                 "lightning.pytorch.callbacks.EarlyStopping", "lightning.pytorch.loggers.CSVLogger",
                 "lightning.pytorch.Trainer", "lightning.pytorch.plugins.precision.MixedPrecision",
                 "hydra_plugins.task1_optuna.sweeper.OptunaSweeper", "optuna.samplers.TPESampler",
                 "lightning.pytorch.plugins.environments.SLURMEnvironment"):
        assert trust.allowed(name), name
    for name in ("task1evil.x", "torch.load", "torch.optim.swa_utils.AveragedModel", "numpy.load",
                 "site.addsitedir", "os.system", "io.BytesIO", "lightning.pytorch.callbacksevil.X", "mypkg.X",
                 "hydra_plugins.task1evil.X", "optuna.storages.JournalStorage", "task1.io.write_atomic",
                 "task1.tools.reproduce.sweep", "task1.sweeps.slurm.SlurmLauncher",
                 "lightning.pytorch.callbacks.model_checkpoint.os.system", "task1.models.nets.torch.load",
                 "task1.data.fashion_mnist.shutil.rmtree"):
        assert not trust.allowed(name), name
    monkeypatch.setenv(trust.TRUST_ENV, "mypkg, other.sub")
    assert trust.allowed("mypkg.X") and trust.allowed("other.sub.Y")
    assert not trust.allowed("mypkgevil.X") and not trust.allowed("other.X")
    # a trusted prefix is trusted for what is defined under it, not for what its modules import
    monkeypatch.setenv(trust.TRUST_ENV, "json")
    assert trust.allowed("json.decoder.JSONDecoder") and not trust.allowed("json.decoder.re.compile")


def test_trust_arguments_are_taken_out_and_join_the_environment(monkeypatch):
    monkeypatch.setenv(trust.TRUST_ENV, "first")
    assert trust.take_trust(["a=1", "trust=[mypkg,other]", "trust=third"]) == ["a=1"]
    assert trust.trusted_prefixes() == ("first", "mypkg", "other", "third")


@pytest.mark.parametrize("name", ["torch_load", "numpy_load", "site_addsitedir", "logging_factory"])
def test_each_payload_is_refused_by_the_checks_in_one_line(name, tmp_path, monkeypatch):
    monkeypatch.delenv(trust.TRUST_ENV, raising=False)
    marker = tmp_path / "marker"
    config = with_payload({"seed": 0}, payloads(marker, tmp_path / "site")[name])
    with pytest.raises(trust.UntrustedError) as e:
        trust.check_config(config, "shared.yaml")
    assert len(str(e.value).splitlines()) == 1 and str(e.value).startswith("shared.yaml: ")
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["torch_load", "numpy_load", "site_addsitedir", "logging_factory"])
def test_no_command_runs_a_payload_planted_in_a_run_a_sweep_or_a_checkpoint(name, finished, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    payload = payloads(marker, tmp_path / "site")[name]
    at = planted(finished, tmp_path, payload)
    env = {trust.TRUST_ENV: ""}
    words = ("does not build", "trust=") if name != "logging_factory" else ("a hydra: node is not taken",)

    rerun = refused(run_cli("-m", "task1", "rerun", str(at["run"]), f"hydra.run.dir={tmp_path / 'rerun'}",
                            env=env), *words)
    assert rerun.startswith(str(at["run"] / ".hydra" / "config.yaml"))
    refused(run_cli(f"resume={at['run']}", env=env), *words)
    refused(run_cli(f"resume={at['sweep']}", env=env), *words)
    refused(run_cli(f"resume={at['stopped']}", env=env), "last.ckpt (its hyper_parameters.config)", *words)
    refused(run_cli("-m", "task1", "eval", f"ckpt_path={at['ckpt']}", f"out={tmp_path / 'eval'}", env=env),
            f"ckpt_path={at['ckpt']}", *words)
    assert not (tmp_path / "rerun").exists() and not (tmp_path / "eval").exists()
    # the commands that only read results: nothing is built, nothing runs
    for args in (["summarize", str(at["sweep"])], ["curves", str(at["sweep"]), str(at["run"])],
                 ["reproduce", "--no-run", "--out", str(at["reproduce"])]):
        result = run_cli("-m", "task1", *args, env=env)
        out = result.stdout + result.stderr
        assert result.returncode in (0, 1) and "Traceback" not in out, out[-3000:]
    assert api.load(at["run"]).status == "completed"
    with pytest.raises(trust.UntrustedError):
        api.rerun(at["run"])
    with pytest.raises(trust.UntrustedError):
        api.evaluate(at["ckpt"], out=tmp_path / "eval")
    assert not marker.exists()


def saved_run(finished: Path, tmp_path: Path, **entries) -> Path:
    """A copy of the finished run whose saved config holds `entries` (top-level keys) too."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    saved = run / ".hydra" / "config.yaml"
    saved.write_text(yaml.safe_dump(with_payload(yaml.safe_load(saved.read_text()), entries)))
    return run


def test_a_saved_job_name_cannot_put_the_log_outside_the_run_folder(finished, tmp_path):
    run = saved_run(finished, tmp_path, hydra={"job": {"name": "../../escaped"}})
    out = tmp_path / "a" / "b" / "rerun"
    refused(run_cli("-m", "task1", "rerun", str(run), f"hydra.run.dir={out}"), "a hydra: node is not taken")
    assert not (tmp_path / "a" / "escaped.log").exists() and not out.exists()


def test_a_saved_config_cannot_read_the_environment(finished, tmp_path):
    run = saved_run(finished, tmp_path, optimized_metric="${oc.env:TASK1_TEST_SECRET}")
    out = tmp_path / "rerun"
    line = refused(run_cli("-m", "task1", "rerun", str(run), f"hydra.run.dir={out}",
                           env={"TASK1_TEST_SECRET": "s3cr3t"}), "optimized_metric=", "TASK1_TEST_SECRET")
    assert "s3cr3t" not in line and not out.exists()
    # what conf/ itself reads (paths.data_dir: ${oc.env:TASK1_DATA_DIR,data}) is fine; another resolver is not
    trust.check_config({"paths": {"data_dir": "${oc.env:TASK1_DATA_DIR,data}"}, "out": "${hydra:runtime.output_dir}"},
                       "saved")
    for value in ("${oc.env:HOME}", "${oc.decode:'${x}'}", "${oc.env:${name}}", "a${oc.env: 'HOME'}"):
        with pytest.raises(trust.UntrustedError):
            trust.check_config({"x": value}, "saved")


def test_a_python_tag_in_a_saved_overrides_file_is_one_line_naming_it(finished, tmp_path):
    marker = tmp_path / "marker"
    sweep = tmp_path / "sweep"
    shutil.copytree(finished, sweep / "0")
    overrides = sweep / "0" / ".hydra" / "overrides.yaml"
    overrides.write_text(f"- !!python/object/apply:os.system [{touch(marker)!r}]\n")
    for command in (["summarize", str(sweep)], ["curves", str(sweep)]):
        refused(run_cli("-m", "task1", *command), str(overrides), "Python object tag")
    assert not marker.exists()
    overrides.write_text("a: 1\n")  # not a list: not Hydra's
    with pytest.raises(trust.UntrustedError, match="is not a list of overrides"):
        trust.read_saved_overrides(overrides)


@pytest.mark.parametrize(("override", "words"), [
    ("+trainer.profiler={_target_:site.addsitedir,sitedir:/tmp}", "names site.addsitedir"),
    ("+callbacks.mine=[{_target_:numpy.load,file:x}]", "names numpy.load"),
    ("hydra.job.name=../../escaped", "outside its folder"),
    ("hydra.sweep.subdir=../${seed}", "outside its folder"),
    ("hydra.job_logging.root.level=DEBUG", "sets hydra.job_logging.root.level"),
    ("hydra.job.env_set.LD_PRELOAD=/tmp/x.so", "sets hydra.job.env_set.LD_PRELOAD"),
    ("hydra.searchpath=[file:///tmp]", "sets hydra.searchpath"),
    ("hydra.launcher.setup=[touch /tmp/x]", "sets hydra.launcher.setup"),
    ("+hydra.callbacks.evil={_target_:task1.cli.WritableFolder}", "sets hydra.callbacks.evil"),
    ("paths.data_dir=${oc.env:HOME}", "reads the environment variable HOME"),
    ("optimizer.lr=0.1,0.2", None), ("hydra/launcher=joblib", None), ("hydra.sweep.subdir=${seed}", None),
    ("hydra.launcher.n_jobs=2", None), ("+callbacks.mine={_target_:lightning.pytorch.callbacks.EarlyStopping}", None),
])
def test_a_sweeps_saved_overrides_are_checked(override, words, finished, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    record = yaml.safe_load((finished / ".hydra" / "hydra.yaml").read_text())
    record["hydra"]["overrides"]["task"].append(override)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(record))
    if words is None:
        trust.check_sweep(sweep)
        return
    with pytest.raises(trust.UntrustedError, match=words) as e:
        trust.check_sweep(sweep)
    assert str(e.value).startswith(f"{sweep / 'multirun.yaml'}: ")


MYPKG = '''import os
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class MyCallback(Callback):
    """Writes $MYPKG_MARKER when fitting starts: proof that it was built and ran."""

    def on_fit_start(self, trainer, pl_module):
        Path(os.environ["MYPKG_MARKER"]).write_text("ran")
'''


@pytest.mark.slow
def test_the_users_own_classes_run_from_their_command_line_and_from_a_saved_run_they_trust(fake_root, tmp_path):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text(MYPKG)
    (tmp_path / "conf" / "callbacks").mkdir(parents=True)
    (tmp_path / "conf" / "callbacks" / "mine.yaml").write_text("mine:\n  _target_: mypkg.MyCallback\n")
    marker = tmp_path / "marker"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "MYPKG_MARKER": str(marker), trust.TRUST_ENV: ""}
    base = [f"data.root={fake_root}", "trainer=cpu", "trainer.max_epochs=1", "logger=none", "figures.enabled=false"]

    def ran(result) -> bool:
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        found = marker.exists()
        marker.unlink(missing_ok=True)
        return found

    # the user's own command line: a target of theirs, and a config folder of theirs
    assert ran(run_cli(*base, "+trainer.callbacks=[{_target_: mypkg.MyCallback}]", f"hydra.run.dir={tmp_path / 'a'}",
                       env=env))
    assert ran(run_cli("--config-dir", str(tmp_path / "conf"), *base, "callbacks=mine",
                       f"hydra.run.dir={tmp_path / 'b'}", env=env))
    # the saved run is data: its target is refused, until the user trusts its prefix by name
    line = refused(run_cli("-m", "task1", "rerun", str(tmp_path / "a"), f"hydra.run.dir={tmp_path / 'c'}", env=env),
                   "names mypkg.MyCallback")
    assert "trust=mypkg" in line and f"{trust.TRUST_ENV}=mypkg" in line and not marker.exists()
    assert ran(run_cli("-m", "task1", "rerun", str(tmp_path / "a"), "trust=mypkg", f"hydra.run.dir={tmp_path / 'c'}",
                       env=env))
    assert ran(run_cli("-m", "task1", "rerun", str(tmp_path / "b"), f"hydra.run.dir={tmp_path / 'd'}",
                       env={**env, trust.TRUST_ENV: "otherpkg,mypkg"}))


def test_a_sweep_cannot_name_a_config_outside_its_folders(finished, tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "conf").mkdir(parents=True)
    record = yaml.safe_load((finished / ".hydra" / "hydra.yaml").read_text())
    record["hydra"]["job"]["config_name"] = "../../../evil"
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(record))
    with pytest.raises(trust.UntrustedError, match="outside its config folder"):
        trust.check_sweep(sweep)
    record["hydra"]["job"]["config_name"] = "config"
    record["hydra"]["runtime"]["cwd"] = str(sweep)
    record["hydra"]["runtime"]["config_sources"].append({"path": "conf", "schema": "file", "provider": "command-line"})
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(record))
    with pytest.raises(trust.UntrustedError, match="inside the folder itself"):
        trust.check_sweep(sweep)


def test_what_the_user_sets_again_on_their_command_line_replaces_what_was_saved(finished, tmp_path):
    run = saved_run(finished, tmp_path, optimized_metric="${oc.env:HOME}", trainer={"profiler": {
        "_target_": "site.addsitedir", "sitedir": str(tmp_path)}})
    hydra_dir = run / ".hydra"
    with pytest.raises(trust.UntrustedError, match="reads the environment variable HOME"):
        trust.check_saved_dir(hydra_dir, args=["trainer.profiler._target_=mypkg.Profiler"])
    trust.check_saved_dir(hydra_dir, args=["optimized_metric=val/acc", "trainer.profiler._target_=mypkg.Profiler"])
    # a mapping given for the node is merged into the saved one by Hydra: the saved target stays, and is refused
    with pytest.raises(trust.UntrustedError, match=r"names site\.addsitedir"):
        trust.check_saved_dir(hydra_dir, args=["optimized_metric=val/acc", "trainer.profiler={sitedir:/tmp}"])

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    record = yaml.safe_load((finished / ".hydra" / "hydra.yaml").read_text())
    record["hydra"]["overrides"]["task"].append("hydra.job.env_set.LD_PRELOAD=/tmp/x.so")
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(record))
    with pytest.raises(trust.UntrustedError, match="LD_PRELOAD"):
        trust.check_sweep(sweep, args=["optimizer.lr=0.1"])
    trust.check_sweep(sweep, args=["hydra.job.env_set.LD_PRELOAD="])  # resume_sweep_argv keeps the user's instead


def test_api_rerun_refuses_a_saved_target_and_leaves_the_trust_of_the_process_as_it_was(finished, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setenv(trust.TRUST_ENV, "first")
    run = saved_run(finished, tmp_path, trainer={"profiler": {"_target_": "site.addsitedir", "sitedir": "/tmp"}})
    with pytest.raises(trust.UntrustedError, match=r"names site\.addsitedir"):
        api.rerun(run, "trust=mypkg")
    assert os.environ[trust.TRUST_ENV] == "first"


def test_a_saved_runs_folder_given_as_hydras_config_path_is_data_too(finished, tmp_path):
    run = saved_run(finished, tmp_path, trainer={"profiler": {"_target_": "site.addsitedir", "sitedir": "/tmp"}})
    out = tmp_path / "again"
    refused(run_cli("--config-path", str(run / ".hydra"), "--config-name", "config", f"hydra.run.dir={out}"),
            "names site.addsitedir", "trust=site")
    refused(run_cli("-cp", str(run / ".hydra"), "-cn", "hydra", f"hydra.run.dir={out}"), "a hydra: node is not taken")
    assert not out.exists()
