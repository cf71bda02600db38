"""What a user adds without code: Lightning callbacks beside task1's own, several loggers, MLflow."""

import contextlib
import csv
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import no_traceback, run_cli
from test_train import _event_scalars_and_hparams

from task1 import Task1Error
from task1.train import train

EARLY_STOP = "{_target_:lightning.pytorch.callbacks.EarlyStopping,monitor:val/acc,mode:max,patience:0,min_delta:1.0}"


@pytest.mark.parametrize("how", ["+trainer.callbacks", "callbacks group"])
def test_early_stopping_stops_the_run_and_metrics_json_says_so(make_cfg, tmp_path, how):
    # min_delta 1.0: no epoch can improve val/acc enough, so the run stops after its second epoch
    overrides = ([f"+trainer.callbacks=[{EARLY_STOP}]"] if how == "+trainer.callbacks" else
                 ["callbacks=[early_stopping,progress_bar]", "callbacks.early_stopping.patience=0",
                  "callbacks.early_stopping.min_delta=1.0"])
    metrics = train(make_cfg("trainer.max_epochs=4", "figures.enabled=false", *overrides))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == metrics
    assert metrics["status"] == "completed" and metrics["epochs"] == 2 and len(metrics["history"]) == 2
    assert metrics["max_epochs"] == 4 and metrics["stopped_early"] is True
    assert "test/acc" in metrics["final"]  # a run stopped early is still tested


def test_a_run_of_all_its_epochs_did_not_stop_early(make_cfg):
    metrics = train(make_cfg("trainer.max_epochs=2", "figures.enabled=false"))
    assert metrics["epochs"] == metrics["max_epochs"] == 2 and metrics["stopped_early"] is False


@pytest.mark.parametrize(("overrides", "message"), [
    (["callbacks=early_stopping", "+callbacks.early_stopping.patiense=1"],
     r"callbacks.early_stopping.patiense is not a field of callbacks.early_stopping \(lightning.pytorch.callbacks."
     r"EarlyStopping\): did you mean callbacks.early_stopping.patience\?"),
    (["+trainer.callbacks=[{_target_:lightning.pytorch.callbacks.EarlyStopping,monitr:val/acc}]"],
     r"trainer.callbacks.0.monitr is not a field of .*EarlyStopping\): did you mean trainer.callbacks.0.monitor\?"),
    (["+callbacks.mine={patience:1}"], r"callbacks.mine names no class: give it a _target_"),
    (["+logger.mine={_target_:lightning.pytorch.loggers.CSVLogger,save_dirr:x}"],
     r"logger.mine.save_dirr is not a field of logger.mine \(lightning.pytorch.loggers.CSVLogger\)"),
])
def test_callback_and_logger_mistakes_are_refused_before_anything_is_built(make_cfg, tmp_path, overrides, message):
    with pytest.raises(Task1Error, match=message):
        train(make_cfg(*overrides))
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "checkpoints").exists()


def test_two_loggers_both_get_metrics_hyperparameters_and_final_metrics(make_cfg, tmp_path):
    metrics = train(make_cfg("logger=[tensorboard,csv]", "trainer.max_epochs=2", "optimizer.lr=0.05",
                             "figures.enabled=false"))
    scalars, hparams = _event_scalars_and_hparams(tmp_path / "tensorboard")
    assert scalars["val/acc"] == pytest.approx([h["val/acc"] for h in metrics["history"]])
    assert hparams["optimizer/lr"].number_value == 0.05
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    per_epoch = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    assert per_epoch == pytest.approx([h["val/acc"] for h in metrics["history"]])
    final = [float(r["hparams/test/acc"]) for r in rows if r.get("hparams/test/acc")]
    assert final == pytest.approx([metrics["final"]["test/acc"]])
    saved = yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())
    assert saved["optimizer/lr"] == 0.05 and saved["model/impl"] == "torch"


def test_a_logger_whose_extra_is_missing_names_the_extra(make_cfg, tmp_path, monkeypatch):
    # what a machine without `pip install 'task1[mlflow]'` sees: Lightning's MLFlowLogger finds no mlflow
    from lightning.pytorch.loggers import mlflow as lightning_mlflow

    monkeypatch.setattr(lightning_mlflow, "_MLFLOW_AVAILABLE", False)
    with pytest.raises(Task1Error, match=r"logger.mlflow \(lightning.pytorch.loggers.MLFlowLogger\) cannot be built: "
                                         r".*pip install 'task1\[mlflow\]'"):
        train(make_cfg("logger=mlflow", f"paths.output_dir={tmp_path}"))


