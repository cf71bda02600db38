"""What a run logs as its hyperparameters (TensorBoard's HParams, MLflow's parameters) and how MLflow names it."""

import pytest
from omegaconf import OmegaConf
from test_extend import mlflow_server, rest

from task1 import api
from task1.core.hparams import hparams_record


def record(*overrides: str) -> dict:
    cfg = api.compose(*overrides)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    config = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    return hparams_record(config, {}, choices)[0]


def test_list_choices_are_parameters_and_where_a_run_starts_is_not():
    params = record("logger=[tensorboard,mlflow]", "callbacks=[early_stopping]", "model=mlp")
    assert params["logger"] == "[tensorboard,mlflow]" and params["callbacks"] == "[early_stopping]"
    assert params["model"] == "mlp" and params["optimizer/lr"] == 0.1
    assert not {"hydra", "ckpt_path", "resume"} & set(params)  # Hydra's set-up, where a run starts from
    single = record("logger=csv")
    assert single["logger"] == "csv" and single["callbacks"] == "none"


@pytest.mark.slow
def test_mlflow_names_each_run_by_its_folder_and_logs_its_loggers(fake_root, tmp_path):
    out = tmp_path / "outputs"
    common = [f"paths.data_dir={fake_root}", "data.batch_size=64", "trainer=cpu", "trainer.max_epochs=1",
              "figures.enabled=false", "logger=[csv,mlflow]", f"paths.output_dir={out}", "seed=42"]
    runs = [api.train(*common), api.train(*common)]  # the same seed: MLflow's own names would be one name
    with mlflow_server(f"sqlite:///{out / 'mlflow' / 'mlflow.db'}") as url:
        experiment = rest(url, "experiments/get-by-name", experiment_name="task1")["experiment"]
        found = rest(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        names = {r["info"]["run_name"] for r in found}
        assert names == {str(r.folder) for r in runs}
        for run in found:
            params = {p["key"]: p["value"] for p in run["data"]["params"]}
            assert params["logger"] == "[csv,mlflow]" and "hydra" not in params and "ckpt_path" not in params
