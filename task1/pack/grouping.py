"""Which jobs of a sweep can share a pack: those whose configs differ only in packable values.

Packable: the seed, every value of the same optimizer class and of the same scheduler class (its interval and
frequency excepted), the initialisation (`model.init_std`, `model.bias_init`), and what a job writes where
(`output_dir`, loggers, figures). Everything else (the model, its width and implementation, the batch size, the
data, the number of epochs, the threads) is the pack's own: a job that differs there goes in another pack. A job
that packing does not cover yet (see `unpackable`) trains alone, as the basic launcher trains it.
"""

import json

from omegaconf import DictConfig, OmegaConf

from task1 import Task1Error
from task1.core.config import entries

STACKS = ("loop", "vmap")  # the ways a pack takes a step (task1.pack.trainer)
# the trainer's keys a pack follows (any other: the job trains alone), with the values it can take where it must
TRAINER = {"_target_": None, "accelerator": None, "max_epochs": None, "log_every_n_steps": None,
           "enable_progress_bar": None, "enable_model_summary": None, "num_sanity_val_steps": None,
           "devices": (1, "1", "auto"), "precision": ("32-true", "32", 32), "check_val_every_n_epoch": (1,)}
# keys whose values each member keeps as its own (removed from the pack's key)
OWN = ("seed", "output_dir", "logger", "figures", "checkpoint_every_n_steps", "optimized_metric")


def check_stack(stack: str) -> None:
    """`hydra.launcher.stack` refused in one line (a Task1Error) unless it is one of STACKS."""
    if stack not in STACKS:
        raise Task1Error(f"hydra.launcher.stack={stack} is not allowed: expected one of {', '.join(STACKS)}.")


def unpackable(cfg: DictConfig) -> str | None:
    """Why the job `cfg` cannot go in a pack (None: it can)."""
    for key, value in (cfg.get("trainer") or {}).items():
        if key not in TRAINER:
            return f"trainer.{key} is set"
        allowed = TRAINER[key]
        if allowed is not None and value not in allowed:
            return f"trainer.{key}={value}"
    if entries(cfg.get("callbacks")):
        return "callbacks are set"
    for key in ("resume", "ckpt_path"):
        if cfg.get(key):
            return f"{key} is set"
    loop = cfg.get("loop") or {}
    if loop.get("name", "automatic") != "automatic" or not loop.get("zero_grad", True):
        return "loop is not the automatic one"
    if not isinstance(cfg.trainer.get("max_epochs"), int) or cfg.trainer.max_epochs < 1:
        return "trainer.max_epochs is not a number of epochs"
    return None


def pack_key(cfg: DictConfig) -> str:
    """What the jobs of one pack share: the job's config (without hydra) less its packable values. The data and
    the model are compared as they resolve, so that a value a member has of its own (its seed, its init_std)
    counts once, wherever an interpolation carries it."""
    shared = OmegaConf.to_container(cfg, resolve=False)
    shared.pop("hydra", None)
    for key in OWN:
        shared.pop(key, None)
    shared["data"], shared["model"] = (OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model"))
    shared["optimizer"] = {"_target_": cfg.optimizer.get("_target_")}
    scheduler = cfg.get("scheduler") or {}
    shared["scheduler"] = {k: scheduler.get(k) for k in ("_target_", "interval", "frequency")}
    for node in (shared["model"], shared["model"].get("net") or {}):
        for key in ("init_std", "bias_init"):
            node.pop(key, None)
    if not _seed_draws_data(str(shared["data"].get("_target_", ""))):
        shared["data"].pop("seed", None)  # each member shuffles by its own
    return json.dumps(shared, sort_keys=True, default=str)


def _seed_draws_data(target: str) -> bool:
    """Whether the data class `target` draws its data from its seed (synthetic data): then jobs of different
    seeds have different data. Unknown (a class not allowed to be imported here, or not found): it does."""
    from hydra.utils import get_class

    from task1.core.trust import allowed

    try:
        return bool(getattr(get_class(target), "seed_draws_data", True)) if allowed(target) else True
    except Exception:
        return True


def packs(cfgs: list[DictConfig], size: int) -> list[list[int]]:
    """The jobs (indices into `cfgs`) in packs of at most `size` that share a key, in the order of the jobs; a job
    that cannot be packed is a pack of its own."""
    if size < 1:
        raise ValueError(f"hydra.launcher.pack={size}: expected a positive number of jobs")
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        key = pack_key(cfg) if unpackable(cfg) is None else f"alone {i}"
        groups.setdefault(key, []).append(i)
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]
