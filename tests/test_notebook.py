"""notebooks/chapter3.ipynb, chapter 3 as a tour of task1: run in a real Jupyter kernel on the real data."""

import json
import re
import time

import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient

NOTEBOOK = ROOT / "notebooks" / "chapter3.ipynb"


def test_the_notebook_keeps_no_outputs_in_git():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert "widgets" not in nb.metadata


@pytest.mark.slow
def test_the_notebook_runs_chapter_3_in_a_real_kernel_on_the_real_data(real_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TASK1_DATA_DIR", str(real_root))  # the kernel inherits the environment
    monkeypatch.setenv("TASK1_OUTPUT_DIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=300, startup_timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()  # a cell's error fails here
    seconds = time.perf_counter() - start
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images >= 8, images  # the fit of w and b, the data, curves, confusion, predictions, schedule, seeds
    learned = re.search(r"learned w \[(\S+), (\S+)\]  b (\S+)", text)
    assert learned and [float(v) for v in learned.groups()] == pytest.approx([2.0, -3.4, 4.2], abs=0.01)
    ours, runs = re.search(r"test accuracy of mlp.model: (\S+) \(the run's own: (\S+)\)", text).groups()
    assert ours == runs  # the returned LightningModule is the model the run tested
    metrics = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*/metrics.json"))]
    assert [m["status"] for m in metrics] == ["completed"] * 3  # linear, softmax, MLP
    assert all(m["final"]["test/acc"] > 0.75 for m in metrics[1:]), [m["final"] for m in metrics]
    (sweep,) = (tmp_path / "multiruns").iterdir()
    assert "3 jobs: 3 completed" in (sweep / "summary.md").read_text() and (sweep / "curves.png").is_file()
    assert NOTEBOOK.read_text().count('"outputs": []') == len([c for c in nb.cells if c.cell_type == "code"])
    print(f"notebook: {seconds:.0f} s")
