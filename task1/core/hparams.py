"""Each run's hyperparameters beside its final metrics, for every logger: TensorBoard's HParams tab, MLflow's
parameters, CSV's hparams.yaml; and the run's figures where the logger keeps files (MLflow's artifacts)."""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
from omegaconf import OmegaConf
from torch.utils.tensorboard.summary import hparams

from task1 import drawer

# not choices: where files go, model.net/model.loss, which only repeat model.* by interpolation, where an
# Optuna search keeps the trial (its job folder is named by the trial's number), and where a run starts from
_NOT_HPARAMS = ("output_dir", "optimized_metric", "logger/", "model/net/", "model/loss/", "data/root", "data/download",
                "paths/", "optuna/", "ckpt_path", "resume")
# groups whose option may be a list (logger=[tensorboard,mlflow]): Hydra records no choice for a list, the config
# has one entry per option chosen
_LIST_GROUPS = ("logger", "callbacks")


def hparams_record(config: dict, final: dict, choices: dict | None = None) -> tuple[dict, dict]:
    """A run as hyperparameters and final metrics: the config groups chosen (model=mlp, logger=[csv,mlflow]) and
    the config's scalars as hyperparameters, the final metrics as hparams/*."""
    flat = {k: str(v) for k, v in (choices or {}).items()
            if not k.startswith("hydra") and k != "paths" and v is not None}  # hydra: Hydra's own set-up
    for group in _LIST_GROUPS:
        if choices is not None and group not in flat and isinstance(config.get(group), dict) and config[group]:
            flat[group] = f"[{','.join(config[group])}]"

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + "/")
            elif k not in ("_target_", "_partial_") and not key.startswith(_NOT_HPARAMS):
                flat[key] = v if isinstance(v, (int, float, str, bool)) else str(v)

    walk(config, "")
    return flat, {f"hparams/{k}": v for k, v in final.items()}


def log_hparams(logger: TensorBoardLogger, params: dict, metrics: dict, step: int) -> None:
    """Record this run in the HParams tab of a Lightning TensorBoardLogger: hyperparameters and final metrics.

    Only the session is written, no experiment summary: TensorBoard then builds the table from every run's
    session, so jobs with different keys (optimizer=sgd,adam) all show theirs (given one summary per run, it
    takes the first run's columns for all).
    """
    logger.log_metrics(metrics, step)
    _, start, end = hparams(params, metrics)
    writer = logger.experiment._get_file_writer()
    writer.add_summary(start, step)
    writer.add_summary(end, step)
    writer.flush()


def log_final(loggers: list[Logger], config: dict, final: dict, step: int, figures: Path) -> None:
    """Give every logger the run's hyperparameters and final metrics (the per-epoch metrics they had from
    Lightning), and MLflow the PNGs in `figures` as artifacts (TensorBoard has them as images already)."""
    choices = OmegaConf.to_container(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else None
    params, metrics = hparams_record(config, final, choices)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            log_hparams(logger, params, metrics, step)
            continue
        logger.log_hyperparams(params)
        logger.log_metrics(metrics, step)
        if isinstance(logger, MLFlowLogger):  # the PNGs as artifacts: every one drawn first
            drawer.settle()
            if figures.is_dir():
                logger.experiment.log_artifacts(logger.run_id, str(figures), "figures")
        logger.save()
