"""Sweeps for real, on generated data: joblib and submitit multiruns, their report, the HParams view, DDP (the Optuna
search: test_search.py)."""

import csv
import gzip
import json
import os
import re

import pytest
import torch
from conftest import CONF, ROOT, compose_cfg, gz_only_copy, make_fashion_mnist, run_cli
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from task1.core.build import build_system
from task1.data import TensorLoader
from task1.data.fashion_mnist import read_split
from task1.sweeps import context as sweep_module

TINY = ["trainer=cpu", "trainer.max_epochs=1", "data.batch_size=64"]


def sweep_cli(*overrides: str):
    """A multirun from the command line; fails the test with the output's tail if it does not exit cleanly."""
    result = run_cli("--multirun", *overrides)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def jobs_of(sweep) -> dict[str, dict]:
    """Job folder name -> its metrics.json."""
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}


def report_rows(sweep) -> list[dict]:
    with open(sweep / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def hparams_view(sweep) -> dict[str, dict]:
    """What TensorBoard's HParams tab reads under the sweep root: run -> hparams, plugin tags, scalar tags."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata
    from tensorboard.util import tensor_util

    mux = EventMultiplexer().AddRunsFromDirectory(str(sweep))
    mux.Reload()
    view = {}
    for run, tags in mux.PluginRunToTagToContent(metadata.PLUGIN_NAME).items():
        start = metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
        scalars = mux.GetAccumulator(run).Tags()["tensors"]
        view[run] = {
            "hparams": {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()},
            "plugin_tags": set(tags),
            "tags": set(scalars),
            "metrics": {t: float(tensor_util.make_ndarray(mux.Tensors(run, t)[-1].tensor_proto))
                        for t in scalars if t.startswith("hparams/")},
        }
    return view


@pytest.mark.slow
def test_joblib_sweep_writes_report_plot_and_hparams_view(fake_root, tmp_path):
    sweep = tmp_path / "sweep"
    sweep_cli("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"data.root={fake_root}", *TINY,
              "model=softmax,mlp", "optimizer.lr=0.05,0.5", f"hydra.sweep.dir={sweep}")
    jobs = jobs_of(sweep)
    assert sorted(jobs) == ["0", "1", "2", "3"] and all(m["status"] == "completed" for m in jobs.values())
    cores = len(os.sched_getaffinity(0))
    assert {m["threads"] for m in jobs.values()} == {max(1, cores // 2)}  # two parallel jobs share the cores

    rows = report_rows(sweep)
    assert [(r["job"], r["model"], r["optimizer.lr"]) for r in rows] == [
        ("0", "softmax", "0.05"), ("1", "softmax", "0.5"), ("2", "mlp", "0.05"), ("3", "mlp", "0.5")]
    for r in rows:
        final = jobs[r["job"]]["final"]
        assert r["status"] == "completed" and r["error"] == ""
        assert float(r["val/acc"]) == final["val/acc"] and float(r["test/loss"]) == final["test/loss"]
        assert float(r["wall_time_s"]) == jobs[r["job"]]["wall_time_s"]
    best = max(jobs, key=lambda k: (jobs[k]["final"]["val/acc"], -int(k)))
    md = (sweep / "summary.md").read_text()
    assert "4 jobs: 4 completed" in md and f"job {best} (" in md and "![val/acc" in md
    png = (sweep / "summary.png").read_bytes()
    assert png.startswith(b"\x89PNG")

    view = hparams_view(sweep)
    assert sorted(view) == [f"{j}/tensorboard" for j in "0123"]  # all jobs under one root: one HParams row each
    for r in rows:
        run = view[f"{r['job']}/tensorboard"]
        assert run["hparams"]["model"] == r["model"] and run["hparams"]["optimizer/lr"] == float(r["optimizer.lr"])
        assert run["plugin_tags"] == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
        assert run["metrics"] == pytest.approx({f"hparams/{k}": v for k, v in jobs[r["job"]]["final"].items()})
        assert "hp_metric" not in run["tags"] and "output_dir" not in run["hparams"]
    assert ("model/num_hiddens" in view["2/tensorboard"]["hparams"]) and (
        "model/num_hiddens" not in view["0/tensorboard"]["hparams"])


@pytest.mark.slow
def test_parallel_jobs_unzip_a_fresh_data_folder_without_spoiling_it(real_root, tmp_path):
    # as scripts/setup.sh leaves it: the .gz files only (generated ones would fail torchvision's MD5s); four
    # processes start at once and each unzips what it does not find, into the same folder
    raw, gz = gz_only_copy(real_root, tmp_path / "data")
    sweep = tmp_path / "sweep"
    sweep_cli("hydra/launcher=joblib", "hydra.launcher.n_jobs=4", f"paths.data_dir={tmp_path / 'data'}",
              "trainer=cpu", "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "logger=none",
              "figures.enabled=false", "seed=0,1,2,3", f"hydra.sweep.dir={sweep}")
    jobs = jobs_of(sweep)
    assert sorted(jobs) == ["0", "1", "2", "3"], sorted(jobs)
    assert all(m["status"] == "completed" for m in jobs.values()), {k: m.get("error") for k, m in jobs.items()}
    assert sorted(p.name for p in raw.iterdir()) == sorted([*(p.name for p in gz), *(p.stem for p in gz)])
    for path in gz:  # no temporary file left, and every unzipped file whole
        assert (raw / path.stem).read_bytes() == gzip.decompress(path.read_bytes())


@pytest.mark.slow
def test_failed_job_is_reported_and_the_others_complete(fake_root, tmp_path):
    sweep = tmp_path / "sweep"
    sweep_cli(f"data.root={fake_root}", *TINY, "logger=none", "optimizer.lr=-1,0.1", "data.val_size=0,100000",
              f"hydra.sweep.dir={sweep}")
    jobs = jobs_of(sweep)
    # jobs: (-1, 0) (-1, 100000) (0.1, 0) (0.1, 100000); only the third can train
    assert [jobs[k]["status"] for k in "0123"] == ["failed", "failed", "completed", "failed"]
    assert jobs["0"]["error"].startswith("optimizer.lr=-1 is not allowed")  # refused before anything is built
    assert jobs["3"]["error"].startswith("data.val_size=100000 is not allowed: expected 0 up to 599")
    rows = report_rows(sweep)
    assert [r["status"] for r in rows] == ["failed", "failed", "completed", "failed"]
    assert rows[0]["error"] == jobs["0"]["error"] and rows[0]["val/acc"] == "" and float(rows[2]["val/acc"]) > 0
    md = (sweep / "summary.md").read_text()
    assert "4 jobs: 1 completed, 3 failed" in md and "Best val/acc" in md and "job 2 (" in md

    # the report is rebuilt from the folders alone
    before = (sweep / "summary.csv").read_text()
    for name in ("summary.csv", "summary.md", "summary.png"):
        (sweep / name).unlink()
    result = run_cli("-m", "task1", "summarize", str(sweep))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (sweep / "summary.csv").read_text() == before and (sweep / "summary.png").is_file()

    result = run_cli("-m", "task1", "summarize", str(tmp_path))
    assert result.returncode == 1 and "holds no job folders" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_submitit_local_sweep_completes(fake_root, tmp_path):
    sweep = tmp_path / "sweep"
    sweep_cli("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", f"data.root={fake_root}", *TINY,
              "logger=none", "optimizer.lr=0.1,0.5", f"hydra.sweep.dir={sweep}")
    jobs = jobs_of(sweep)
    assert sorted(jobs) == ["0", "1"] and all(m["status"] == "completed" for m in jobs.values())
    assert [r["status"] for r in report_rows(sweep)] == ["completed", "completed"]
    assert list((sweep / ".submitit").glob("*/*_log.out"))  # each job ran as a submitit job


def test_slurm_preset_has_partition_gpus_and_time_limit():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2",
            "hydra.launcher.timeout_min=30"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 2, 30)
    assert type(instantiate(launcher)).__name__ == "SlurmLauncher"


@pytest.fixture
def hydra_config():
    """Set a composed config (with its hydra node) as the running job's, as Hydra does in a job."""

    def set_config(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)

    yield set_config
    HydraConfig.instance().cfg = None


@pytest.mark.parametrize(("overrides", "threads"), [
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=4"], 4),     # 16 cores / 4 parallel jobs
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=-1"], 1),    # joblib's default: one job per core
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=-9"], 2),    # all cores but 8: 8 jobs
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=32"], 1),    # more jobs than cores: never below one
    (["hydra/launcher=joblib", "threads=3"], 3),                   # set explicitly: kept
    ([], 1),                                                       # the basic launcher: the configured value
])
def test_thread_budget_shares_the_cores_among_parallel_jobs(hydra_config, monkeypatch, overrides, threads):
    monkeypatch.setattr(sweep_module, "_cores", lambda: 16)
    hydra_config(*overrides)
    assert sweep_module.thread_budget(compose_cfg(*overrides).threads) == threads


def test_ranks_see_disjoint_shards_that_cover_the_split():
    X, y = torch.arange(11.0).unsqueeze(1), torch.arange(11)
    for shuffle in (True, False):
        shards = [torch.cat([b for _, b in TensorLoader(X, y, 3, shuffle=shuffle, seed=5, rank=r, world_size=2)])
                  for r in range(2)]
        seen = [set(s.tolist()) for s in shards]
        assert not seen[0] & seen[1] and all(len(s) == len(set(s.tolist())) for s in shards)
        if shuffle:  # training: equal shards, so both ranks take the same number of steps
            assert len(shards[0]) == len(shards[1]) == 5
        else:  # evaluation: every example exactly once
            assert seen[0] | seen[1] == set(range(11))


@pytest.mark.slow
def test_unseeded_ddp_ranks_shuffle_alike_so_their_shards_split_the_epoch(tmp_path):
    # seed=null: each process draws its own shuffle seed; only the first one's may be used, or the shards overlap
    root = make_fashion_mnist(tmp_path / "data", n_train=64, n_test=16)
    result = run_cli("-m", "ddp_seen_examples", str(root), str(tmp_path), env={"PYTHONPATH": str(ROOT / "tests")})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 32
    assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(64))


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_in_a_multirun(fake_root, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [f"data.root={fake_root}", *TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                 "logger=none", "model=mlp", "model.num_hiddens=32"]
    result = sweep_cli(*overrides, "optimizer.lr=0.1,0.5", f"hydra.sweep.dir={sweep}")
    out = result.stdout + result.stderr
    # the metrics are summed over the ranks by task1 (no advice to sync them), and Lightning's lines come once
    assert "sync_dist" not in out and "INFO: " not in out, out[-3000:]
    jobs = jobs_of(sweep)
    assert sorted(jobs) == ["0", "1"] and all(m["status"] == "completed" for m in jobs.values())
    assert jobs["0"]["final"] != jobs["1"]["final"]  # two jobs, two folders, not one job twice
    X, y = read_split(fake_root, train=False)
    for job, lr in (("0", "0.1"), ("1", "0.5")):
        folder = sweep / job
        final = jobs[job]["final"]
        # both ranks ran this job in its folder, and ended with the same (reduced) metrics
        ranks = [re.search(rf"rank {r}/2 final (\{{.*\}})", (folder / log).read_text())
                 for r, log in ((0, "train.log"), (1, "train_ddp_process_1.log"))]
        assert all(ranks), f"no per-rank line in {folder}"
        assert json.loads(ranks[0][1]) == json.loads(ranks[1][1]) == final
        # the test metrics summed over the two shards equal one pass over the whole test split
        system = build_system(compose_cfg(*overrides, f"optimizer.lr={lr}"))
        system.load_state_dict(torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
        with torch.no_grad():
            y_hat = system(X)
        assert final["test/loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(y_hat, y)), rel=1e-5)
        assert final["test/acc"] == int((y_hat.argmax(1) == y).sum()) / len(y)  # an exact fraction


@pytest.mark.slow
def test_a_ddp_sweep_of_a_saved_config_trains_that_config_on_every_rank_and_leaves_nothing_behind(fake_root,
                                                                                                   tmp_path):
    # the saved config's width (24) is in no conf/ file: a rank that composed conf/config.yaml would build
    # another model, and the ranks could not train together
    quiet = [f"data.root={fake_root}", *TINY, "logger=none", "figures.enabled=false"]
    run = tmp_path / "run"
    assert run_cli(*quiet, "model=mlp", "model.num_hiddens=24", f"hydra.run.dir={run}").returncode == 0
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "task1", "rerun", str(run), "--multirun", "+trainer.strategy=ddp", "trainer.accelerator=cpu",
                     "trainer.devices=2", "optimizer.lr=0.1,0.5", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    jobs = jobs_of(sweep)
    assert sorted(jobs) == ["0", "1"] and all(m["status"] == "completed" for m in jobs.values())
    for job in ("0", "1"):  # (DDP refuses ranks whose parameters differ in shape)
        ranks = [re.search(rf"rank {r}/2 final (\{{.*\}})", (sweep / job / log).read_text())
                 for r, log in ((0, "train.log"), (1, "train_ddp_process_1.log"))]
        assert json.loads(ranks[0][1]) == json.loads(ranks[1][1]) == jobs[job]["final"]
    # the second job's record names the command that was typed, not the first job's rank command
    assert jobs["1"]["provenance"]["argv"] == jobs["0"]["provenance"]["argv"]
    assert "optimizer.lr=0.1,0.5" in jobs["1"]["provenance"]["argv"]
    typed = ["task1", "rerun", str(run), "--multirun", "+trainer.strategy=ddp", "trainer.accelerator=cpu",
             "trainer.devices=2", "optimizer.lr=0.1,0.5", f"hydra.sweep.dir={sweep}"]
    assert jobs["1"]["provenance"]["command"] == typed
