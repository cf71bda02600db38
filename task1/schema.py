"""The composed config checked against typed specs before anything is built: one clear message per mistake.

Hydra already refuses a key that is not in the config (`optimizer.lrr=0.1`) and an unknown group option
(`model=foo`). What it lets through, `validate` catches: wrong types, values out of range, combinations that
cannot work, and keys added with `+` that the class a node names does not take.
"""

import difflib
import inspect
from dataclasses import dataclass
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from task1 import Task1Error


@dataclass(frozen=True)
class Spec:
    """A field's type (int, float, bool or str; float accepts an int), its allowed values, and null or not."""

    kind: type
    ok: Any = None  # a predicate on the value, or a tuple of allowed values
    allowed: str = ""
    nullable: bool = False

    def check(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        kinds = (int, float) if self.kind is float else (self.kind,)
        if isinstance(value, bool) != (self.kind is bool) or not isinstance(value, kinds):
            return False
        if isinstance(self.ok, tuple):
            return value in self.ok
        return self.ok is None or bool(self.ok(value))

    def describe(self) -> str:
        if isinstance(self.ok, tuple):
            text = " | ".join(map(str, self.ok))
        else:
            text = self.allowed or {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[
                self.kind]
        return text + (", or null" if self.nullable else "")


def _positive_int(nullable: bool = False) -> Spec:
    return Spec(int, lambda v: v >= 1, "an integer >= 1", nullable)


def _fraction(top: str) -> Spec:
    return Spec(float, (lambda v: 0 <= v < 1) if top == ")" else (lambda v: 0 <= v <= 1), f"a number in [0, 1{top}")


# Fields are checked where they exist: groups differ (adam has no momentum, synthetic no root).
FIELDS: dict[str, Spec] = {
    "seed": Spec(int, nullable=True),
    "threads": _positive_int(nullable=True),
    "checkpoint_every_n_steps": _positive_int(nullable=True),
    "resume": Spec(str, nullable=True, allowed="a run folder"),
    "ckpt_path": Spec(str, nullable=True, allowed="the path of a .ckpt file"),
    "data.batch_size": _positive_int(),
    "data.eval_batch_size": _positive_int(),
    "data.val_size": Spec(int, lambda v: v >= 0, "an integer >= 0"),
    "data.num_examples": _positive_int(),
    "data.num_test": _positive_int(),
    "data.noise": Spec(float, lambda v: v >= 0, "a number >= 0"),
    "data.root": Spec(str),
    "data.download": Spec(bool),
    "data.on_device": Spec(bool),
    "model.impl": Spec(str, ("torch", "scratch")),
    "model.task": Spec(str, ("classification", "regression")),
    "model.num_inputs": _positive_int(),
    "model.num_hiddens": _positive_int(),
    "model.num_outputs": _positive_int(),
    "model.init_std": Spec(float, lambda v: v > 0, "a number > 0", nullable=True),
    "model.bias_init": Spec(str, ("zeros", "normal", "default")),
    "model.loss_reduction": Spec(str, ("mean", "sum")),
    "optimizer.lr": Spec(float, lambda v: v > 0, "a number > 0"),
    "optimizer.momentum": _fraction(")"),
    "optimizer.dampening": _fraction("]"),
    "optimizer.weight_decay": Spec(float, lambda v: v >= 0, "a number >= 0"),
    "optimizer.nesterov": Spec(bool),
    "optimizer.eps": Spec(float, lambda v: v > 0, "a number > 0"),
    "scheduler.interval": Spec(str, ("epoch", "step")),
    "scheduler.frequency": _positive_int(),
    "scheduler.gamma": Spec(float, lambda v: v > 0, "a number > 0"),
    "scheduler.step_size": _positive_int(),
    "scheduler.T_max": _positive_int(nullable=True),
    "scheduler.total_steps": _positive_int(nullable=True),
    "trainer.max_epochs": _positive_int(),
    "trainer.log_every_n_steps": _positive_int(),
}
# keys a node holds for task1 itself, beside the arguments of the class it names
OWN_KEYS = {"scheduler": {"interval", "frequency"}}


def _show(value: Any) -> str:
    """A value as it is written on the command line."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value) if isinstance(value, str) else str(value)


def _fail(field: str, value: Any, allowed: str) -> None:
    raise Task1Error(f"{field}={_show(value)} is not allowed: expected {allowed}.")


def _check_keys(path: str, node: DictConfig) -> None:
    """Keys of a `_target_` node must be arguments of what it names (unless that takes **kwargs)."""
    try:
        params = inspect.signature(get_object(node._target_)).parameters.values()
    except Exception:
        raise Task1Error(f"{path}._target_={node._target_!r} cannot be imported: name a class or function "
                         f"of task1, torch or lightning.") from None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    names = {p.name for p in params} | OWN_KEYS.get(path, set())
    for key in node:
        if not str(key).startswith("_") and key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {path}.{close[0]}? " if close else ""
            raise Task1Error(f"{path}.{key} is not a field of {path} ({node._target_}): {hint}Its fields are "
                             f"{', '.join(sorted(names))}.")


def _train_size(data: DictConfig) -> int | None:
    if "num_examples" in data:
        return data.num_examples
    if str(data.get("_target_", "")).endswith("FashionMNIST"):
        from task1.data.fashion_mnist import train_size
        return train_size(data.root)
    return None


def validate(cfg: DictConfig) -> None:
    """Raise Task1Error naming the first field that is wrong, its value and what is allowed."""
    for path, spec in FIELDS.items():
        value = OmegaConf.select(cfg, path, default="<absent>")
        if value != "<absent>" and not spec.check(value):
            _fail(path, value, spec.describe())
    for path in ("data", "optimizer", "scheduler", "trainer", "logger", "model.net", "model.loss"):
        node = OmegaConf.select(cfg, path)
        if isinstance(node, DictConfig) and "_target_" in node:
            _check_keys(path, node)
    opt = cfg.get("optimizer") or {}
    if opt.get("nesterov") and (opt.get("momentum", 0) <= 0 or opt.get("dampening", 0) != 0):
        _fail("optimizer.nesterov", True, f"false, or optimizer.momentum > 0 (it is {opt.get('momentum', 0)}) "
              f"with optimizer.dampening=0 (it is {opt.get('dampening', 0)}): Nesterov momentum needs both")
    data, n = cfg.get("data") or {}, _train_size(cfg.get("data") or {})
    if n is not None and data.get("val_size", 0) >= n:
        _fail("data.val_size", data.val_size, f"0 up to {n - 1}: the training set has {n} examples")
