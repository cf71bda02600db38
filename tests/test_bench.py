"""scripts/bench.py in its tiny mode (so it cannot rot), and per-epoch metrics that stay exact over uneven batches."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT

from task1.core.build import build
from task1.models.system import EpochSums


@pytest.mark.slow
def test_tiny_benchmark_runs_all_pipelines_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"  # <paths.output_dir>/bench.json
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--tiny",
                             f"paths.output_dir={tmp_path}"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    bench = json.loads(out.read_text())
    assert bench["threads"] == 1 and bench["data"].startswith("generated")
    for model in ("softmax", "mlp"):
        row = bench["models"][model]
        for key in ("A", "B", "L", "C"):  # an epoch is its training pass and more
            assert 0 < row[key]["train_s"] <= row[key]["epoch_s"]
        for a, b in (("C", "B"), ("L", "B"), ("A", "C")):
            assert row[f"{a}/{b}"]["epoch_s"] == pytest.approx(row[a]["epoch_s"] / row[b]["epoch_s"])
    startup = bench["startup"]
    names = {"import torch", "import lightning", "train --help", "train config error", "lr_schedule",
             "train to first step"}
    assert set(startup["seconds"]) == set(startup["ratio_to_import_torch"]) == names
    for name, seconds in startup["seconds"].items():
        assert seconds > 0
        assert startup["ratio_to_import_torch"][name] == pytest.approx(seconds / startup["seconds"]["import torch"])
    assert all(name in result.stdout for name in ("C/B", "L/B", "L bare fit", "start-up", "train --help"))
    # the fixed cost of a job, from two sweeps of 8 jobs: periods between job starts, the first job's left out
    cost = bench["job_cost"]["checkouts"]["this"]
    assert [len(v) for v in cost["periods"].values()] == [6, 6] and all(p > 0 for p in cost["periods"]["1"])
    assert cost["epoch_s"] == pytest.approx((cost["period_3_epochs_s"] - cost["period_1_epoch_s"]) / 2)
    assert cost["fixed_s"] == pytest.approx(cost["period_1_epoch_s"] - cost["epoch_s"])
    assert "fixed cost of a job" in result.stdout


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_epoch_metrics_are_exact_means_over_uneven_batches(make_cfg, reduction):
    # lr 1e-30 leaves float32 weights unchanged (lr 0 is refused), so the epoch's train loss is the initial
    # model's mean loss over the split;
    # 600 train / 200 test examples in batches of 64 end with short batches that must weigh less
    cfg = make_cfg("model=mlp", "model.num_hiddens=16", "optimizer.lr=1e-30", f"model.loss_reduction={reduction}",
                   "data.eval_batch_size=64", "model.init_std=0.5")
    datamodule, system, trainer = build(cfg)[:3]
    trainer.fit(system, datamodule=datamodule)
    record = system.history[0]
    with torch.no_grad():
        for split in ("train", "val"):
            X, y = datamodule.splits[split]
            y_hat = system.net(X)
            assert record[f"{split}/loss"] == pytest.approx(float(F.cross_entropy(y_hat, y)), rel=1e-5)
            assert record[f"{split}/acc"] == float((y_hat.argmax(dim=1) == y).sum()) / len(y)


def test_epoch_sums_count_in_groups_and_resume_exactly():
    # counted in groups of 4 steps, read after 3 (as a mid-epoch checkpoint does) and restored: the same sums,
    # bit for bit, as one uninterrupted epoch; and those are the sums over all examples at once
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(n, 10, generator=g), torch.randint(0, 10, (n,), generator=g))
               for n in (64, 64, 64, 64, 64, 64, 17)]

    def feed(sums: EpochSums, part) -> EpochSums:
        for logits, y in part:
            sums.add(F.cross_entropy(logits, y), len(y), len(y), logits, y)
        return sums

    whole = feed(EpochSums(count_every=4), batches)
    resumed = feed(EpochSums(feed(EpochSums(count_every=4), batches[:3]).total(), count_every=4), batches[3:])
    assert torch.equal(whole.total(), resumed.total())
    logits, y = (torch.cat(parts) for parts in zip(*batches, strict=True))
    loss_sum, correct, n = whole.total().tolist()
    assert (n, correct) == (len(y), int((logits.argmax(dim=1) == y).sum()))
    assert loss_sum == pytest.approx(float(F.cross_entropy(logits, y, reduction="sum")), rel=1e-6)
    # regression: no logits, losses summed as given (reduction="sum": weight 1)
    squared = EpochSums()
    squared.add(torch.tensor(6.0), 1, 3, None, y[:3])
    assert squared.total().tolist() == [6.0, 0.0, 3.0]
    # restored sums (a checkpoint is read onto the CPU) follow the batches to their device
    moved = EpochSums(whole.total())
    moved.add(torch.tensor(1.0, device="meta"), 1, 1, None, y[:1].to("meta"))
    assert moved.total().device.type == "meta"


@pytest.mark.slow
def test_tiny_pack_benchmark_runs_both_launchers_abba_and_writes_json(tmp_path):
    out = tmp_path / "bench_pack.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_pack.py"), f"paths.output_dir={tmp_path}",
                             "--tiny", "--models", "softmax"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    bench = json.loads(out.read_text())
    assert bench["data"].startswith("generated") and list(bench["models"]) == ["softmax"]
    row = bench["models"]["softmax"]
    assert (row["jobs"], row["epochs"], row["rounds"]) == (3, 2, 1)
    basic, packed = row["wall_s"]["basic"], row["wall_s"]["packed"]  # basic, packed, packed, basic
    assert len(basic) == len(packed) == 2 and all(s > 0 for s in basic + packed)
    assert row["packed/basic"]["all"] == pytest.approx([packed[0] / basic[0], packed[1] / basic[1]])
    assert row["packed/basic"]["median"] == pytest.approx((packed[0] / basic[0] + packed[1] / basic[1]) / 2)
    cpu = row["cpu_s"]  # the commands' CPU time, their child processes' (the figures' drawer) too
    assert all(s > 0 for s in cpu["basic"] + cpu["packed"])
    cpu_ratios = [p / b for p, b in zip(cpu["packed"], cpu["basic"], strict=True)]
    assert row["packed/basic cpu"]["all"] == pytest.approx(cpu_ratios)
    assert row["B_epochs"] == 4 and row["B_epoch_s"] > 0  # one hand-loop epoch before each command
    assert row["packed_cpu/B_cpu"]["all"] == pytest.approx([s / 6 / row["B_epoch_cpu_s"] for s in cpu["packed"]])
    assert len(row["member/B"]["all"]) == 6  # 3 members in each of the 2 packed sweeps
    assert row["member_epoch_s"] == pytest.approx(row["member/B"]["median"] * row["B_epoch_s"])
    assert "packed/basic" in result.stdout and "softmax" in result.stdout
