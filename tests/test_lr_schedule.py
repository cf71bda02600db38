"""task1.lr_schedule against hand-computed learning rates, and against the rates a real Trainer.fit uses."""

import math

import lightning as L
import pytest
from conftest import CONF, run_cli
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from task1 import Task1Error
from task1.lr_schedule import lr_per_step, lr_schedule
from task1.train import build_system

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
    result = run_cli("-m", "task1.lr_schedule", "scheduler=step", "scheduler.step_size=100", "scheduler.interval=step",
                     "data.batch_size=256", "trainer.max_epochs=5", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "5 epochs x 235 optimizer steps (60000 examples / batch 256)" in result.stdout
    assert "steps    100-199     epoch 1         lr 0.05" in result.stdout
    assert "steps    200-299     epochs 1-2      lr 0.025" in result.stdout
    assert (tmp_path / "lr_schedule.png").is_file()


def test_bad_input_is_named(tmp_path):
    with pytest.raises(Task1Error, match="max_epochs"):
        lr_schedule(schedule_cfg(tmp_path, "trainer.max_epochs=-1"))
    with pytest.raises(Task1Error, match="training examples"):
        lr_schedule(schedule_cfg(tmp_path, "data.val_size=60000"))


class LrRecorder(L.Callback):
    """The learning rate of every optimizer step, as the optimizer sees it."""

    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("overrides", [
    ["scheduler=step", "scheduler.interval=step", "scheduler.step_size=2", "scheduler.frequency=3"],
    ["scheduler=cosine", "scheduler.interval=step", "+trainer.accumulate_grad_batches=3"],
    ["scheduler=multistep", "scheduler.milestones=[1,2]", "scheduler.gamma=0.5"],
    ["scheduler=onecycle"],
], ids=["step-per-step-every-3rd", "cosine-per-step-accumulating", "multistep-per-epoch", "onecycle"])
def test_schedule_equals_the_rates_of_a_real_fit(make_cfg, overrides):
    cfg = make_cfg("model=softmax", *overrides)  # 600 generated examples / batch 64 = 10 batches an epoch
    recorder = LrRecorder()
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder],
                        accumulate_grad_batches=cfg.trainer.get("accumulate_grad_batches", 1))
    trainer.fit(build_system(cfg), datamodule=instantiate(cfg.data))
    predicted = lr_per_step(build_system(cfg), 10, 3, cfg.trainer.get("accumulate_grad_batches", 1))
    assert len(recorder.lrs) == len(predicted) and recorder.lrs == pytest.approx(predicted, rel=1e-12)
    assert len(set(predicted)) > 1  # the schedule does change the rate within these 3 epochs


def test_train_examples_can_be_given_for_other_data(tmp_path):
    lrs = lr_schedule(schedule_cfg(tmp_path, "lr_schedule.train_examples=1001", "data.batch_size=100",
                                   "trainer.max_epochs=2", "scheduler=step", "scheduler.interval=step",
                                   "scheduler.step_size=11"))
    assert len(lrs) == 22 and lrs[10] == pytest.approx(0.1) and lrs[11] == pytest.approx(0.05)  # 11 batches an epoch
