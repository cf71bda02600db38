"""The composed config checked before anything is built: one clear message per mistake.

Hydra already refuses a key that is not in the config (`optimizer.lrr=0.1`) and an unknown group option
(`model=foo`). What it lets through, `validate` catches: wrong types, values out of range, combinations that
cannot work, and keys added with `+` that nothing reads (`+model.num_hidden=512` would otherwise train the
default width). Where the keys, types and ranges come from: the dataclasses of `task1.core.schema` for the nodes
task1 reads, the signature of the class a `_target_` names for the others (read from its source, so that a
check imports neither torch nor Lightning), and `LIMITS` for the arguments of torch's and Lightning's classes.
"""

import ast
import dataclasses
import difflib
import importlib.util
import inspect
import logging
import math
import re
import types
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from task1 import Task1Error, checks, error_line
from task1.checks import Check, Fraction, NonNegative, OpenFraction, Positive, PositiveInt
from task1.core.schema import Config, Model, Scheduler

log = logging.getLogger("task1")

# Ranges of arguments that torch's and Lightning's classes take as plain numbers and check only once training has
# started, or never; they apply to an argument of that name whose own annotation says no range.
LIMITS: dict[str, Any] = {
    "lr": Positive, "momentum": OpenFraction, "dampening": Fraction, "weight_decay": NonNegative, "eps": Positive,
    "gamma": Positive, "step_size": PositiveInt, "T_max": PositiveInt | None, "total_steps": PositiveInt | None,
    "max_epochs": PositiveInt, "log_every_n_steps": PositiveInt,
}
# nodes whose entries, of any name, each name a class: several loggers (logger=[tensorboard,mlflow]), callbacks
COLLECTIONS = ("logger", "callbacks")
_KIND_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


