"""Scheduler semantics in a real Trainer: what step_size counts under interval epoch and interval step."""

import lightning as L
import pytest
from hydra.utils import instantiate

from task1.core.build import build_system
from task1.data.module import DataModule

STEPS_PER_EPOCH = 600 // 64 + 1  # generated training set, batch 64: 10 steps, the last one short


class LrRecorder(L.Callback):
    """The learning rate each optimizer step used, in order."""

    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def lrs_of(make_cfg, *overrides, epochs=3):
    cfg = make_cfg(f"trainer.max_epochs={epochs}", "optimizer.lr=1.0", *overrides)
    recorder = LrRecorder()
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[recorder])
    system = build_system(cfg)
    trainer.fit(system, datamodule=DataModule(instantiate(cfg.data)))
    assert len(recorder.lrs) == epochs * STEPS_PER_EPOCH
    return recorder.lrs, system


def test_step_size_counts_optimizer_steps_with_interval_step(make_cfg):
    lrs, _ = lrs_of(make_cfg, "scheduler=step", "scheduler.step_size=4", "scheduler.gamma=0.5",
                    "scheduler.interval=step")
    assert lrs == [0.5 ** (i // 4) for i in range(len(lrs))]


def test_step_size_counts_epochs_with_interval_epoch(make_cfg):
    lrs, system = lrs_of(make_cfg, "scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5",
                         "scheduler.interval=epoch")
    assert lrs == [0.5 ** ((i // STEPS_PER_EPOCH) // 2) for i in range(len(lrs))]
    assert [r["train/lr"] for r in system.history] == [1.0, 1.0, 0.5]  # the lr each epoch trained with


def test_frequency_spaces_scheduler_steps(make_cfg):
    lrs, _ = lrs_of(make_cfg, "scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5",
                    "scheduler.interval=step", "scheduler.frequency=3")
    # Lightning's rule: scheduler.step() after batches 3, 6, 9 of every epoch (the count restarts each epoch);
    # step_size=2 of those scheduler steps per halving
    n = STEPS_PER_EPOCH
    assert lrs == [0.5 ** (((i // n) * (n // 3) + (i % n) // 3) // 2) for i in range(len(lrs))]


def test_multistep_milestones_in_epochs(make_cfg):
    lrs, _ = lrs_of(make_cfg, "scheduler=multistep", "scheduler.milestones=[1,2]", "scheduler.gamma=0.1", epochs=3)
    per_epoch = [lrs[e * STEPS_PER_EPOCH] for e in range(3)]
    assert per_epoch == pytest.approx([1.0, 0.1, 0.01])


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_cosine_with_null_t_max_anneals_over_the_whole_run(make_cfg, interval):
    import math

    lrs, _ = lrs_of(make_cfg, "scheduler=cosine", f"scheduler.interval={interval}")
    total = 3 if interval == "epoch" else 3 * STEPS_PER_EPOCH
    expected = [(1 + math.cos(math.pi * k / total)) / 2 for k in range(total)]
    seen = [lrs[e * STEPS_PER_EPOCH] for e in range(3)] if interval == "epoch" else lrs
    assert seen == pytest.approx(expected)


def test_onecycle_fills_total_steps_and_completes(make_cfg):
    lrs, _ = lrs_of(make_cfg, "scheduler=onecycle")
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert lrs[peak] == pytest.approx(1.0, rel=1e-3) and peak == pytest.approx(0.3 * len(lrs), abs=2)
    assert lrs[0] < 0.05 and lrs[-1] < 1e-3
