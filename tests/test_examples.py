"""docs/extending.md, run as written: every `task1 train` command of the page, from a copy of examples/ in a folder
outside the checkout, through the real command line."""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli

PAGE = ROOT / "docs" / "extending.md"


def page_commands() -> list[str]:
    """The commands of the page's bash blocks (`export` lines left out: the test sets PYTHONPATH itself)."""
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("export ")]


TRAIN = [c for c in page_commands() if c.startswith("task1 train")]


def test_the_page_shows_every_example_and_every_yaml_of_examples_conf_is_used():
    assert len(TRAIN) >= 7 and any(c.startswith("python examples/make_arrays.py") for c in page_commands())
    shown, page = " ".join(TRAIN), _without_comments(PAGE.read_text())
    for path in (ROOT / "examples" / "conf").glob("*/*.yaml"):
        assert f"{path.parent.name}={path.stem}" in shown or f"{path.stem}]" in shown, path  # run by a command
        head = f"# examples/conf/{path.parent.name}/{path.name}\n"
        assert head in page, path  # shown on the page, as it is in the file
        shown_yaml = page.split(head, 1)[1].split("```", 1)[0]
        assert yaml.safe_load(shown_yaml) == yaml.safe_load(_without_comments(path.read_text())), path


def _without_comments(text: str) -> str:
    """The text less its YAML comments at line ends (the page's and the file's comments may differ)."""
    return "\n".join(line.split("  #")[0].rstrip() for line in text.splitlines())


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A copy of examples/ in a folder that is not the checkout."""
    here = tmp_path_factory.mktemp("user")
    shutil.copytree(ROOT / "examples", here / "examples")
    return here


def run_page_command(command: str, where: Path, run: Path, fake_root: Path) -> subprocess.CompletedProcess:
    """One command of the page as a user runs it in `where`, made small: the CPU, one epoch, the generated data."""
    args = shlex.split(command)
    if args[0] == "python":
        return subprocess.run([sys.executable, *args[1:]], cwd=where, capture_output=True, text=True, timeout=300)
    extra = ["trainer=cpu", "trainer.max_epochs=2", f"hydra.run.dir={run}"]
    if not any(a.startswith("data=") for a in args):
        extra.append(f"data.root={fake_root}")
    return run_cli("-m", "task1", *args[1:], *extra, cwd=where, env={"PYTHONPATH": str(where / "examples")})


def check_run(command: str, run: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2, command
    config = yaml.safe_load((run / "config_resolved.yaml").read_text())
    if "model=dropout_mlp" in command:
        assert config["model"]["net"]["_target_"] == "mypkg.models.DropoutMLP"
    if "optimizer=sign_sgd" in command:
        assert config["optimizer"]["_target_"] == "mypkg.optim.SignSGD"
    if "scheduler=warmup" in command:  # 10 warm-up steps of lr 0.1 / 10, 0.2 / 10, ...
        assert metrics["history"][0]["train/lr"] == pytest.approx(0.01)
    if "callbacks=weight_norms" in command:
        norms = [json.loads(line) for line in (run / "weight_norms.jsonl").read_text().splitlines()]
        assert [n["epoch"] for n in norms] == [1, 2] and all(n["norm"] > 0 for n in norms)
    if "jsonl" in command:
        logged = [json.loads(line) for line in (run / "jsonl" / "metrics.jsonl").read_text().splitlines()]
        assert any("train/loss_step" in row for row in logged) and any("val/acc" in row for row in logged)
        assert (run / "jsonl" / "hparams.json").is_file() and list((run / "tensorboard").iterdir())
    if "data=blobs" in command:
        assert config["data"]["_target_"] == "mypkg.data.Blobs" and metrics["final"]["test/acc"] > 0.5  # of 3 classes
    if "data=arrays" in command:
        assert config["model"]["num_inputs"] == 2 and config["model"]["num_outputs"] == 3
        assert set(metrics["per_class_acc"]["test"]) == {"north", "east", "south-west"}


@pytest.mark.slow  # a process that imports Lightning and trains
def test_the_model_example_runs_from_outside_the_checkout(outside, fake_root, tmp_path):
    command = next(c for c in TRAIN if "model=dropout_mlp" in c)
    result = run_page_command(command, outside, tmp_path / "run", fake_root)
    assert result.returncode == 0, result.stderr[-3000:]
    check_run(command, tmp_path / "run")
    assert not str((tmp_path / "run").resolve()).startswith(str(ROOT))


@pytest.mark.slow  # a process each
@pytest.mark.parametrize("command", [c for c in TRAIN if "model=dropout_mlp" not in c])
def test_every_command_of_the_page_runs_from_outside_the_checkout(outside, fake_root, tmp_path, command):
    if "data=arrays" in command:  # the page makes its file first
        make = next(c for c in page_commands() if c.startswith("python examples/make_arrays.py"))
        made = run_page_command(make, outside, tmp_path, fake_root)
        assert made.returncode == 0, made.stderr[-3000:]
    result = run_page_command(command, outside, tmp_path / "run", fake_root)
    assert result.returncode == 0, result.stderr[-3000:]
    check_run(command, tmp_path / "run")
