"""A run or sweep folder that cannot be made or written ends the command in one line that names it and why."""

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, no_traceback, run_cli

NOT_PERMITTED = Path("/sys/task1_outputs")  # sysfs refuses a new folder even to root, where chmod would not


@pytest.mark.parametrize("mode", ["run", "sweep", "rerun"])
@pytest.mark.parametrize("where", ["through a regular file", "not permitted"])
def test_a_folder_that_cannot_be_made_ends_in_one_line(tmp_path, mode, where):
    if where == "not permitted" and not os.path.ismount("/sys"):
        pytest.skip("no sysfs mounted at /sys to be refused by")
    (tmp_path / "file").write_text("a regular file, not a folder\n")
    folder = tmp_path / "file" / "out" if where == "through a regular file" else NOT_PERMITTED
    key = "hydra.sweep.dir" if mode == "sweep" else "hydra.run.dir"
    if mode == "run":
        result = run_cli("trainer=cpu", f"{key}={folder}")
    elif mode == "sweep":
        result = run_cli("--multirun", "trainer=cpu", "seed=1,2", f"{key}={folder}")
    else:  # a saved config has no conf/hydra/default.yaml: rerun brings its callbacks along
        saved = tmp_path / "old_run" / ".hydra"
        saved.mkdir(parents=True)
        (saved / "config.yaml").write_text("seed: 1\n")
        (saved / "hydra.yaml").write_text("hydra: {}\n")
        result = run_cli("-m", "task1", "rerun", str(saved.parent), f"{key}={folder}")
    out = no_traceback(result)
    reason = r"NotADirectoryError: \[Errno 20\] Not a directory" if where == "through a regular file" else \
        r"PermissionError: \[Errno (1|13)\] (Operation not permitted|Permission denied)"
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    path = re.escape(str(folder))
    assert re.search(rf"{key}={path}: this folder cannot be made or written \({reason}: '{path}'\)", lines[0])


def test_a_full_disk_ends_in_one_line(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("a full disk is a small tmpfs filled up, which takes root and mount")
    try:
        with pytest.raises(OSError, match="No space left"), open(disk / "filler", "wb") as f:
            f.write(bytes(1 << 20))
        # making the folder still works on a full tmpfs: only writing into it fails
        out = no_traceback(run_cli("trainer=cpu", f"hydra.run.dir={disk / 'run'}"))
        assert f"hydra.run.dir={disk / 'run'}: this folder cannot be made or written (OSError: [Errno 28] No " \
               f"space left on device)" in out
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("mode", [pytest.param("run", marks=pytest.mark.slow), "sweep"])
def test_the_folder_checked_is_the_folder_used(tmp_path, mode):
    # the default folders are named by ${now:...}: checked and used, it is resolved once, so there is one folder
    # (a run with a mistake in its config leaves no folder: this one fails later, on data that is not there)
    multirun = ["--multirun", "data.batch_size=0,-1"] if mode == "sweep" else [f"paths.data_dir={tmp_path / 'none'}"]
    run_cli(*multirun, cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    made = list((tmp_path / "outputs" / ("multiruns" if mode == "sweep" else "runs")).iterdir())
    assert len(made) == 1, made
    assert (made[0] / ("0/.hydra" if mode == "sweep" else ".hydra") / "config.yaml").is_file()


def test_a_run_refused_for_its_config_leaves_no_folder_and_one_that_started_keeps_its(tmp_path):
    refused = run_cli("data.batch_size=0", f"hydra.run.dir={tmp_path / 'refused'}")
    assert refused.returncode == 1 and "data.batch_size=0 is not allowed" in refused.stdout
    assert not (tmp_path / "refused").exists()  # Hydra made it, with .hydra/, train.log and the lock: gone
    started = run_cli(f"paths.data_dir={tmp_path / 'none'}", f"hydra.run.dir={tmp_path / 'started'}")
    assert started.returncode == 1 and "Fashion-MNIST is not in" in started.stdout
    assert (tmp_path / "started" / "metrics.json").is_file()  # it began: its record of why it stopped stays
