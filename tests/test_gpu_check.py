"""scripts/gpu_check.sh, run whole on the CPU (GPU_CHECK_DEVICE=cpu) on generated data, so that it works the first
time it meets a GPU: every row of its table, a step that runs out of time, and a Python that lacks a library."""

import json
import os
import re
import subprocess

import pytest
from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"
PARTS = ["train trainer=cpu 32-true", "train trainer=cpu bf16-mixed", "eval (trainer=cpu)",
         "softmax: packed, 4 members (vmap)", "softmax: 3 of them one after another",
         "mlp: packed, 4 members (vmap)", "mlp: 3 of them one after another", "scripts/bench.py --device cpu"]


def gpu_check(tmp_path, timeout: int, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "no_data").mkdir(exist_ok=True)  # no Fashion-MNIST there: generated data
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "TASK1_DATA_DIR": str(tmp_path / "no_data"),
           "GPU_CHECK_OUT": str(tmp_path / "out"), **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The table's rows by part: status, wall s, peak MB, result."""
    rows = {}
    for line in stdout.splitlines():
        for part in PARTS:
            if line.startswith(part + " "):
                rows[part] = line[len(part):].split(maxsplit=3)
    return rows


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_the_cpu_and_prints_one_table(tmp_path):
    # a generous budget: on a loaded machine the CPU steps take longer than the GPU's 5 minutes
    result = gpu_check(tmp_path, 1800, GPU_CHECK_BUDGET_S="1500")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "generated data (1024 train, 512 test)" in result.stdout.splitlines()[0]
    rows = table_rows(result.stdout)
    assert list(rows) == PARTS, result.stdout
    for part, (status, wall, peak, text) in rows.items():
        assert status == "ok" and float(wall) > 0 and float(peak) > 0, (part, text)
        assert re.search(r"\d\.\d", text), (part, text)
    for model in ("softmax", "mlp"):  # trials per second of both, and the pack's against one after another
        packed = rows[f"{model}: packed, 4 members (vmap)"][3]
        assert re.search(r"trials/s; test/acc .*; \d+\.\dx one after another", packed), packed
        assert "trials/s between job starts" in rows[f"{model}: 3 of them one after another"][3]
    saved = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [r["part"] for r in saved["rows"]] == PARTS and all(r["ok"] for r in saved["rows"])
    assert (tmp_path / "out" / "table.txt").read_text().strip() == result.stdout.strip()
    packed = saved["rows"][3]
    assert packed["speedup"] == pytest.approx(packed["trials_per_s"] / saved["rows"][4]["trials_per_s"])
    assert packed["trials_per_s"] == pytest.approx(4 / packed["wall_s"])
    # each member is a job of its own, in the sweep's folder
    assert len(list((tmp_path / "out" / "sweeps" / "softmax_packed").glob("*/metrics.json"))) == 4


@pytest.mark.slow
def test_a_step_out_of_time_says_so_in_its_row_and_the_rest_still_print(tmp_path):
    result = gpu_check(tmp_path, 600, GPU_CHECK_BUDGET_S="6")  # no run imports Lightning and trains in 6 s
    assert result.returncode == 1
    rows = table_rows(result.stdout)
    assert list(rows) == PARTS, result.stdout
    assert all(status == "FAILED" and wall == peak == "-" for status, wall, peak, _ in rows.values())
    assert rows[PARTS[0]][3].startswith("timed out after")
    # eval needs the 32-true run's checkpoint; on a loaded machine the budget may be spent before it looks
    assert (rows[PARTS[2]][3].startswith("no ") and "32-true run did not end" in rows[PARTS[2]][3]) or \
        rows[PARTS[2]][3] == "not run: the 6 s budget is spent", rows[PARTS[2]]
    assert rows[PARTS[-1]][3] == "not run: the 6 s budget is spent"


def test_a_python_that_cannot_import_a_library_is_told_in_one_line(tmp_path):
    broken = tmp_path / "site" / "lightning"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('this lightning is broken')\n")
    result = gpu_check(tmp_path, 300, PYTHONPATH=str(tmp_path / "site"))
    assert result.returncode == 1
    assert result.stdout.strip().splitlines() == [result.stdout.strip()]
    assert "cannot import lightning (this lightning is broken)" in result.stdout
    assert not (tmp_path / "out").exists()
