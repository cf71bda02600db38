"""The wheel, as a user gets it: built from the repository, installed into a venv of its own, and every command run
from a folder outside the checkout with the configs the wheel ships."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

TINY = ["trainer=cpu", "trainer.max_epochs=1", "data.batch_size=64"]


def run(command: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}:\n{(result.stdout + result.stderr)[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv holding the wheel built from this checkout's files (and the sweeps extra): its bin folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    source = tmp / "source"  # the repository's files alone: nothing built or run in the checkout comes along
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    start = time.perf_counter()
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", source], tmp)
    (wheel,) = (tmp / "dist").glob("task1-*.whl")
    run([sys.executable, "-m", "venv", tmp / "venv"], tmp)
    bin_ = tmp / "venv" / "bin"
    run([bin_ / "python", "-m", "pip", "install", "--quiet", f"{wheel}[sweeps]"], tmp, timeout=1200)
    print(f"wheel built and installed into a fresh venv in {time.perf_counter() - start:.0f} s")
    yield bin_
    shutil.rmtree(tmp / "venv")  # some GB of torch


@pytest.mark.slow
def test_the_wheel_runs_every_command_from_anywhere(installed, tmp_path, fake_root):
    bin_, here = installed, tmp_path / "elsewhere"
    here.mkdir()
    where = run([bin_ / "python", "-c", "import task1.cli as c, task1; print(task1.__file__); print(c.CONF)"], here)
    package, conf = where.stdout.split()
    assert "site-packages" in package and Path(conf) == Path(package).parent / "conf"  # not the checkout's
    data = [f"paths.data_dir={fake_root}"]

    assert "model:" in run([bin_ / "task1", "train", "--help"], here).stdout
    run([bin_ / "task1", "train", *TINY, *data, "hydra.run.dir=run"], here)  # relative to the folder it runs in
    metrics = json.loads((here / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["provenance"]["task1"] == "0.1.0"
    assert metrics["provenance"]["git_commit"] is None  # an installed wheel is no checkout
    assert metrics["provenance"]["command"] == ["task1", "train", *TINY, *data, "hydra.run.dir=run"]  # as typed

    search = here / "search"
    run([bin_ / "task1", "train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "data.val_size=100",
         "model.num_hiddens=16", "logger=none", "figures.enabled=false", *TINY, *data, f"hydra.sweep.dir={search}"],
        here)
    results = yaml.safe_load((search / "optimization_results.yaml").read_text())
    assert results["n_trials"] == 2 and results["states"] == {"complete": 2}
    run([bin_ / "task1", "summarize", search], here)
    assert (search / "summary.md").is_file()

    run([bin_ / "task1", "rerun", here / "run", "optimizer.lr=0.2", "hydra.run.dir=again"], here)
    assert json.loads((here / "again" / "metrics.json").read_text())["final"]["train/lr"] == 0.2
    run([bin_ / "task1", "rerun", here / "run", "model=mlp", "model.num_hiddens=8", "hydra.run.dir=mlp"], here)
    assert "MLP" in (here / "mlp" / "config_resolved.yaml").read_text()
    assert "test" in run([bin_ / "task1", "eval", f"ckpt_path={here / 'run/checkpoints/last.ckpt'}"], here).stdout
    run([bin_ / "task1", "curves", here / "run", here / "again", "--out", "curves.png"], here)
    run([bin_ / "task1", "show", *data], here)
    run([bin_ / "task1", "lr-schedule", "scheduler=cosine", "trainer.max_epochs=2"], here)
    assert list((here / "outputs" / "show").glob("*/train.png")) and (here / "curves.png").is_file()
    assert list((here / "outputs" / "lr_schedule").glob("*/lr_schedule.png"))
    status = subprocess.run([bin_ / "task1", "reproduce", "--experiments", "d2l_3_2_linear_scratch", "--seeds", "0",
                             "--out", "book", "trainer=cpu", "logger=none"], cwd=here, capture_output=True, text=True,
                            timeout=600)
    assert json.loads((here / "book" / "reproduce.json").read_text())["sweep_exit_status"] == 0, status.stderr[-3000:]

    # --config-dir still adds a user's own configs to the packaged ones
    (here / "mine" / "optimizer").mkdir(parents=True)
    (here / "mine" / "optimizer" / "slow.yaml").write_text("_target_: torch.optim.SGD\n_partial_: true\nlr: 0.01\n")
    run([bin_ / "task1", "train", "--config-dir", "mine", "optimizer=slow", *TINY, *data, "hydra.run.dir=slow"], here)
    assert json.loads((here / "slow" / "metrics.json").read_text())["final"]["train/lr"] == 0.01

    # the Python API, and the sweeper in an app that is not task1's
    code = f"from task1 import api; print(api.train(*{[*TINY, *data, 'logger=none']!r}).status)"
    assert "completed" in run([bin_ / "python", "-c", code], here).stdout
    (here / "app" / "conf").mkdir(parents=True)
    (here / "app" / "conf" / "config.yaml").write_text("x: 0.5\n")
    (here / "app" / "app.py").write_text("import hydra\n\n\n@hydra.main(version_base='1.3', config_path='conf', "
                                         "config_name='config')\ndef main(cfg):\n    return (cfg.x - 0.3) ** 2\n\n\n"
                                         "main()\n")
    run([bin_ / "python", "app.py", "-m", "hydra/sweeper=optuna_search", "hydra.sweeper.n_trials=2",
         "hydra.sweeper.direction=minimize", "hydra/sweeper/pruner=nop", "x=interval(0,1)", "hydra.sweep.dir=study"],
        here / "app")
    assert yaml.safe_load((here / "app" / "study" / "optimization_results.yaml").read_text())["n_trials"] == 2