@dataclass(frozen=True)
class Spec:
    """What a type annotation allows: kinds (float takes an int too), or Literal values, ranges, and null or not."""

    kinds: tuple[type, ...] = ()
    values: tuple = ()
    checks: tuple[Check, ...] = ()
    nullable: bool = False

    @classmethod
    def of(cls, annotation: Any) -> "Spec | None":
        """The Spec of an annotation; None when it allows what a config value is not checked against (a class,
        a list, Any)."""
        kinds, values, found, nullable = [], [], [], False

        def add(a: Any) -> bool:
            nonlocal nullable
            origin = typing.get_origin(a)
            if a is None or a is type(None):
                nullable = True
            elif origin is Annotated:
                found.extend(m for m in a.__metadata__ if isinstance(m, Check))
                return add(typing.get_args(a)[0])
            elif origin in (Union, types.UnionType):
                return all(add(x) for x in typing.get_args(a))
            elif origin is Literal:
                values.extend(typing.get_args(a))
            elif a in _KIND_WORDS:
                kinds.append(a)
            else:
                return False
            return True

        if annotation is None or not add(annotation):
            return None
        kinds = sorted(set(kinds), key=list(_KIND_WORDS).index)  # Union[int, float] is Union[float, int]
        return cls(tuple(kinds), tuple(dict.fromkeys(values)), tuple(found), nullable)

    @property
    def ranged(self) -> bool:
        return bool(self.values or self.checks)

    def check(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if any(v == value and type(v) is type(value) for v in self.values):  # Literal[True, 'all']: True, not 1
            return True
        kinds = (*self.kinds, int) if float in self.kinds else self.kinds
        plain = tuple(k for k in kinds if k is not bool)
        ok = (bool in kinds) if isinstance(value, bool) else isinstance(value, plain)  # True is no integer here
        if not ok or (isinstance(value, float) and not math.isfinite(value)):  # inf, nan: never a setting
            return False
        return all(c.ok is None or c.ok(value) for c in self.checks)

    def describe(self) -> str:
        if self.values:
            text = " | ".join(v if isinstance(v, str) else _show(v) for v in self.values)
        elif self.checks:
            text = self.checks[0].allowed
        else:
            text = " or ".join(_KIND_WORDS[k] for k in self.kinds)
        return text + (", or null" if self.nullable else "")


@cache
def _fields(schema: type | None) -> dict[str, Any]:
    """A schema dataclass's fields and their annotations ({} for no schema)."""
    if schema is None:
        return {}
    hints = typing.get_type_hints(schema, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def _schema_in(annotation: Any) -> type | None:
    """The dataclass an annotation names, alone or with None (`Scheduler | None`)."""
    for a in (annotation, *typing.get_args(annotation)):
        if dataclasses.is_dataclass(a):
            return a
    return None


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


# what an annotation read from source may name; anything else is left unchecked
_NAMES = {"int": int, "float": float, "bool": bool, "str": str, "None": None, "Optional": Optional,
          "Union": Union, "Literal": Literal,
          **{k: v for k, v in vars(checks).items() if not k.startswith("_")}}


def _annotation(node: ast.expr | None) -> Any:
    """The annotation an expression of source writes, for the names of _NAMES; None for any other."""
    if node is None:
        return None
    if isinstance(node, ast.Constant):  # None, a Literal's value; a forward reference ("Tensor") is left unchecked
        return node.value
    if isinstance(node, ast.Name | ast.Attribute):  # int, Optional, typing.Optional, PositiveInt
        return _NAMES.get(node.id if isinstance(node, ast.Name) else node.attr, TypeError)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return Union[_annotation(node.left), _annotation(node.right)]  # noqa: UP007 (built from parts)
    if isinstance(node, ast.Subscript):
        outer = _annotation(node.value)
        inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if outer is Literal:
            return Literal[tuple(_annotation(e) for e in inner)]
        if outer in (Optional, Union):
            args = tuple(_annotation(e) for e in inner)
            return Union[(*args, None) if outer is Optional else args]  # noqa: UP007 (built from parts)
    return TypeError  # a class, a container: a type no config value is checked against


def static_signature(target: str) -> tuple[dict[str, Any], bool]:
    """The parameters of `target`'s `__init__` (a class) or of `target` (a function) with their annotations, and
    whether it also takes any keyword, read from its source without importing it; LookupError when the source
    does not say (no file, no `__init__` of its own). Follows `from x import Name` re-exports.
    """
    module, _, name = target.rpartition(".")
    for _ in range(8):  # re-exports are a few levels deep at most
        path = _module_file(module)
        if path is None:
            break
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name == name:
                function = node if isinstance(node, ast.FunctionDef) else next(
                    (f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
                if function is None:
                    raise LookupError(target)
                a = function.args
                args = [*a.posonlyargs, *a.args, *a.kwonlyargs][isinstance(node, ast.ClassDef):]  # less self
                return {x.arg: _annotation(x.annotation) for x in args}, a.kwarg is not None
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


@cache  # a sweep checks every job's config: each source is read once a process
def signature(target: str) -> tuple[dict[str, Any], bool]:
    """The parameters of what `target` names, with their annotations, and whether it takes any keyword: from its
    source where that says (a check imports neither torch nor Lightning), else from the imported object."""
    try:
        return static_signature(target)
    except (LookupError, SyntaxError, UnicodeDecodeError):
        return imported_signature(target)


def imported_signature(target: str) -> tuple[dict[str, Any], bool]:
    """`signature`, from the imported object."""
    params = inspect.signature(_lookup(target)).parameters.values()
    named = {p.name: None if p.annotation is p.empty else p.annotation
             for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    for key, value in named.items():
        if isinstance(value, str):  # a postponed annotation
            named[key] = _annotation(ast.parse(value, mode="eval").body)
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def _unknown(key: str, where: str, names: set[str], target: str | None = None) -> Task1Error:
    """The mistake of a key nothing reads: the options of its group that have it (model.num_hiddens with
    model=softmax: model=mlp has it), else the closest of the keys something does read. `target`: the raw
    `_target_` of the node the key is in, if it is one."""
    group, _, field = key.partition(".")
    others = _options_with(group, field, target)
    if others:
        return Task1Error(f"{key} is a field of {' and '.join(f'{group}={o}' for o in others)}, not of the {group} "
                          f"chosen here: choose {group}={others[0]}, or drop the key.")
    if not names:
        return Task1Error(f"{key} is not a field of {where}, which has none here: nothing would read it.")
    parent, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    return Task1Error(f"{key} is not a field of {where}: {hint}Its fields are {', '.join(sorted(names))}.")


@cache
def _options(group: str) -> dict[str, dict]:
    """The options of a group of task1's conf/ (conf/<group>/<option>.yaml), read, by name."""
    import importlib.resources

    import yaml

    try:
        folder = importlib.resources.files("task1.conf") / group
    except ModuleNotFoundError:
        return {}
    if not folder.is_dir():
        return {}
    return {f.name.removesuffix(".yaml"): yaml.safe_load(f.read_text()) or {}
            for f in sorted(folder.iterdir(), key=lambda f: f.name) if f.name.endswith(".yaml")}


def _options_with(group: str, field: str, target: str | None = None) -> list[str]:
    """The options of a config group (conf/<group>/<option>.yaml) that set `field` (a dotted key in the group);
    none when the node that holds it names a class (`target`) that no option names: the user chose that class
    (model.net._target_=mypkg.Net), and choosing an option would not make the key one of its arguments."""
    if not field:
        return []
    found, targets = [], set()
    *parents, name = field.split(".")
    for option, node in _options(group).items():
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            targets.add(node.get("_target_"))
            if node.get(name) is not None:
                found.append(option)
    return found if target is None or target in targets else []


_REFERENCE = re.compile(r"\$\{\s*([A-Za-z_][\w.]*)\s*\}")  # ${model.num_hiddens}


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
        found.update(_REFERENCE.findall(tree))
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


def _source(raw: Any, default: str) -> str:
    """The key a value comes from: `model.num_hiddens` for `${model.num_hiddens}`, else where it is."""
    found = _REFERENCE.fullmatch(raw) if isinstance(raw, str) else None
    return found[1] if found else default


def _check_value(key: str, node: DictConfig, spec: Spec | None, name: str) -> None:
    if spec is None:
        return
    try:
        value = node[key]  # resolved; ${hydra:...} has no value outside a running Hydra app
    except Exception:
        return
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=False)
    if not spec.check(value):
        _fail(name, value, spec.describe())


def _check_target(path: str, node: DictConfig, schema: type | None, keys: bool) -> None:
    """A `_target_` node: its keys are the arguments of what it names (and those of its schema), its values
    what their annotations allow."""
    try:
        params, takes_any = signature(node._target_)
    except Exception as e:
        cause = e
        while cause.__cause__ is not None:  # Hydra wraps what went wrong (a missing extra, a bug in the module)
            cause = cause.__cause__
        raise Task1Error(f"{path}._target_={node._target_!r} cannot be imported ({error_line(cause)}): name a "
                         f"class or function that Python can import (task1's, torch's, lightning's, or your own: "
                         f"its package on PYTHONPATH or installed), and check that what it needs is installed.") from e
    own = _fields(schema)
    raw = OmegaConf.to_container(node, resolve=False)
    for key in node:
        if str(key).startswith("_"):
            continue
        if key not in own and key not in params:
            if keys and not takes_any:
                raise _unknown(f"{path}.{key}", f"{path} ({node._target_})", set(params) | set(own), raw["_target_"])
            continue
        spec = Spec.of(own[key] if key in own else params[key])
        if not (spec and spec.ranged) and key in LIMITS:
            spec = Spec.of(LIMITS[key])
        _check_value(key, node, spec, _source(raw[key], f"{path}.{key}"))


def _check(cfg: DictConfig, keys: bool) -> None:
    """Every value against its type and range; with `keys`, also no key that nothing reads: nodes naming a class
    take its arguments, the others the fields of their schema and the keys another value interpolates."""
    tree = OmegaConf.to_container(cfg, resolve=False)  # unresolved: ${hydra:...} needs a running Hydra app
    used = _interpolated(tree)
    targets: list[tuple[str, type | None]] = []

    def walk(path: str, node: dict | list, schema: type | None) -> None:
        if "_target_" in node:
            targets.append((path, schema))
            return
        if path in COLLECTIONS:
            for key, entry in entries(node).items():
                if not isinstance(entry, dict) or "_target_" not in entry:
                    raise Task1Error(f"{path}.{key} names no class: give it a _target_ ({path}.{key}."
                                     f"_target_=<module.Class>), or drop it with {path}.{key}=null.")
                targets.append((f"{path}.{key}", None))
            return
        prefix, fields = f"{path}." if path else "", _fields(schema)
        names = set(fields) | {u[len(prefix):].split(".")[0] for u in used if u.startswith(prefix)}
        for key, value in node.items():
            if keys and key not in names:
                raise _unknown(prefix + str(key), path or "the config", names)
            if isinstance(value, dict) or (prefix + str(key) in COLLECTIONS and isinstance(value, list)):
                walk(prefix + str(key), value, _schema_in(fields.get(key)))
            elif key in fields:
                _check_value(key, OmegaConf.select(cfg, path) if path else cfg, Spec.of(fields[key]), prefix + key)

    walk("", tree, Config)
    for path, schema in targets:  # after the plain keys: a class's signature is read from its source
        _check_target(path, OmegaConf.select(cfg, path), schema, keys)
    for key, node in entries(OmegaConf.select(cfg, "trainer.callbacks")).items():  # +trainer.callbacks=[...]
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise Task1Error(f"trainer.callbacks: {node} names no class: give each callback a _target_.")
        _check_target(f"trainer.callbacks.{key}".rstrip("."), node, None, keys)


ARRAYS = "task1.data.ArraysData"


def follow_arrays(cfg: DictConfig) -> None:
    """data=arrays: the model's `num_inputs` and `num_outputs` (where it has them) follow the user's file, which is
    checked here, before anything is built."""
    data, model = cfg.get("data") or {}, cfg.get("model")
    if data.get("_target_") != ARRAYS:
        return
    if OmegaConf.is_missing(data, "path"):
        raise Task1Error("data.path is missing: data=arrays reads your own file, data.path=<file.npz or file.pt> "
                         "(docs/extending.md).")
    from task1.data.arrays import sizes

    found, changed = sizes(data.path, data.task), []
    for key in ("num_inputs", "num_outputs"):
        if isinstance(model, DictConfig) and key in model and model[key] != found[key]:
            model[key] = found[key]
            changed.append(f"model.{key}={found[key]}")
    if changed:
        log.info("%s, as %s holds", " ".join(changed), data.path)


def _train_size(data: DictConfig) -> int | None:
    if data.get("_target_") == ARRAYS:
        from task1.data.arrays import sizes

        return sizes(data.path, data.task)["num_examples"]
    if "num_examples" in data:
        return data.num_examples
    if str(data.get("_target_", "")).endswith("FashionMNIST"):
        from task1.data.fashion_mnist import train_size
        return train_size(data.root)
    return None


def _check_model(model: Any) -> None:
    """The keys every model config needs (an own model's YAML too: docs/extending.md), before anything reads them."""
    if not isinstance(model, DictConfig):
        raise Task1Error("model names no model: choose one (model=softmax) or give your own (docs/extending.md).")
    required = [f.name for f in dataclasses.fields(Model) if f.default is dataclasses.MISSING]
    missing = [k for k in required if k not in model]
    if missing:
        example = {"net": "{_target_: mypkg.Net, ...}", "loss": "{_target_: task1.models.torch.cross_entropy, "
                   "_partial_: true}", "task": "classification", "loss_reduction": "mean"}
        raise Task1Error(f"model.{missing[0]} is missing: a model config needs {', '.join(required)} "
                         f"(docs/extending.md); add `{missing[0]}: {example[missing[0]]}` to its YAML "
                         f"(or +model.{missing[0]}=... to the command).")


def drop_other_class_keys(cfg: DictConfig) -> None:
    """`optimizer._target_=torch.optim.RMSprop` keeps the keys of the option it replaced (optimizer=sgd's
    dampening, nesterov): those the new class does not take are dropped, with a line saying so. Only keys that an
    option of the group sets: a key the user made up is still refused by the check."""
    for group, schema in (("optimizer", None), ("scheduler", Scheduler)):
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        target = OmegaConf.to_container(node, resolve=False)["_target_"]
        options = _options(group).values()
        if target in {o.get("_target_") for o in options}:
            continue
        try:
            params, takes_any = signature(node._target_)
        except Exception:  # the check says what is wrong with it
            continue
        stock = set().union(*options)
        keep = set(params) | set(_fields(schema))
        drop = [] if takes_any else [k for k in node if k in stock and k not in keep and not str(k).startswith("_")]
        if drop:
            with open_dict(node):
                for key in drop:
                    del node[key]
            log.info("%s._target_=%s takes no %s: dropped (keys of the %s option it replaced)", group, target,
                     ", ".join(drop), group)


def check_values(cfg: DictConfig) -> None:
    """Raise Task1Error naming the first value that is wrong (also in a run's resolved config)."""
    _check(cfg, keys=False)


def validate(cfg: DictConfig) -> None:
    """Raise Task1Error naming the first field that is wrong, its value and what is allowed (keys of an optimizer
    or scheduler class replaced through `_target_` that the new class does not take are dropped first)."""
    if "model" in cfg:
        _check_model(cfg.model)
    drop_other_class_keys(cfg)
    _check(cfg, keys=True)
    follow_arrays(cfg)
    opt = cfg.get("optimizer") or {}
    if opt.get("nesterov") and (opt.get("momentum", 0) <= 0 or opt.get("dampening", 0) != 0):
        _fail("optimizer.nesterov", True, f"false, or optimizer.momentum > 0 (it is {opt.get('momentum', 0)}) "
              f"with optimizer.dampening=0 (it is {opt.get('dampening', 0)}): Nesterov momentum needs both")
    loop = cfg.get("loop") or {}
    if loop.get("zero_grad") is False and loop.get("name") != "manual":
        _fail("loop.zero_grad", False, "true with loop=automatic: Lightning's loop always zeroes the gradients; "
              "choose loop=manual to leave zero_grad out")
    data, n = cfg.get("data") or {}, _train_size(cfg.get("data") or {})
    if n is not None and data.get("val_size", 0) >= n:
        _fail("data.val_size", data.val_size, f"0 up to {n - 1}: the training set has {n} examples")
