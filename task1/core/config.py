"""The composed config checked against typed specs before anything is built: one clear message per mistake.

Hydra already refuses a key that is not in the config (`optimizer.lrr=0.1`) and an unknown group option
(`model=foo`). What it lets through, `validate` catches: wrong types, values out of range, combinations that
cannot work, and keys added with `+` that nothing reads: not an argument of the class a node names, nor a key
task1 reads or another value interpolates (`+model.num_hidden=512` would otherwise train the default width).
"""

import ast
import difflib
import importlib.util
import inspect
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from task1 import Task1Error, error_line


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
        if isinstance(value, float) and not math.isfinite(value):
            return False  # inf and nan pass every comparison test or none: never a setting
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
    "paths.data_dir": Spec(str, allowed="a folder"),
    "paths.output_dir": Spec(str, allowed="a folder"),
    "data.batch_size": _positive_int(),
    "data.eval_batch_size": _positive_int(),
    "data.val_size": Spec(int, lambda v: v >= 0, "an integer >= 0"),
    "data.num_examples": _positive_int(),
    "data.num_test": _positive_int(),
    "data.noise": Spec(float, lambda v: v >= 0, "a number >= 0"),
    "data.root": Spec(str, allowed="a folder"),
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
# nodes whose entries, of any name, each name a class: several loggers (logger=[tensorboard,mlflow]), callbacks
COLLECTIONS = ("logger", "callbacks")
# keys a node holds for task1 itself, beside the arguments of the class it names
OWN_KEYS = {"scheduler": {"interval", "frequency"}}
# what task1 reads from the nodes that name no class ("": the top level); a node missing here (scheduler=none)
# has nothing read. Keys another value interpolates (`${model.num_hiddens}` in model.net) count as read too.
READS: dict[str, set[str]] = {
    "": {"data", "model", "optimizer", "scheduler", "trainer", "logger", "callbacks", "seed", "threads", "output_dir",
         "figures", "ckpt_path", "resume", "checkpoint_every_n_steps", "optimized_metric", "paths",
         "optuna", "show", "lr_schedule", "reported"},  # optuna: an older search's trial; then the tools' own
    "model": {"net", "loss", "task", "loss_reduction"},
    "figures": {"enabled", "every_n_epochs"},
    "paths": {"data_dir", "output_dir"},
    "optuna": {"storage", "study_name", "trial"},  # where trials of searches before 2026-12 found their trial
    "show": {"split", "count", "ncols", "classes"},
    "lr_schedule": {"train_examples"},
    "reported": {"source", "kind", "train_acc", "test_acc", "loss", "loss_examples", "w", "b",
                 "train_loss_below", "train_acc_above", "test_acc_above"},
}


def _show(value: Any) -> str:
    """A value as it is written on the command line."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value) if isinstance(value, str) else str(value)


def _fail(field: str, value: Any, allowed: str) -> None:
    raise Task1Error(f"{field}={_show(value)} is not allowed: expected {allowed}.")


def _module_file(module: str) -> Path | None:
    """The source file of `module`, found without running any of its package's code."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level name: found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *rest)
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return path if path.is_file() else None


def static_params(target: str) -> set[str] | None:
    """The parameter names of class `target`'s `__init__` (None: it takes any keyword), read from its source
    without importing it; LookupError when the source does not say (no file, no `__init__` of its own).

    Follows `from x import Name` re-exports. This keeps `import lightning` (seconds) out of a config check.
    """
    module, _, name = target.rpartition(".")
    for _ in range(8):  # re-exports are a few levels deep at most
        path = _module_file(module)
        if path is None:
            break
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                init = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
                if init is None:
                    raise LookupError(target)
                a = init.args
                return None if a.kwarg is not None else {x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)[1:]}
            if isinstance(node, ast.ImportFrom) and node.module:
                alias = next((x for x in node.names if (x.asname or x.name) == name), None)
                if alias is not None:
                    base = module if path.name == "__init__.py" else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    module, name = (f"{base}.{node.module}" if node.level else node.module), alias.name
                    break
        else:
            break
    raise LookupError(target)


def _lookup(target: str) -> Any:
    """hydra.utils.get_object, without Hydra also logging a failure in lines of its own: the Task1Error says it."""
    hydra_log = logging.getLogger("hydra.utils")
    disabled, hydra_log.disabled = hydra_log.disabled, True
    try:
        return get_object(target)
    finally:
        hydra_log.disabled = disabled


def _params(target: str) -> set[str] | None:
    """Parameter names of what `target` names; None when it takes any keyword (**kwargs)."""
    if target.split(".")[0] == "lightning" and "lightning" not in sys.modules:
        try:
            return static_params(target)
        except LookupError:
            pass
    params = inspect.signature(_lookup(target)).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _unknown(key: str, where: str, names: set[str]) -> Task1Error:
    """The mistake of a key nothing reads: the options of its group that have it (model.num_hiddens with
    model=softmax: model=mlp has it), else the closest of the keys something does read."""
    group, _, field = key.partition(".")
    others = _options_with(group, field)
    if others:
        return Task1Error(f"{key} is a field of {' and '.join(f'{group}={o}' for o in others)}, not of the {group} "
                          f"chosen here: choose {group}={others[0]}, or drop the key.")
    if not names:
        return Task1Error(f"{key} is not a field of {where}, which has none here: nothing would read it.")
    parent, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    return Task1Error(f"{key} is not a field of {where}: {hint}Its fields are {', '.join(sorted(names))}.")


