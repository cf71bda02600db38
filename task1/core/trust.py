"""What task1 trusts: a run folder, a sweep folder or a checkpoint that someone else wrote is data, never code.

`hydra.utils.instantiate` imports and calls whatever `_target_` names, and Hydra's own blocklist stops only
`os.system` and `subprocess.*`; `torch.load` with weights_only off, `numpy.load` allowing pickles, or
`site.addsitedir` pass it. So a config that comes from a folder or a checkpoint (rerun, resume=, a sweep resumed
from its multirun.yaml, eval) is checked here before Hydra or task1 builds anything from it:

- every `_target_` (and a logging factory `()`) must name task1's own building blocks (data, models, optimizers,
  callbacks: not its helpers, such as `task1.io.write_atomic`), torch's optimizers and schedulers,
  Lightning's callbacks, loggers and plugins, a class conf/ names, or a module prefix the user trusts by name
  (`trust=mypkg,otherpkg` on the command line, or TASK1_TRUST=mypkg,otherpkg);
- it may hold no `hydra:` node or defaults list (Hydra never saves one there; their logging set-up, callbacks and
  job name would act on this machine), and its saved overrides set only the few `hydra.*` keys a sweep sets;
- its interpolations call only harmless resolvers: `${oc.env:...}` reads only the variables conf/ reads.

What the user gives on their own command line (overrides, `--config-dir`) is theirs and is never checked here.
"""

import ast
import importlib.resources
import importlib.util
import inspect
import logging
import os
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from task1 import Task1Error, error_line
from task1.io import override_key

TRUST_ENV = "TASK1_TRUST"
TRUST_ARG = "trust="
HOW = (f"If you trust its author, add trust=<module prefix> to the command, or set {TRUST_ENV}=<module prefix> "
       f"(docs/errors.md, \"What task1 trusts\").")
# module prefixes whose every class may be built from a saved config (matched on whole module names): task1's
# building blocks, not its helpers (task1.io.write_atomic would write any file a config names)
PREFIXES = ("task1.data", "task1.models", "task1.optim", "task1.core.callbacks", "lightning.pytorch.callbacks",
            "lightning.pytorch.loggers", "lightning.pytorch.plugins")
# where a class reached through those prefixes may also be defined (lightning.pytorch.plugins re-exports these)
HOMES = ("lightning.fabric.plugins",)
# resolvers that read nothing outside the config; oc.env is checked apart (the variables conf/ reads)
RESOLVERS = ("now", "hydra", "oc.select", "oc.dict.keys", "oc.dict.values")
# the hydra.* keys a saved sweep's overrides may set (task1's own folders, its sweeper and launcher settings)
HYDRA_KEYS = ("hydra.mode", "hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.output_subdir",
              "hydra.sweeper", "hydra.launcher", "hydra.callbacks.sweep_report", "hydra.job.name", "hydra.job.chdir",
              "hydra.verbose")
INSIDE = ("hydra.job.name", "hydra.sweep.subdir", "hydra.output_subdir")  # names of files or folders in a job's
# launcher settings that run shell lines or pass options to sbatch and srun: the user's own to give
SHELL_KEYS = ("hydra.launcher.setup", "hydra.launcher.srun_args", "hydra.launcher.additional_parameters")
_RESOLVER = re.compile(r"\$\{\s*([A-Za-z_][\w.\-]*)\s*:")
_ENV = re.compile(r"\$\{\s*oc\.env\s*:\s*([^,}]*)")


class UntrustedError(Task1Error):
    """A saved config that would make task1 run code it does not trust, or read the environment."""


def _conf() -> Path:
    """conf/, as the package task1.conf (the command line's CONF; the core does not import the command line)."""
    return Path(str(importlib.resources.files("task1.conf")))


