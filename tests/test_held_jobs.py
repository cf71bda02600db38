"""A sweep's job whose folder another process holds is left untouched; a job's saved config is read as data."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli

from task1 import Task1Error
from task1.sweeps.folders import continue_job

HOLD = ("import sys, time\nfrom task1.io import hold\n"
        "with hold(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)")


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_sweep_leaves_a_job_folder_another_process_holds_as_it_is(fake_root, tmp_path):
    sweep, overrides = tmp_path / "sweep", ["optimizer.lr=0.1", f"data.root={fake_root}", "trainer=cpu", "logger=none"]
    job = sweep / "0"  # the folder of this job in an earlier start of the sweep, still training
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text("the earlier start's\n")
    (job / "train.log").write_text("[training]\n")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(job)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "held\n"
        before = snapshot(job)
        result = run_cli("--multirun", *overrides, f"hydra.sweep.dir={sweep}")
        out = result.stdout + result.stderr
        assert result.returncode == 0 and "Traceback" not in out, out[-3000:]
        assert snapshot(job) == before  # .hydra/*, train.log, .lock: byte for byte; nothing new
        assert out.count(f"{job} is in use by process {proc.pid} on ") == 1, out[-3000:]
        assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0"]  # no other folder for it
        # the report says it runs elsewhere, and where, not that it was lost
        with (sweep / "summary.csv").open() as f:
            (row,) = csv.DictReader(f)
        assert row["status"] == "in use", row
        assert row["error"].startswith(f"by process {proc.pid} on "), row
        assert "| 0 | in use |" in (sweep / "summary.md").read_text()
    finally:
        proc.kill()
        proc.wait(timeout=60)


def test_a_jobs_saved_config_that_is_not_data_fails_it_in_one_line(make_cfg, tmp_path):
    out = tmp_path / "job"
    cfg = make_cfg(f"output_dir={out}")
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"status": "completed", "final": {"val/acc": 0.5}}))
    (out / "config_resolved.yaml").write_text("!!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(Task1Error, match=rf"{out / 'config_resolved.yaml'} cannot be read as a saved config: it "
                                         r"holds a Python object tag"):
        continue_job(cfg)
    (out / "config_resolved.yaml").write_text("a: [1\n")  # broken YAML
    with pytest.raises(Task1Error, match=rf"{out / 'config_resolved.yaml'} cannot be read as a saved config"):
        continue_job(cfg)
    assert json.loads((out / "metrics.json").read_text())["status"] == "completed"  # nothing lost


def test_the_process_that_runs_a_job_holds_its_folder_and_a_launcher_that_looks_it_up_does_not(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    from task1.cli import CONF
    from task1.io import held
    from task1.sweeps import folders

    def job_cfg(num: int):  # a job's config as a launcher makes it (load_sweep_config, then its number)
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[f"optimizer.lr=0.{num + 1}", f"hydra.sweep.dir={tmp_path}"],
                          return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode, cfg.hydra.job.num = RunMode.MULTIRUN, num
        return cfg

    folders.register_resolver()
    first, second = job_cfg(0), job_cfg(1)
    try:
        HydraConfig.instance().set_config(first)  # Hydra's run_job: the job's config made the current one
        assert first.hydra.sweep.subdir == "0" and held(tmp_path / "0")  # held while Hydra writes into it
        # a launcher looking a job up to submit it elsewhere (task1's SLURM and packed launchers): no hold
        assert second.hydra.sweep.subdir == "1" and not held(tmp_path / "1")
        folders.let_go(tmp_path / "0")  # the job has started: its function takes the folder over
        assert not held(tmp_path / "0")
    finally:
        folders.let_go(tmp_path / "0")
        HydraConfig.instance().cfg = None