def _options_with(group: str, field: str) -> list[str]:
    """The options of a config group (conf/<group>/<option>.yaml) that set `field` (a dotted key in the group)."""
    import importlib.resources

    import yaml

    try:
        folder = importlib.resources.files("task1.conf") / group
    except ModuleNotFoundError:
        return []
    if not field or not folder.is_dir():
        return []
    found = []
    for option in sorted(folder.iterdir(), key=lambda f: f.name):
        if option.name.endswith(".yaml"):
            node = yaml.safe_load(option.read_text()) or {}
            for part in field.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                found.append(option.name.removesuffix(".yaml"))
    return found


def _check_keys(path: str, node: DictConfig) -> None:
    """Keys of a `_target_` node must be arguments of what it names (unless that takes **kwargs)."""
    try:
        params = _params(node._target_)
    except Exception as e:
        cause = e
        while cause.__cause__ is not None:  # Hydra wraps what went wrong (a missing extra, a bug in the module)
            cause = cause.__cause__
        raise Task1Error(f"{path}._target_={node._target_!r} cannot be imported ({error_line(cause)}): name a "
                         f"class or function of task1, torch or lightning, and check that what it needs is "
                         f"installed.") from e
    if params is None:
        return
    names = params | OWN_KEYS.get(path, set())
    for key in node:
        if not str(key).startswith("_") and key not in names:
            raise _unknown(f"{path}.{key}", f"{path} ({node._target_})", names)


def _interpolated(tree: Any, found: set[str] | None = None) -> set[str]:
    """Every key path another value interpolates, e.g. `model.num_hiddens` from `${model.num_hiddens}`."""
    found = set() if found is None else found
    if isinstance(tree, dict):
        for value in tree.values():
            _interpolated(value, found)
    elif isinstance(tree, list):
        for value in tree:
            _interpolated(value, found)
    elif isinstance(tree, str):
        found.update(re.findall(r"\$\{\s*([A-Za-z_][\w.]*)\s*\}", tree))
    return found


def entries(node: Any) -> dict[str, Any]:
    """The classes a logger or callbacks node names, by entry name: one node with a `_target_` (`""`; a run saved
    before loggers were named), a dict of such nodes, or a list of them; empty entries (`logger.csv=null`) left out."""
    if not node:
        return {}
    if isinstance(node, list | ListConfig):
        return {str(i): n for i, n in enumerate(node) if n}
    if "_target_" in node:
        return {"": node}
    return {str(k): v for k, v in node.items() if v}


def _check_tree(cfg: DictConfig) -> None:
    """No key that nothing reads: nodes naming a class take its arguments, the others what task1 reads."""
    tree = OmegaConf.to_container(cfg, resolve=False)  # unresolved: ${hydra:...} needs a running Hydra app
    used = _interpolated(tree)
    targets = []

    def walk(path: str, node: dict | list) -> None:
        if "_target_" in node:
            targets.append(path)
            return
        if path in COLLECTIONS:
            for key, entry in entries(node).items():
                if not isinstance(entry, dict) or "_target_" not in entry:
                    raise Task1Error(f"{path}.{key} names no class: give it a _target_ ({path}.{key}."
                                     f"_target_=<module.Class>), or drop it with {path}.{key}=null.")
                targets.append(f"{path}.{key}")
            return
        prefix = f"{path}." if path else ""
        names = READS.get(path, set()) | {u[len(prefix):].split(".")[0] for u in used if u.startswith(prefix)}
        for key, value in node.items():
            if key not in names:
                raise _unknown(prefix + str(key), path or "the config", names)
            if isinstance(value, dict) or (prefix + str(key) in COLLECTIONS and isinstance(value, list)):
                walk(prefix + str(key), value)

    walk("", tree)
    for path in targets:  # after the plain keys: looking a class up can take an import
        _check_keys(path, OmegaConf.select(cfg, path))
    for key, node in entries(OmegaConf.select(cfg, "trainer.callbacks")).items():  # +trainer.callbacks=[...]
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise Task1Error(f"trainer.callbacks: {node} names no class: give each callback a _target_.")
        _check_keys(f"trainer.callbacks.{key}".rstrip("."), node)


def _train_size(data: DictConfig) -> int | None:
    if "num_examples" in data:
        return data.num_examples
    if str(data.get("_target_", "")).endswith("FashionMNIST"):
        from task1.data.fashion_mnist import train_size
        return train_size(data.root)
    return None


def check_values(cfg: DictConfig) -> None:
    """Raise Task1Error naming the first field of FIELDS whose value is wrong (also in a run's resolved config)."""
    for path, spec in FIELDS.items():
        value = OmegaConf.select(cfg, path, default="<absent>")
        if value != "<absent>" and not spec.check(value):
            _fail(path, value, spec.describe())


def validate(cfg: DictConfig) -> None:
    """Raise Task1Error naming the first field that is wrong, its value and what is allowed."""
    check_values(cfg)
    _check_tree(cfg)
    opt = cfg.get("optimizer") or {}
    if opt.get("nesterov") and (opt.get("momentum", 0) <= 0 or opt.get("dampening", 0) != 0):
        _fail("optimizer.nesterov", True, f"false, or optimizer.momentum > 0 (it is {opt.get('momentum', 0)}) "
              f"with optimizer.dampening=0 (it is {opt.get('dampening', 0)}): Nesterov momentum needs both")
    data, n = cfg.get("data") or {}, _train_size(cfg.get("data") or {})
    if n is not None and data.get("val_size", 0) >= n:
        _fail("data.val_size", data.val_size, f"0 up to {n - 1}: the training set has {n} examples")