def test_plain_training_never_imports_mlflow(fake_root, tmp_path):
    code = ("import atexit, runpy, sys; atexit.register(lambda: print('MLFLOW', 'mlflow' in sys.modules)); "
            "sys.argv = ['task1.train', *sys.argv[1:]]; runpy.run_module('task1.train', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code, f"data.root={fake_root}", "trainer=cpu",
                             "trainer.max_epochs=1", "figures.enabled=false", f"hydra.run.dir={tmp_path}"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MLFLOW False" in result.stdout and (tmp_path / "metrics.json").is_file()


def test_a_gpu_asked_for_where_there_is_none_ends_in_one_line(tmp_path):
    out = no_traceback(run_cli("trainer=gpu", f"hydra.run.dir={tmp_path / 'run'}", env={"CUDA_VISIBLE_DEVICES": ""}))
    assert "trainer.accelerator=gpu: no GPU found: use trainer=cpu or trainer=auto." in out


# -- MLflow, read back through a real server --------------------------------------------------------------------

@contextlib.contextmanager
def mlflow_server(store: str):
    """`mlflow server` on 127.0.0.1 over `store`, until the block ends; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(Path(store.removeprefix("sqlite:///")).parent / "server.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host",
                               "127.0.0.1", "--port", str(port), "--workers", "1"], stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"mlflow server did not start on {url}: "
                                         f"{Path(log.name).read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def rest(url: str, endpoint: str, body: dict | None = None, **query) -> dict:
    """MLflow's REST API: a GET with `query`, or a POST of `body`."""
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)


