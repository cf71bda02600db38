"""A sweep's job whose folder another process holds is left untouched; a job's saved config is read as data."""

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
