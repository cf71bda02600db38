"""The command line: answers that import no Lightning, console scripts, and the Lightning short-cuts' check."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

# runs a `python -m` module as the user would, then says whether Lightning (or torch) was ever imported
PROBE = """
import atexit, runpy, sys
atexit.register(lambda: print("IMPORTED", "lightning" in sys.modules, "torch" in sys.modules, file=sys.stderr))
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def probe(module: str, *args: str, cwd: Path = ROOT) -> tuple[subprocess.CompletedProcess, bool, bool]:
    result = subprocess.run([sys.executable, "-c", PROBE, module, *args], cwd=cwd, capture_output=True, text=True,
                            timeout=300)
    line = [x for x in result.stderr.splitlines() if x.startswith("IMPORTED ")][-1].split()
    return result, line[1] == "True", line[2] == "True"


def a_sweep(folder: Path) -> Path:
    """A finished two-job sweep's folders, as task1 writes them."""
    for job, lr, acc in ((0, "0.1", 0.8), (1, "0.3", 0.7)):
        (folder / str(job) / ".hydra").mkdir(parents=True)
        (folder / str(job) / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={lr}\n")
        history = [{"epoch": 0, "train/loss": 0.5, "train/acc": acc, "val/loss": 0.6, "val/acc": acc}]
        (folder / str(job) / "metrics.json").write_text(json.dumps(
            {"status": "completed", "final": {"val/acc": acc}, "history": history, "wall_time_s": 1.0}))
    return folder


@pytest.mark.parametrize("case", ["help", "cfg", "bad value", "unknown key", "trainer key typo", "lr_schedule",
                                  "summarize", "curves", "reproduce --no-run",
                                  pytest.param("show", marks=pytest.mark.slow)])  # show's run: test_figures.py
def test_quick_commands_do_not_import_lightning(tmp_path, fake_root, case):
    commands = {
        "help": (0, "task1.train", "--help"),
        "cfg": (0, "task1.train", "--cfg", "job"),
        "bad value": (1, "task1.train", "data.batch_size=0", f"hydra.run.dir={tmp_path}"),
        "unknown key": (1, "task1.train", "+optimizer.lrr=0.1", f"hydra.run.dir={tmp_path}"),
        "trainer key typo": (1, "task1.train", "+trainer.max_epoch=3", f"hydra.run.dir={tmp_path}"),
        "lr_schedule": (0, "task1", "lr-schedule", "scheduler=cosine", "trainer.max_epochs=2",
                        f"hydra.run.dir={tmp_path}"),
        "summarize": (0, "task1", "summarize", str(a_sweep(tmp_path / "sweep"))),
        "curves": (0, "task1", "curves", str(a_sweep(tmp_path / "sweep2")), "--out", str(tmp_path / "c.png")),
        "reproduce --no-run": (1, "task1", "reproduce", "--no-run", "--out", str(tmp_path), "--experiments",
                               "d2l_3_2_linear_scratch"),
        "show": (0, "task1", "show", f"paths.data_dir={fake_root}", f"paths.output_dir={tmp_path}"),
    }
    status, *command = commands[case]
    result, lightning, torch = probe(*command)
    assert result.returncode == status, result.stderr[-3000:]
    assert not lightning, f"{' '.join(command)} imported Lightning"
    if case in ("help", "cfg", "bad value"):
        assert not torch, f"{' '.join(command)} imported torch"
    if case == "help":  # every group of conf/ with its options, the default marked
        for group in ("data", "model", "optimizer", "scheduler", "trainer", "logger", "experiment"):
            options = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
            assert any(line.split()[0] == f"{group}:" and all(o in line for o in options)
                       for line in result.stdout.splitlines() if line.strip()), group
        assert "softmax*" in result.stdout and "fashion_mnist*" in result.stdout
    if case == "show":  # the data from paths.data_dir, the picture in <paths.output_dir>/show/<date>_<time>/
        assert len(list((tmp_path / "show").glob("*/train.png"))) == 1
    if case == "trainer key typo":  # read from Lightning's source, not by importing it
        assert "trainer.max_epoch is not a field of trainer" in result.stdout
        assert "did you mean trainer.max_epochs?" in result.stdout


def conf_targets() -> set[str]:
    """Every `_target_` a config group option of conf/ names, with `model.impl` in both of its values."""
    found = set()
    for path in (ROOT / "conf").rglob("*.yaml"):
        for target in re.findall(r"_target_: *([\w.${}]+)", path.read_text()):
            found.update(target.replace("${model.impl}", impl) for impl in ("torch", "scratch"))
    return {t for t in found if re.fullmatch(r"[A-Za-z_][\w.]*\.\w+", t)}


def test_static_signatures_equal_the_imported_ones():
    """The config check reads signatures from source: the same parameters, annotations and **kwargs as imported."""
    from task1.core.config import Spec, imported_signature, static_signature

    targets = {"lightning.pytorch.Trainer", "lightning.Trainer", "lightning.pytorch.loggers.CSVLogger",
               "lightning.pytorch.loggers.TensorBoardLogger", *conf_targets()}
    assert {"torch.optim.SGD", "task1.models.scratch.MLP", "task1.data.FashionMNIST",
            "lightning.pytorch.callbacks.EarlyStopping"} <= targets
    same, imported_only = 0, []
    for target in sorted(targets):
        imported, takes_any = imported_signature(target)
        try:
            static = static_signature(target)
        except LookupError:  # no __init__ of its own (a dataclass, an inherited one): the check imports it
            imported_only.append(target)
            continue
        assert static[1] == takes_any and list(static[0]) == list(imported), target
        for name, annotation in static[0].items():  # the source says what the import says, or nothing (an alias)
            assert Spec.of(annotation) in (None, Spec.of(imported[name])), (target, name)
            same += Spec.of(annotation) is not None
    assert same >= 60, same  # most of them are read: int, bool, float, Literal, X | None and task1's ranges
    assert len(imported_only) <= 3 and not {"torch.optim.SGD", "task1.data.FashionMNIST"} & set(imported_only)


def test_lightning_still_has_what_the_short_cuts_rely_on():
    from task1.core import shortcuts

    assert shortcuts.check() == []


@pytest.mark.slow
def test_one_command_lists_its_subcommands_and_each_explains_itself(tmp_path):
    from task1.__main__ import COMMANDS

    task1 = shutil.which("task1", path=str(Path(sys.executable).parent))
    assert task1, "the task1 command is not installed: pip install -e ."
    listed = subprocess.run([task1, "--help"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0
    for name, (_, what) in COMMANDS.items():  # one line each
        assert f"  {name:<13}{what}" in listed.stdout.splitlines()
    for name in COMMANDS:
        helped = subprocess.run([task1, name, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        out = helped.stdout + helped.stderr
        assert helped.returncode == 0 and "Traceback" not in out and len(out.strip()) > 40, (name, out[-2000:])
    wrong = subprocess.run([task1, "trian"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "there is no command 'trian'; did you mean train?" in wrong.stderr
    result = subprocess.run([task1, "train", "data.batch_size=0", f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "data.batch_size=0 is not allowed" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_declared_versions_admit_what_the_code_needs():
    import inspect
    import re

    import lightning as L
    from packaging.requirements import Requirement

    lines = re.findall(r'^\s+"([a-z-]+[<>=!~][^"]*)",', (ROOT / "pyproject.toml").read_text(), re.M)
    deps = {Requirement(d).name: Requirement(d) for d in lines}
    # Trainer.fit(weights_only=...) came in Lightning 2.6: an older one must not be admitted
    assert "weights_only" in inspect.signature(L.Trainer.fit).parameters
    assert not deps["lightning"].specifier.contains("2.5.9") and deps["lightning"].specifier.contains("2.6.0")
    assert deps["lightning"].specifier.contains(L.__version__)



def test_help_read_only_in_part_ends_quietly():
    # `task1 train --help | head -3`, at its harshest: the reader has gone before the first line is written
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([sys.executable, "-m", "task1.train", "--help"], cwd=ROOT, stdout=write,
                                stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-3000:]


def test_the_core_imports_none_of_its_callers():
    # the layers run one way: the command line, the sweeps, the tools and the API use the core, never the reverse
    import ast

    callers = ("task1.sweeps", "task1.tools", "task1.cli", "task1.train", "task1.api", "task1.__main__")
    for part in ("core", "data", "models", "optim"):
        for path in (ROOT / "task1" / part).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if isinstance(node, ast.ImportFrom) and node.module == "task1":
                    names = [f"task1.{a.name}" for a in node.names]
                bad = [n for n in names if n.startswith(callers)]
                assert not bad, f"{path.relative_to(ROOT)}:{node.lineno} imports {bad}"