@pytest.mark.slow
def test_mlflow_logs_params_epochs_final_metrics_and_figures_as_a_server_reads_them(fake_root, tmp_path):
    out = tmp_path / "outputs"
    first = run_cli(f"data.root={fake_root}", "trainer=cpu", "trainer.max_epochs=2", "optimizer.lr=0.05",
                    "logger=[tensorboard,mlflow]", f"paths.output_dir={out}", f"hydra.run.dir={tmp_path / 'a'}")
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert list((tmp_path / "a" / "tensorboard").glob("events.out.tfevents.*"))  # both loggers, not one
    store = f"sqlite:///{out / 'mlflow' / 'mlflow.db'}"  # the default: a local store under paths.output_dir
    with mlflow_server(store) as url:
        experiment = rest(url, "experiments/get-by-name", experiment_name="task1")["experiment"]
        (run,) = rest(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["optimizer/lr"] == "0.05" and params["model/impl"] == "torch" and params["model"] == "softmax"
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["run_folder"] == str(tmp_path / "a")
        history = rest(url, "metrics/get-history", run_id=run["info"]["run_id"], metric_key="val/acc")["metrics"]
        assert [m["value"] for m in sorted(history, key=lambda m: m["step"])] == pytest.approx(
            [h["val/acc"] for h in metrics["history"]])
        latest = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        for key in ("test/acc", "val/acc", "train/loss"):
            assert latest[f"hparams/{key}"] == pytest.approx(metrics["final"][key])
        figures = rest(url, "artifacts/list", run_id=run["info"]["run_id"], path="figures")["files"]
        assert {"figures/curves.png", "figures/test_confusion.png"} <= {f["path"] for f in figures}

        # any tracking URI by override: this run logs through the server
        second = run_cli(f"data.root={fake_root}", "trainer=cpu", "trainer.max_epochs=1", "logger=mlflow",
                         f"logger.mlflow.tracking_uri={url}", "figures.enabled=false",
                         f"hydra.run.dir={tmp_path / 'b'}", env={"MLFLOW_HTTP_REQUEST_TIMEOUT": "60"})
        assert second.returncode == 0, second.stderr[-3000:]
        runs = rest(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        folders = {t["value"] for r in runs for t in r["data"]["tags"] if t["key"] == "run_folder"}
        assert folders == {str(tmp_path / "a"), str(tmp_path / "b")}


# -- an own model's mistakes: one line, before anything is built, no folder left ----------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def own_model_tree(tmp_path: Path, **drop_or_set) -> Path:
    """A --config-dir holding model/own.yaml: examples' dropout_mlp.yaml with keys dropped (None) or set."""
    model = yaml.safe_load((EXAMPLES / "conf" / "model" / "dropout_mlp.yaml").read_text())
    for key, value in drop_or_set.items():
        node, *path = model, *key.split(".")
        for part in path[:-1]:
            node = node[part]
        if value is None:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "own.yaml").write_text(yaml.safe_dump(model))
    return tmp_path / "conf"


@pytest.mark.parametrize("missing", ["loss_reduction", "task"])
def test_an_own_model_without_a_required_key_ends_in_one_line_and_leaves_no_folder(tmp_path, fake_root, missing):
    tree = own_model_tree(tmp_path, **{missing: None})
    run = tmp_path / "run"
    out = no_traceback(run_cli("--config-dir", str(tree), "model=own", f"data.root={fake_root}", "trainer=cpu",
                               f"hydra.run.dir={run}", env={"PYTHONPATH": str(EXAMPLES)}))
    assert f"model.{missing} is missing: a model config needs net, loss, task, loss_reduction" in out
    assert "ConfigAttributeError" not in out and not run.exists()


def test_an_own_model_needs_no_impl(fake_root, tmp_path, monkeypatch):
    from task1 import api

    monkeypatch.syspath_prepend(str(EXAMPLES))
    tree = own_model_tree(tmp_path, **{"net.num_hiddens1": 16, "net.num_hiddens2": 16})
    assert "impl" not in yaml.safe_load((tree / "model" / "own.yaml").read_text())
    result = api.train("model=own", f"data.root={fake_root}", "trainer=cpu", "trainer.max_epochs=1", "logger=none",
                       "figures.enabled=false", f"hydra.run.dir={tmp_path / 'run'}", config_dir=tree)
    assert result.status == "completed" and "test/acc" in result.final


@pytest.mark.slow  # one process that imports Lightning
def test_an_own_model_whose_constructor_raises_ends_in_one_line_and_leaves_no_folder(tmp_path, fake_root):
    run = tmp_path / "run"
    out = no_traceback(run_cli("--config-dir", str(EXAMPLES / "conf"), "model=dropout_mlp",
                               "model.net.dropout1=1.5", f"data.root={fake_root}", "trainer=cpu",
                               f"hydra.run.dir={run}", env={"PYTHONPATH": str(EXAMPLES)}))
    assert "model.net (mypkg.models.DropoutMLP) cannot be built: ValueError: dropout probability has to be " \
           "between 0 and 1, but got 1.5. Fix its settings." in out
    assert not run.exists()


def test_a_target_that_cannot_be_imported_says_own_classes_are_allowed(make_cfg, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    with pytest.raises(Task1Error) as e:
        train(make_cfg("model.net._target_=mypkg.models.NoSuch"))
    message = str(e.value)
    assert message.startswith("model.net._target_='mypkg.models.NoSuch' cannot be imported")
    assert "or your own: its package on PYTHONPATH" in message and "of task1, torch or lightning" not in message


def test_a_key_of_the_chosen_model_that_an_own_class_does_not_take_names_the_class(tmp_path, monkeypatch):
    from task1 import api

    monkeypatch.syspath_prepend(str(EXAMPLES))
    with pytest.raises(Task1Error) as e:
        api.train("model=mlp", "model.net._target_=mypkg.models.DropoutMLP", f"hydra.run.dir={tmp_path / 'run'}")
    message = str(e.value)
    assert message.startswith("model.net.num_hiddens is not a field of model.net (mypkg.models.DropoutMLP): did you "
                              "mean model.net.num_hiddens")
    assert "choose model=mlp" not in message and not (tmp_path / "run").exists()


def test_another_optimizer_class_through_target_drops_the_keys_it_does_not_take(make_cfg, tmp_path, caplog):
    cfg = make_cfg("optimizer._target_=torch.optim.RMSprop", "optimizer.lr=0.01", "figures.enabled=false")
    with caplog.at_level("INFO", logger="task1"):
        metrics = train(cfg)
    assert metrics["status"] == "completed"
    assert "optimizer._target_=torch.optim.RMSprop takes no dampening, nesterov: dropped" in caplog.text
    saved = yaml.safe_load((tmp_path / "config_resolved.yaml").read_text())["optimizer"]
    assert saved == {"_target_": "torch.optim.RMSprop", "_partial_": True, "lr": 0.01, "momentum": 0.0,
                     "weight_decay": 0.0}


def test_a_made_up_key_beside_another_optimizer_class_is_still_refused(make_cfg):
    with pytest.raises(Task1Error, match=r"optimizer.alpah is not a field of optimizer \(torch.optim.RMSprop\): did "
                                         r"you mean optimizer.alpha\?"):
        train(make_cfg("optimizer._target_=torch.optim.RMSprop", "+optimizer.alpah=0.9"))


def test_another_scheduler_class_through_target_drops_the_keys_it_does_not_take(make_cfg):
    from task1.core.config import validate

    cfg = make_cfg("scheduler=step", "scheduler._target_=torch.optim.lr_scheduler.ExponentialLR")
    validate(cfg)
    assert set(cfg.scheduler) == {"_target_", "_partial_", "gamma", "interval", "frequency"}  # step_size dropped
