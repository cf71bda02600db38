"""task1.lr_schedule against hand-computed learning rates, and against the rates a real Trainer.fit uses."""

import math

import lightning as L
import pytest
from conftest import CONF, run_cli
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from task1 import Task1Error
from task1.core.build import build_system
from task1.data.module import DataModule
from task1.tools.lr_schedule import lr_schedule

STEPS = 235  # ceil(60000 / 256): Fashion-MNIST's optimizer steps per epoch at batch 256


def schedule_cfg(tmp_path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="lr_schedule", overrides=[f"output_dir={tmp_path}", *overrides])


# (overrides, epochs, lr of optimizer step k), by hand from each scheduler's definition; base lr 0.1
CASES = {
    "step per step": (["scheduler=step", "scheduler.step_size=100", "scheduler.interval=step"], 5,
                      lambda k: 0.1 * 0.5 ** (k // 100)),
    "step per epoch": (["scheduler=step", "scheduler.step_size=2"], 5,
                       lambda k: 0.1 * 0.5 ** (k // STEPS // 2)),
    "multistep per epoch": (["scheduler=multistep"], 10,  # milestones 5, 8
                            lambda k: 0.1 * 0.1 ** ((k // STEPS >= 5) + (k // STEPS >= 8))),
    "multistep per step": (["scheduler=multistep", "scheduler.milestones=[300,500]", "scheduler.interval=step"], 3,
                           lambda k: 0.1 * 0.1 ** ((k >= 300) + (k >= 500))),
    "cosine per epoch": (["scheduler=cosine"], 4,  # T_max null: 4 epochs
                         lambda k: 0.05 * (1 + math.cos(math.pi * (k // STEPS) / 4))),
    "cosine per step": (["scheduler=cosine", "scheduler.interval=step"], 3,  # T_max null: 705 steps
                        lambda k: 0.05 * (1 + math.cos(math.pi * k / (3 * STEPS)))),
    "step every 2nd epoch": (["scheduler=step", "scheduler.frequency=2"], 6,  # decays after epochs 2, 4
                             lambda k: 0.1 * 0.5 ** ((k // STEPS) // 2)),
}


@pytest.mark.parametrize("case", CASES)
def test_schedule_matches_hand_computed_rates(tmp_path, case):
    overrides, epochs, expected = CASES[case]
    lrs = lr_schedule(schedule_cfg(tmp_path, *overrides, "data.batch_size=256", f"trainer.max_epochs={epochs}"))
    assert len(lrs) == epochs * STEPS
    assert lrs == pytest.approx([expected(k) for k in range(len(lrs))], rel=1e-9, abs=1e-12)
    rows = (tmp_path / "lr_schedule.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,lr" and len(rows) == 1 + len(lrs) and rows[-1].startswith(f"{len(lrs) - 1},{epochs},")
    with Image.open(tmp_path / "lr_schedule.png") as image:
        assert image.size == (800, 320)


def test_per_step_frequency_counts_batches_of_the_epoch_as_lightning_does(tmp_path):
    # synthetic: 1000 examples / batch 10 = 100 steps an epoch; a step every 3rd batch: 33 an epoch, not 33.3
    cfg = schedule_cfg(tmp_path, "model=linear", "scheduler=step", "scheduler.interval=step",
                       "scheduler.frequency=3", "scheduler.step_size=10", "trainer.max_epochs=3")
    lrs = lr_schedule(cfg)
    base = cfg.optimizer.lr
    assert lrs == pytest.approx([base * 0.5 ** ((33 * (k // 100) + k % 100 // 3) // 10) for k in range(300)])


def test_command_line_prints_the_runs_of_the_schedule(tmp_path):
    result = run_cli("-m", "task1", "lr-schedule", "scheduler=step", "scheduler.step_size=100",
                     "scheduler.interval=step", "data.batch_size=256", "trainer.max_epochs=5",
                     f"paths.output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    (out,) = (tmp_path / "lr_schedule").iterdir()  # <paths.output_dir>/lr_schedule/<date>_<time>
    assert "5 epochs x 235 optimizer steps (60000 examples / batch 256)" in result.stdout
    assert "steps    100-199     epoch 1         lr 0.05" in result.stdout
    assert "steps    200-299     epochs 1-2      lr 0.025" in result.stdout
    assert (out / "lr_schedule.png").is_file()


def test_bad_input_is_named(tmp_path):
    with pytest.raises(Task1Error, match="max_epochs"):
        lr_schedule(schedule_cfg(tmp_path, "trainer.max_epochs=-1"))
    with pytest.raises(Task1Error, match="val_size"):
        lr_schedule(schedule_cfg(tmp_path, "data.val_size=60000"))


class LrRecorder(L.Callback):
    """The learning rate of every optimizer step, as the optimizer sees it."""

    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


# frequency x accumulate_grad_batches x max_steps x limit_train_batches, on 10 batches an epoch for 3 epochs
GRID = [(f, acc, steps, limit) for f in (1, 2) for acc in (1, 3) for steps in (-1, 13) for limit in (1.0, 7, 0.55)]


@pytest.mark.parametrize("scheduler, interval", [("onecycle", "step"),  # the quick tier's; the others are slow
                                                 *(pytest.param(s, i, marks=pytest.mark.slow) for s, i in
                                                   (("cosine", "epoch"), ("cosine", "step"), ("onecycle", "epoch")))])
def test_schedule_equals_the_rates_of_a_real_fit(make_cfg, tmp_path, scheduler, interval):
    """The run's length (T_max / total_steps left null) and every lr, predicted by task1.lr_schedule, against
    what a real Trainer.fit applies: a wrong length shows as cosine climbing back up, or OneCycleLR raising."""
    changed = 0
    for i, (frequency, accumulate, max_steps, limit) in enumerate(GRID):
        trainer_args = {"accumulate_grad_batches": accumulate, "max_steps": max_steps, "limit_train_batches": limit}
        overrides = [f"scheduler={scheduler}", f"scheduler.interval={interval}", f"scheduler.frequency={frequency}",
                     "trainer.max_epochs=3", *(f"+trainer.{k}={v}" for k, v in trainer_args.items())]
        cfg = make_cfg("model=softmax", *overrides)  # 600 generated examples / batch 64 = 10 batches an epoch
        recorder = LrRecorder()
        trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder],
                            limit_val_batches=0, **trainer_args)
        trainer.fit(build_system(cfg), datamodule=DataModule(instantiate(cfg.data)))
        predicted = lr_schedule(schedule_cfg(tmp_path / str(i), *overrides, "lr_schedule.train_examples=600",
                                             "data.batch_size=64"))
        case = f"frequency {frequency}, accumulate {accumulate}, max_steps {max_steps}, limit {limit}"
        assert recorder.lrs == pytest.approx(predicted, rel=1e-12), case
        changed += len(set(predicted)) > 1
    assert changed >= len(GRID) // 2  # the schedules do move the rate within these short runs


def test_train_examples_can_be_given_for_other_data(tmp_path):
    lrs = lr_schedule(schedule_cfg(tmp_path, "lr_schedule.train_examples=1001", "data.batch_size=100",
                                   "trainer.max_epochs=2", "scheduler=step", "scheduler.interval=step",
                                   "scheduler.step_size=11"))
    assert len(lrs) == 22 and lrs[10] == pytest.approx(0.1) and lrs[11] == pytest.approx(0.05)  # 11 batches an epoch
