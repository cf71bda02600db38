"""Every option of every config group composes, and everything it names instantiates."""

import numpy as np
import pytest
import torch
from conftest import CONF, compose_cfg
from hydra.utils import instantiate
from lightning.pytorch import LightningDataModule, Trainer

from task1.core.build import build_all, build_system
from task1.core.config import validate
from task1.data.module import DataModule

GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in
          ("data", "model", "optimizer", "scheduler", "trainer", "logger", "callbacks", "loop", "experiment")}


def test_the_groups_offer_what_the_readme_promises():
    assert GROUPS["model"] == ["linear", "mlp", "softmax"]
    assert GROUPS["optimizer"] == ["adam", "adamw", "sgd", "sgd_scratch"]
    assert GROUPS["scheduler"] == ["cosine", "multistep", "none", "onecycle", "step"]
    assert {"auto", "cpu", "gpu"} <= set(GROUPS["trainer"])
    assert {"tensorboard", "csv", "mlflow", "none"} <= set(GROUPS["logger"])
    assert {"early_stopping", "progress_bar", "none"} <= set(GROUPS["callbacks"])


def test_default_is_concise_softmax_sgd_lr_0_1_batch_256_10_epochs():
    cfg = compose_cfg()
    assert cfg.model.net._target_ == "task1.models.torch.SoftmaxRegression"
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.1
    assert cfg.data.batch_size == 256 and cfg.trainer.max_epochs == 10
    assert list(cfg.logger) == ["tensorboard"] and cfg.logger.tensorboard._target_.endswith("TensorBoardLogger")
    assert not cfg.callbacks


@pytest.mark.parametrize("model", GROUPS["model"])
@pytest.mark.parametrize("impl", ["torch", "scratch"])
def test_every_model_and_impl_instantiates(model, impl):
    cfg = compose_cfg(f"model={model}", f"model.impl={impl}", "output_dir=/tmp/unused")
    system = build_system(cfg)
    assert type(system.net).__module__ == {"torch": "task1.models.nets", "scratch": "task1.models.scratch"}[impl]
    expected_data = "SyntheticRegression" if model == "linear" else "FashionMNIST"
    assert cfg.data._target_.endswith(expected_data)
    assert isinstance(DataModule(instantiate(cfg.data)), LightningDataModule)


@pytest.mark.parametrize("optimizer", GROUPS["optimizer"])
@pytest.mark.parametrize("scheduler", GROUPS["scheduler"])
def test_every_optimizer_and_scheduler_instantiates(optimizer, scheduler):
    cfg = compose_cfg(f"optimizer={optimizer}", f"scheduler={scheduler}", "output_dir=/tmp/unused")
    system = build_system(cfg)
    opt = system.optimizer_fn(system.parameters())
    assert isinstance(opt, torch.optim.Optimizer)
    assert (system.scheduler_fn is None) == (scheduler == "none")


@pytest.mark.parametrize("trainer", GROUPS["trainer"])
def test_every_trainer_composes(trainer):
    cfg = compose_cfg(f"trainer={trainer}", "output_dir=/tmp/unused")
    if trainer == "gpu" and not torch.cuda.is_available():
        assert cfg.trainer.accelerator == "gpu"  # instantiating needs a GPU; the config itself must compose
        return
    assert isinstance(instantiate(cfg.trainer, logger=False, enable_checkpointing=False), Trainer)


@pytest.mark.parametrize("logger", [*(pytest.param(g, marks=pytest.mark.slow) if g == "mlflow" else g
                                       for g in GROUPS["logger"]), "[tensorboard,csv]"])
def test_every_logger_instantiates(logger, tmp_path):
    cfg = compose_cfg(f"logger={logger}", f"output_dir={tmp_path}", f"paths.output_dir={tmp_path}")
    built = build_all("logger", cfg.logger)
    assert [type(lg).__name__.removesuffix("Logger").lower() for lg in built] == {
        "none": [], "mlflow": ["mlflow"], "[tensorboard,csv]": ["tensorboard", "csv"]}.get(logger, [logger])
    for lg in built:  # everything under the run folder, or (MLflow's store) under paths.output_dir
        where = lg._tracking_uri if logger == "mlflow" else lg.log_dir
        assert str(tmp_path) in where, where


@pytest.mark.parametrize("callbacks", [*GROUPS["callbacks"], "[early_stopping,progress_bar]"])
def test_every_callbacks_option_instantiates(callbacks):
    cfg = compose_cfg(f"callbacks={callbacks}", "output_dir=/tmp/unused")
    names = [type(c).__name__ for c in build_all("callbacks", cfg.callbacks)]
    assert names == {"none": [], "early_stopping": ["EarlyStopping"], "progress_bar": ["TQDMProgressBar"]}.get(
        callbacks, ["EarlyStopping", "TQDMProgressBar"])
    assert cfg.trainer.enable_progress_bar == ("progress_bar" in callbacks)  # tqdm needs the Trainer's bar on


@pytest.mark.parametrize(("config_name", "overrides"), [
    *(("config", [f"{group}={option}"]) for group, options in GROUPS.items() for option in options),
    ("config", ["model=mlp", "model.impl=scratch"]),
    ("config", ["hparams_search=optuna"]),
    ("show", []),
    ("lr_schedule", []),
])
def test_every_config_passes_the_checks(config_name, overrides, tmp_path):
    # every key of every shipped config is read by something: the check for keys nothing reads refuses none
    if "data=arrays" in overrides:  # the user's own file: one is needed
        arrays = {k: np.zeros((4, 3) if k.startswith("X") else 4, dtype=np.float32 if k.startswith("X") else int)
                  for k in ("X_train", "y_train", "X_test", "y_test")}
        np.savez(tmp_path / "arrays.npz", **arrays)
        overrides = [*overrides, f"data.path={tmp_path / 'arrays.npz'}"]
    validate(compose_cfg(*overrides, "output_dir=/tmp/unused", config_name=config_name))
