"""The HParams tab of TensorBoard: each run's hyperparameters beside its final metrics."""

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from torch.utils.tensorboard.summary import hparams

# not choices: where files go, model.net/model.loss, which only repeat model.* by interpolation, and where an
# Optuna search keeps the trial (its job folder is named by the trial's number)
_NOT_HPARAMS = ("output_dir", "optimized_metric", "logger/", "model/net/", "model/loss/", "data/root", "data/download",
                "paths/", "optuna/")


def hparams_record(config: dict, final: dict, choices: dict | None = None) -> tuple[dict, dict]:
    """The HParams tab's view of a run: the config groups chosen (model=mlp) and the config's scalars as
    hyperparameters, the final metrics as hparams/*."""
    flat = {k: str(v) for k, v in (choices or {}).items()
            if not k.startswith("hydra/") and k != "paths" and v is not None}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + "/")
            elif k not in ("_target_", "_partial_") and not key.startswith(_NOT_HPARAMS):
                flat[key] = v if isinstance(v, (int, float, str, bool)) else str(v)

    walk(config, "")
    return flat, {f"hparams/{k}": v for k, v in final.items()}


def log_hparams(logger, config: dict, final: dict, step: int) -> None:
    """Record this run in the HParams tab of a Lightning TensorBoardLogger: hyperparameters and final metrics.

    Only the session is written, no experiment summary: TensorBoard then builds the table from every run's
    session, so jobs with different keys (optimizer=sgd,adam) all show theirs (given one summary per run, it
    takes the first run's columns for all).
    """
    choices = OmegaConf.to_container(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else None
    params, metrics = hparams_record(config, final, choices)
    logger.log_metrics(metrics, step)
    _, start, end = hparams(params, metrics)
    writer = logger.experiment._get_file_writer()
    writer.add_summary(start, step)
    writer.add_summary(end, step)
    writer.flush()