def _all_names(module: str) -> list[str]:
    """The `__all__` of a module, read from its source (no import: torch costs seconds)."""
    spec = importlib.util.find_spec(module.split(".")[0])
    if spec is None or not spec.submodule_search_locations:
        return []
    path = Path(next(iter(spec.submodule_search_locations)), *module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    for node in ast.parse(path.read_text()).body if path.is_file() else []:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return [e.value for e in getattr(node.value, "elts", []) if isinstance(e, ast.Constant)]
    return []


@cache
def _plugins() -> dict[str, Path]:
    """task1's own Hydra plugins (`hydra_plugins.task1_*`, the sweeper and launchers): package -> config folder."""
    spec = importlib.util.find_spec("hydra_plugins")
    places = [Path(p) for p in (spec.submodule_search_locations or []) if Path(p).is_dir()] if spec else []
    return {f"hydra_plugins.{d.name}": d / "conf" for place in places for d in place.glob("task1_*") if d.is_dir()}


@cache
def _conf_names() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """What conf/ (and the config of task1's Hydra plugins) names: its literal `_target_`s, the resolvers its
    interpolations call, and the variables its `${oc.env:...}` read."""
    targets, resolvers, env = set(), set(), set()
    for path in (p for folder in (_conf(), *_plugins().values()) for p in folder.rglob("*.yaml")):
        text = path.read_text()
        targets.update(re.findall(r"_target_:\s*([\w.]+)\s*(?:#.*)?$", text, re.M))  # a comment may follow
        resolvers.update(_RESOLVER.findall(text))
        env.update(v.strip() for v in _ENV.findall(text))
    return frozenset(targets), frozenset(resolvers) - {"oc.env"}, frozenset(env)


@cache
def _torch_classes() -> frozenset[str]:
    """torch's optimizer and scheduler classes (their modules' `__all__`, capitalised names: not helpers)."""
    return frozenset(f"{m}.{n}" for m in ("torch.optim", "torch.optim.lr_scheduler") for n in _all_names(m)
                     if n[:1].isupper())


def trusted_prefixes() -> tuple[str, ...]:
    """The module prefixes the user trusts: TASK1_TRUST (comma-separated; `trust=` arguments land there too)."""
    return tuple(p.strip().strip(".") for p in os.environ.get(TRUST_ENV, "").split(",") if p.strip().strip("."))


def take_trust(args: list[str]) -> list[str]:
    """`args` less any `trust=a,b` (or `trust=[a,b]`), whose prefixes join TASK1_TRUST for this process and the
    processes it starts (a DDP rank, a sweep's workers): the command line's word is the user's own."""
    given = [a.removeprefix(TRUST_ARG).strip("[]") for a in args if a.startswith(TRUST_ARG)]
    if given:
        os.environ[TRUST_ENV] = ",".join([*trusted_prefixes(), *given])
    return [a for a in args if not a.startswith(TRUST_ARG)]


def allowed(target: str) -> bool:
    """Whether a saved config may name `target`: task1's allowlist, or a prefix the user trusts, matched on
    whole module names (`task1evil.x` is not under `task1`)."""
    if target in _conf_names()[0] or target in _torch_classes():
        return True
    if not _under(target):
        return False
    # a name under a prefix may still walk out of it through a module that one imports
    # (lightning.pytorch.callbacks.model_checkpoint.os.system): what it names must be defined under one too. Only
    # modules under the prefixes are imported for this, and Hydra would import them to build it anyway.
    found = _lookup(target)
    home = getattr(found, "__name__" if inspect.ismodule(found) else "__module__", None)
    return found is None or (isinstance(home, str) and _under(home, HOMES))


def _under(name: str, homes: tuple[str, ...] = ()) -> bool:
    return any(name == p or name.startswith(p + ".") for p in (*PREFIXES, *_plugins(), *trusted_prefixes(), *homes))


def _lookup(target: str) -> Any:
    """What `target` names (None where it cannot be imported: then it cannot be built either)."""
    from hydra.utils import get_object

    hydra_log = logging.getLogger("hydra.utils")  # its failure is not this check's to report
    disabled, hydra_log.disabled = hydra_log.disabled, True
    try:
        return get_object(target)
    except Exception:
        return None
    finally:
        hydra_log.disabled = disabled


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every entry below `node`, at any depth (list items by their index)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield f"{path}{key}", value
        yield from _walk(value, f"{path}{key}.")


def _resolvers(key: str, value: Any, source: str) -> None:
    """Refuse an interpolation that calls a resolver other than the harmless ones, or reads another variable
    than conf/ reads: a shared config must not read this machine's environment (and send it to a logger)."""
    if not isinstance(value, str) or "${" not in value:
        return
    _, conf_resolvers, conf_env = _conf_names()
    for name in _RESOLVER.findall(value):
        if name != "oc.env" and name not in (*RESOLVERS, *conf_resolvers) and not name.startswith("task1."):
            raise UntrustedError(f"{source}: {key}={value} calls the resolver {name}, which task1 does not run "
                                 f"from a saved config (it is data, not code). Remove it, or give the value on "
                                 f"your own command line.")
    for var in (v.strip() for v in _ENV.findall(value)):
        if var not in conf_env:
            raise UntrustedError(f"{source}: {key}={value} reads the environment variable {var or '(computed)'}, "
                                 f"and a saved config may read only {', '.join(sorted(conf_env))}: it would be "
                                 f"written to config_resolved.yaml and every logger. Remove it, or give the value "
                                 f"on your own command line.")


def _refuse_target(source: str, key: str, target: Any) -> None:
    if not isinstance(target, str) or not allowed(target):
        prefix = str(target).rpartition(".")[0] or str(target)
        raise UntrustedError(f"{source}: {key} names {target}, which task1 does not build from a saved run or "
                             f"checkpoint: it is data, not code. {HOW.replace('<module prefix>', prefix)}")


def _given(args: list[str]) -> set[str]:
    """The keys the user's own overrides set (or delete): what they set replaces what was saved."""
    return {override_key(a) for a in args if not a.startswith("-") and ("=" in a or a.startswith("~"))}


def check_config(config: dict, source: str, args: list[str] = ()) -> None:
    """Refuse a config from a folder or a checkpoint (`source` names it) unless all it would build is trusted; a
    value the user's own overrides (`args`) set in its place is theirs. (Only the very key: Hydra merges a
    mapping given for a node into the saved one.)"""
    if not isinstance(config, dict):
        raise UntrustedError(f"{source} is not a config (a mapping of keys): it cannot be a task1 run's.")
    for node in ("hydra", "defaults"):
        if node in config:
            raise UntrustedError(f"{source}: a {node}: node is not taken from a saved config (Hydra never saves "
                                 f"one there; its logging set-up, callbacks and job name would act on this "
                                 f"machine). Remove it: task1 uses its own, conf/hydra/.")
    given = _given(list(args))
    leaves = [(k, v) for k, v in _walk(config) if k not in given]
    for key, value in leaves:
        _resolvers(key, value, source)
    resolved = None
    for key, value in leaves:
        if key.rpartition(".")[2] not in ("_target_", "()"):
            continue
        if isinstance(value, str) and "${" in value:  # task1.models.${model.impl}.MLP: the class it names
            from omegaconf import OmegaConf

            resolved = resolved or OmegaConf.create(config)
            try:
                value = OmegaConf.select(resolved, key, throw_on_resolution_failure=True)
            except Exception:
                value = f"{value} (unresolved)"
        _refuse_target(source, key, value)


def check_overrides(overrides: list[str], source: str, args: list[str] = ()) -> None:
    """Refuse a saved list of overrides (a sweep's multirun.yaml, a run's hydra.yaml) that would set up Hydra
    (logging, callbacks, the environment, the search path), name an untrusted target, call a resolver other than
    the harmless ones, or name a job (or a job's folder) that leaves the sweep folder; one whose key the user's own
    overrides (`args`) set again is dropped for theirs (task1.cli), so it is not checked."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, given = OverridesParser.create(), _given(list(args))
    for line in (o for o in overrides if override_key(str(o)) not in given):
        try:
            override = parser.parse_override(str(line))
        except Exception as e:
            raise UntrustedError(f"{source}: the saved override {line} cannot be read ({str(e).splitlines()[0]})."
                                 f" Remove it from the file.") from None
        key = override.get_key_element().lstrip("+~")
        _resolvers(key, str(line), source)
        if key.startswith("hydra.") and (not _in(key, HYDRA_KEYS) or _in(key, SHELL_KEYS)):
            raise UntrustedError(f"{source}: the saved override {line} sets {key}, which a saved sweep may not "
                                 f"set (Hydra's logging, callbacks, environment, search path and a launcher's "
                                 f"shell lines act on this machine). Remove it, or give it on your own command "
                                 f"line.")
        values = override.value()
        values = getattr(values, "list", [values])  # a swept list: each value
        for value in values:
            if key in INSIDE and value is not None and not _inside(str(value)):
                raise UntrustedError(f"{source}: the saved override {line} would put a job's files outside "
                                     f"its folder. Remove it from the file.")
            if key.rpartition(".")[2] in ("_target_", "()"):
                _refuse_target(source, key, value)
            for k, v in _walk(value, f"{key}."):
                if k.rpartition(".")[2] in ("_target_", "()"):
                    _refuse_target(source, k, v)


def _in(key: str, keys: tuple[str, ...]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in keys)


def _inside(name: str) -> bool:
    """A job name or subfolder that stays inside its folder: relative, no `..`."""
    return not name.startswith(("/", "\\", "~")) and ".." not in re.split(r"[/\\]", name)


def read_saved_yaml(path: Path) -> Any:
    """A saved YAML file (config.yaml, overrides.yaml, multirun.yaml) read as data only: a Python tag
    (`!!python/object/apply`) or any other YAML mistake ends in one line that names the file."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        what = "a Python object tag, which task1 never writes and does not load" if "python/" in str(e) else \
            str(e).splitlines()[0]
        raise UntrustedError(f"{path} cannot be read as a saved config: it holds {what}. Remove that entry, or "
                             f"use a folder task1 wrote.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UntrustedError(f"{path} cannot be read ({error_line(e)}).") from None


def read_saved_overrides(path: Path) -> list[str]:
    """A saved overrides.yaml: a list of `key=value` strings (read as data, see `read_saved_yaml`)."""
    saved = read_saved_yaml(path)
    if not isinstance(saved, list | None):
        raise UntrustedError(f"{path} is not a list of overrides (key=value): it was not written by Hydra. Remove "
                             f"that job folder, or use a folder task1 wrote.")
    return [str(o) for o in saved or []]


def check_saved_dir(hydra_dir: Path, name: str = "config", args: list[str] = ()) -> None:
    """A run's saved `.hydra` folder (or a sweep's config folder) about to be Hydra's primary config path: its
    `<name>.yaml` checked, and no config groups beside it (Hydra would look for a group's options there)."""
    check_config(read_saved_yaml(hydra_dir / f"{name}.yaml"), str(hydra_dir / f"{name}.yaml"), args)
    groups = sorted(p.parent for p in hydra_dir.glob("*/**/*.yaml"))
    if groups:
        raise UntrustedError(f"{hydra_dir} holds config files in {groups[0]}, which a run's saved config folder "
                             f"never has: Hydra would take config options from there. Remove them.")


def check_saved_run(hydra_dir: Path, args: list[str] = ()) -> None:
    """A run's `.hydra` folder whose `hydra.yaml` gives the overrides a rerun composes from conf/ again."""
    read_saved_yaml(hydra_dir / "config.yaml")  # compared with what the overrides compose: data only, too
    saved = read_saved_yaml(hydra_dir / "hydra.yaml")
    hydra = (saved.get("hydra") if isinstance(saved, dict) else None) or {}
    check_overrides(list((hydra.get("overrides") or {}).get("task") or []), str(hydra_dir / "hydra.yaml"), args)
    _config_dirs_outside(hydra, hydra_dir.parent, hydra_dir / "hydra.yaml")


def check_sweep(sweep: Path, args: list[str] = ()) -> None:
    """A sweep folder about to be resumed from its multirun.yaml: its saved overrides, and its primary config
    folder where that is a saved run's (a sweep of a rerun) or lies inside the sweep folder."""
    path = sweep / "multirun.yaml"
    saved = read_saved_yaml(path)
    hydra = saved.get("hydra") if isinstance(saved, dict) else None
    if not isinstance(hydra, dict):
        raise UntrustedError(f"{path} has no hydra: node: it is not the record of a sweep. Pass a sweep folder.")
    overrides = hydra.get("overrides") or {}
    check_overrides([*(overrides.get("hydra") or []), *(overrides.get("task") or [])], str(path), args)
    name = str((hydra.get("job") or {}).get("config_name", "config"))
    if not _inside(name) or "/" in name or "\\" in name:
        raise UntrustedError(f"{path}: its config name {name} lies outside its config folder. Pass a sweep "
                             f"folder task1 wrote.")
    for source in _sources(hydra):
        if source.get("provider") == "main" and source.get("schema") == "file":
            main = Path(str(source.get("path"))).resolve()
            if main != _conf() and ((main / "hydra.yaml").is_file() or main.is_relative_to(sweep.resolve())):
                check_saved_dir(main, name, args)
    _config_dirs_outside(hydra, sweep, path)


def _sources(hydra: dict) -> list[dict]:
    sources = (hydra.get("runtime") or {}).get("config_sources") or []
    return [s for s in sources if isinstance(s, dict)]


def _config_dirs_outside(hydra: dict, folder: Path, path: Path) -> None:
    """The config folders a run or sweep recorded (`--config-dir`, `hydra.searchpath`), which a rerun or a resumed
    sweep uses again, must be the user's own: one inside the shared folder itself would bring its own configs."""
    cwd = Path(str((hydra.get("runtime") or {}).get("cwd") or "."))
    for source in _sources(hydra):
        provider = str(source.get("provider"))
        if source.get("schema") == "file" and (provider == "command-line" or provider.startswith("hydra.searchpath")):
            where = (cwd / str(source.get("path"))).resolve()
            if where.is_relative_to(folder.resolve()):
                raise UntrustedError(f"{path}: it records the config folder {where}, inside the folder itself: "
                                     f"configs shipped with a run are data, not code. Copy the ones you trust to a "
                                     f"folder of your own, and train anew with --config-dir <folder>.")
