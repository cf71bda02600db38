"""The command line: one way to report a mistake, and the argument rewriting that turns a run folder into a run.

Every command reports a `Task1Error` the same way: one logged line, exit status 1. `rerun` and `resume` both
start from what a run saved (`<run>/.hydra/config.yaml`, the composed config with its interpolations), never from
today's `conf/`, so they train exactly what the run trained.
"""

import contextlib
import functools
import importlib.resources
import json
import logging
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, NoReturn

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from task1 import Task1Error, error_line
from task1.core import trust
from task1.core.runs import check_writable, task1_command
from task1.io import FolderInUseError, dotted, hold, override_key


def _conf() -> Path:
    """The config tree: the package task1.conf (conf/ of the checkout in an editable install, task1/conf/ in a
    wheel), or, where this checkout's task1 is imported without being installed, its conf/ beside it."""
    try:
        return Path(str(importlib.resources.files("task1.conf")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "conf"


CONF = _conf()
CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def fail(error: Task1Error) -> NoReturn:
    """Log `error` as its message alone and exit with status 1."""
    if not logging.getLogger().handlers:  # before Hydra or argparse set up logging
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("task1").error("%s", error)
    sys.exit(1)


def echo(text: str) -> None:
    """Print `text`; a reader that stops early (`task1 train --help | head`) ends it quietly, as Unix tools do."""
    try:
        print(text, flush=True)
    except BrokenPipeError:  # Python's own advice: stdout to /dev/null, so that its flush at exit fails no more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def answer_help(text, args: list[str] | None = None) -> None:
    """With `--help` (or `-h`) among the arguments (`args`, else the command line's), print `text` (a string, or a
    function that makes it) and exit with status 0: a command's help costs no import of what the command needs."""
    if any(a in ("--help", "-h") for a in (sys.argv[1:] if args is None else args)):
        echo((text() if callable(text) else text).strip())
        sys.exit(0)


def config_help(doc: str, name: str) -> str:
    """A tool's help: its docstring, then its config file (conf/<name>.yaml, whose comments say each field)."""
    fields = (CONF / f"{name}.yaml").read_text()
    return f"{doc.strip()}\n\nIts fields (conf/{name}.yaml), key=value; the training config's groups too:\n{fields}"


def exit_on_error(entry):
    """Wrap an entry point so that a Task1Error is logged as its message alone and the process exits with 1."""

    @functools.wraps(entry)
    def wrapper(*args, **kwargs):
        try:
            return entry(*args, **kwargs)
        except Task1Error as e:
            fail(e)

    return wrapper


class WritableFolder(Callback):
    """Hydra callback: a run (or sweep) folder that cannot be made or written ends the command in one line that
    names it and why, instead of Hydra's traceback from making it (conf/hydra/default.yaml registers it)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")
        self._holding = self._hold(Path(str(OmegaConf.select(config, "hydra.run.dir"))))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra has written .hydra/ and opened train.log: the run, or a sweep's job (held since its folder was
        # resolved: task1.sweeps.folders), takes the folder over (task1.train holds it)
        from task1.sweeps.folders import let_go

        if getattr(self, "_holding", None) is not None:
            self._holding.close()
        let_go(Path(str(config.hydra.runtime.output_dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")  # the jobs' folders are made inside it, one by one

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        # resolving the folder here fixes ${now:} (Hydra caches it in `config`): the folder checked is the one used
        folder = Path(str(OmegaConf.select(config, key)))
        try:
            check_writable(folder)
        except OSError as e:
            raw = OmegaConf.to_container(OmegaConf.select(config, key.rpartition(".")[0]), resolve=False)["dir"]
            if "${paths.output_dir}" in str(raw):  # the default folder: what the user chose is paths.output_dir
                fail(Task1Error(f"paths.output_dir={config.paths.output_dir}: the folder {folder} cannot be made or "
                                f"written ({error_line(e)}). Choose another with paths.output_dir=<folder> (or "
                                f"TASK1_OUTPUT_DIR=<folder>), or free space / fix the permissions."))
            fail(Task1Error(f"{key}={folder}: this folder cannot be made or written ({error_line(e)}). Choose "
                                f"another with {key}=<folder>, or free space / fix the permissions."))

    @staticmethod
    def _hold(folder: Path) -> contextlib.ExitStack | None:
        """The run's folder held while Hydra writes .hydra/ and train.log into it; one that another process holds
        (a run training in it) is refused before anything is written. A rank other than 0 follows its rank 0,
        which holds the folder: it holds nothing."""
        from task1.sweeps.folders import other_rank

        if other_rank():
            return None
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(hold(folder))
        except FolderInUseError as e:
            fail(e)
        return stack


def saved_config_dir(run: str | Path, how: str = "") -> Path:
    """The `.hydra` folder of a run folder (or that folder itself), checked to hold a saved config."""
    run = Path(run).resolve()
    hydra_dir = run if run.name == ".hydra" else run / ".hydra"
    if not (hydra_dir / "config.yaml").is_file():
        raise Task1Error(f"{how}{run} is not a run folder: {hydra_dir / 'config.yaml'} does not exist. Pass the "
                         f"folder of a run, e.g. outputs/runs/<date>_<time>_<microseconds>.")
    return hydra_dir


def paths(overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """conf/paths/default.yaml resolved (the environment read), with the `paths.*` among `overrides` applied: for
    the tools that compose no config."""
    given = [o.lstrip("+") for o in overrides if override_key(o).startswith("paths.")]
    node = OmegaConf.merge({"paths": OmegaConf.load(CONF / "paths" / "default.yaml")}, OmegaConf.from_dotlist(given))
    return OmegaConf.to_container(node, resolve=True)["paths"]


def _saved_run(hydra_dir: Path, rest: list[str]) -> list[str]:
    """Arguments that make Hydra compose the run's saved config, then `rest`."""
    return ["--config-path", str(hydra_dir), "--config-name", "config", *rest]


def config_dir_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """`args` split into the user's extra config folders (`--config-dir X`, `-cd X`, `--config-dir=X`, an override
    of `hydra.searchpath`) and the rest: Hydra's parser takes a flag with a value only before the overrides."""
    flags, rest, args = [], [], list(args)
    while args:
        arg = args.pop(0)
        if arg in CONFIG_DIR_FLAGS and args:
            flags += [arg, args.pop(0)]
        elif arg.startswith(tuple(f"{f}=" for f in CONFIG_DIR_FLAGS)) or override_key(arg) == "hydra.searchpath":
            flags.append(arg)
        else:
            rest.append(arg)
    return flags, rest


def recorded_config_dirs(saved_hydra: DictConfig, run: Path) -> list[str]:
    """The config folders besides conf/ that a run (or sweep) was composed with (`--config-dir`,
    `hydra.searchpath`), as its hydra.yaml (multirun.yaml) records them, as one `hydra.searchpath=[...]` override
    (none when there were none).

    A recorded folder is data from the run folder, and reused only where it exists on this machine (a folder on
    the user's own disk, as conf/ is); one that does not is named in one line, with the flag that replaces it.
    """
    entries = []
    for source in saved_hydra.runtime.config_sources:
        if source.provider != "command-line" and not source.provider.startswith("hydra.searchpath"):
            continue
        if source.schema != "file":  # pkg://: an installed package, as importable here as anywhere
            entries.append(f"{source.schema}://{source.path}")
            continue
        path = Path(saved_hydra.runtime.cwd) / source.path  # relative to where that command ran
        if not path.is_dir():
            how = "--config-dir" if source.provider == "command-line" else "hydra.searchpath"
            raise Task1Error(f"{run} was composed with the config folder {path} ({how}), which does not exist "
                             f"here. Pass the folder that holds those configs again: --config-dir <folder> "
                             f"(config_dir= in Python).")
        entries.append(f"file://{path.resolve()}")
    return searchpath_override(entries)


def searchpath_override(entries: list[str]) -> list[str]:
    """`hydra.searchpath=['file:///a','pkg://b']` (quoted: a folder's name may hold a comma), or none."""
    quoted = ",".join("'" + e.replace("\\", "\\\\").replace("'", "\\'") + "'" for e in entries)
    return [f"hydra.searchpath=[{quoted}]"] if entries else []


def group_overrides(args: list[str]) -> list[str]:
    """The arguments that choose an option of a config group of conf/ (`model=mlp`, `logger=[csv,mlflow]`)."""
    return [a for a in args if "=" in a and not a.startswith("-") and "/" not in override_key(a) and override_key(a)
            and (CONF / override_key(a)).is_dir()]


def _conf_overrides(name: str, prefix: str, given: set[str]) -> list[str]:
    """A file of conf/ as `++<prefix>.key=value` overrides, interpolations kept (`${now:}` resolves at the start),
    less the keys `given` on the command line."""
    leaves = dotted(OmegaConf.to_container(OmegaConf.load(CONF / name), resolve=False), prefix)
    return [f"++{k}={json.dumps(v) if v is None or isinstance(v, bool) else v}" for k, v in leaves.items()
            if k not in given]


def _with_saved_defaults(hydra_dir: Path, args: list[str]) -> list[str]:
    """`args`, plus what a saved config (it has no defaults list) lacks: conf/hydra/default.yaml's settings (run
    and sweep folders, the sweep report callback), and for a run saved before `paths` existed, that node.

    An older run's `paths.*` overrides become additions (`++`), and its `paths.data_dir=` points its data there
    too (it recorded `data.root` alone). No key is given twice, so the overrides keep their place among `args`.
    """
    given = {override_key(a) for a in args if "=" in a and not a.startswith("-")}
    extra = _conf_overrides("hydra/default.yaml", "hydra", given)
    saved = OmegaConf.load(hydra_dir / "config.yaml")
    if "paths" in saved:
        return [*args, *extra]
    args = ["++" + a.lstrip("+") if override_key(a).startswith("paths.") and not a.startswith(("-", "~")) else a
            for a in args]
    extra += _conf_overrides("paths/default.yaml", "paths", given)
    if "paths.data_dir" in given and "data.root" not in given and "root" in saved.get("data", {}):
        extra.append("data.root=${paths.data_dir}")
    return [*args, *extra]


def rerun_argv(argv: list[str]) -> list[str]:
    """Rewrite `--config-dir <run>/.hydra` into `--config-path`, and give the rerun a fresh run folder.

    Hydra searches `--config-dir` after conf/, so conf/config.yaml would shadow the saved config.yaml and the
    "rerun" would silently train the default model. Other uses of `--config-dir` pass through untouched.
    """
    args = list(argv)
    for i, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if name in CONFIG_DIR_FLAGS and (value or i + 1 < len(args)):
            path = Path(value or args[i + 1])
            if (path / "config.yaml").is_file() and (path / "hydra.yaml").is_file():  # a saved run, not conf/
                trust.check_saved_dir(path, args=args)  # data, not code: what it would build is checked first
                args[i:i + (1 if value else 2)] = ["--config-path", str(path.resolve())]
                return _with_saved_defaults(path, args)
        if name in ("--config-path", "-cp") and (value or i + 1 < len(args)):
            path = Path(value or args[i + 1])
            if (path / "hydra.yaml").is_file():  # a saved run's folder given as Hydra's own: data all the same
                trust.check_saved_dir(path, _flag(args, ("--config-name", "-cn")) or "config", args=args)
    return args


def _flag(args: list[str], names: tuple[str, ...]) -> str | None:
    """The value of the last of the flags `names` among `args` (`--flag value` or `--flag=value`)."""
    found = None
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in names:
            found = value if eq else (args[i + 1] if i + 1 < len(args) else None)
    return found


def resume_argv(argv: list[str]) -> list[str]:
    """`resume=<run folder>` -> the run's saved config, then the other arguments, writing into that folder
    (`resume=<sweep folder>`: see `resume_sweep_argv`).

    Hydra then composes the very config the run started with, whatever `conf/` holds today, and keeps `.hydra/`
    of the first start as it is (`hydra.output_subdir=null`); the log goes on in its train.log. Which of the
    other overrides may change a resumed run is checked later (`task1.core.runs.check_resume`).
    """
    given = [a for a in argv[1:] if a.startswith("resume=")]
    if not given:
        return argv
    run = Path(given[-1].split("=", 1)[1]).resolve()
    rest = [a for a in argv[1:] if not a.startswith("resume=")]
    if (run / "multirun.yaml").is_file():
        return resume_sweep_argv(argv[0], run, rest)
    hydra_dir = saved_config_dir(run, how="resume=")
    trust.check_saved_dir(hydra_dir, args=rest)
    groups = group_overrides(rest)
    if groups:
        raise Task1Error(f"resume={run}: {' '.join(groups)} would choose another config option, and a resumed run "
                         f"goes on as it started. Train a new run from it instead: task1 rerun {run} "
                         f"{' '.join(groups)}")
    own = [f"resume={run}", f"hydra.run.dir={run}", "hydra.output_subdir=null"]
    if rest[:4] == _saved_run(hydra_dir, []):  # Lightning's DDP relaunch: this process's arguments, rewritten
        rest = [a for a in rest[4:] if a not in own]
    return [argv[0], *_with_saved_defaults(hydra_dir, [*_saved_run(hydra_dir, rest), *own])]


def resume_sweep_argv(argv0: str, sweep: Path, rest: list[str]) -> list[str]:
    """`resume=<sweep folder>`: the sweep's own command again (its multirun.yaml), in that folder.

    The other arguments replace the sweep's overrides of the same keys (`optimizer.lr=0.1,0.3,1` adds a value to
    a swept list); jobs are matched to their folders by their overrides (task1/sweeps/folders.py), so what
    ended is reused and what was interrupted resumes.
    """
    trust.check_sweep(sweep, rest)  # its saved overrides and config: data, not code
    saved = OmegaConf.load(sweep / "multirun.yaml").hydra
    flags, rest = config_dir_flags([a for a in rest if a not in ("-m", "--multirun")])
    flags = flags or recorded_config_dirs(saved, sweep)  # the sweep's own config folders, made absolute
    given = {override_key(a) for a in rest if "=" in a} | {"hydra.mode", "hydra.sweep.dir", "hydra.searchpath"}
    main = [s.path for s in saved.runtime.config_sources if s.provider == "main" and s.schema == "file"]
    config = []
    if main and (Path(main[0]) != CONF or saved.job.config_name != "config"):  # e.g. a rerun's saved config
        config = ["--config-path", main[0], "--config-name", saved.job.config_name]
    recorded = OmegaConf.to_container(saved.overrides, resolve=False)  # as typed: `${optimizer.lr}` stays one
    kept = [o for o in [*recorded["hydra"], *recorded["task"]] if override_key(o) not in given]
    return [argv0, "--multirun", *config, *flags, *kept, *rest, f"hydra.sweep.dir={sweep}"]


def train_argv(argv: list[str]) -> list[str]:
    """`python -m task1.train`'s arguments with a saved run's folder (rerun, resume) turned into its config;
    `trust=` taken out (task1.core.trust)."""
    return resume_argv(rerun_argv(trust.take_trust(argv)))


def rerun_main_argv(argv: list[str]) -> list[str]:
    """`task1 rerun <run folder> [overrides]` as the arguments of `task1.train`: the run's saved config, or, when
    the overrides choose a config option (`model=mlp`), the run's choices and overrides composed from conf/."""
    if len(argv) < 2 or argv[1].startswith("-"):
        print("usage: task1 rerun <run folder> [overrides]", file=sys.stderr)
        sys.exit(2)
    hydra_dir = saved_config_dir(argv[1])
    flags, rest = config_dir_flags(trust.take_trust(argv[2:]))
    if group_overrides(rest):  # composed afresh: with the run's own config folders, unless given new ones
        trust.check_saved_run(hydra_dir, rest)  # its overrides: data, not code
        dirs = flags or recorded_config_dirs(OmegaConf.load(hydra_dir / "hydra.yaml").hydra, hydra_dir.parent)
        recomposed = _recomposed(hydra_dir, rest)
        check_recomposes(hydra_dir, dirs, rest)
        return [argv[0], *dirs, *recomposed]
    return rerun_argv([argv[0], "--config-dir", str(hydra_dir), "--config-name", "config", *flags, *rest])


def _recomposed(hydra_dir: Path, args: list[str]) -> list[str]:
    """The overrides that compose a run afresh from today's conf/ with `args` on top: the run's own overrides
    (`.hydra/overrides.yaml`, less those `args` replace, and less the fields of a group `args` chooses again:
    `model=softmax` drops an MLP run's `model.num_hiddens=32`), then `args`. A saved config has no config groups left,
    so a run composed from one (a rerun) or from another config tree cannot choose another option this way."""
    saved = OmegaConf.load(hydra_dir / "hydra.yaml").hydra
    main = [s.path for s in saved.runtime.config_sources if s.provider == "main" and s.schema == "file"]
    if main != [str(CONF)] or saved.job.config_name != "config":
        raise Task1Error(f"{hydra_dir.parent} was not composed from task1's config tree {CONF} (its config came "
                         f"from {main[0] if main else 'elsewhere'}), so it has no config options to change: "
                         f"rerun it without {' '.join(group_overrides(args))}, or start a new run with "
                         f"python -m task1.train {' '.join(args)}")
    given = {override_key(a) for a in args}
    chosen = tuple(f"{override_key(a)}." for a in group_overrides(args))  # an option chosen anew brings its fields
    kept = (o for o in OmegaConf.to_container(saved.overrides.task, resolve=False)
            if override_key(o) not in given and not override_key(o).startswith(chosen))
    return [*kept, *args]


def compose_conf(overrides: list[str], primary: Path = CONF, config_name: str = "config",
                 hydra_node: bool = False) -> DictConfig:
    """`config_name` of the config folder `primary` composed with `overrides`, as `python -m task1.train` would
    (with its `hydra` node where `hydra_node`); Hydra's own state, a caller's initialize() too, is left as found.
    Hydra's mistakes propagate as Hydra raised them."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()  # a notebook may be inside a Hydra initialize() of its own
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(primary), job_name="train", version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra_node)
    finally:
        restore_gh_from_backup(backup)


def _as_override(key: str, value: Any) -> str:
    """`key=value` as Hydra's override grammar reads it back (a string that would read as another type, or holds
    other characters, quoted), quoted for a shell where it needs to be."""
    text = json.dumps(value)
    if isinstance(value, str):
        plain = re.fullmatch(r"[A-Za-z_/][\w./:-]*", value) and value.lower() not in ("true", "false", "null", "none")
        text = value if plain else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return shlex.quote(f"{key}={text}")


def check_recomposes(hydra_dir: Path, dirs: list[str], args: list[str]) -> None:
    """Refuse a rerun that composes the run afresh (a config option chosen anew) where the run's recorded
    overrides no longer compose its saved config: a value set in Python (`cfg.optimizer.lr = 0.2` before
    `api.train(cfg)`), or conf/ edited since. Everything the rerun's `args` leave alone must be as the run had it;
    the refusal names the overrides that make it so."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    flagged = [f"file://{Path(d.partition('=')[2] or d).resolve()}" for d in dirs if not d.startswith("hydra.")
               and d not in CONFIG_DIR_FLAGS]  # --config-dir X, as an override (compose takes no flags)
    overrides = [d for d in dirs if d.startswith("hydra.")] + searchpath_override(flagged)
    run, groups = hydra_dir.parent, " ".join(group_overrides(args))
    recorded = OmegaConf.to_container(OmegaConf.load(hydra_dir / "hydra.yaml").hydra.overrides.task, resolve=False)
    try:
        now = dotted(OmegaConf.to_container(compose_conf([*overrides, *recorded]), resolve=False))
    except (HydraException, OmegaConfBaseException) as e:
        raise Task1Error(f"{run}: its recorded overrides no longer compose ({error_line(e)}), so it cannot be "
                         f"composed afresh with {groups}: rerun it without {groups}.") from None
    then = dotted(OmegaConf.to_container(OmegaConf.load(hydra_dir / "config.yaml"), resolve=False))
    given = tuple(override_key(a) for a in args if "=" in a)
    # a key the run has not (added to conf/ since) is left to its default: the run had none
    differ = [k for k in sorted(then) if now.get(k, "<absent>") != then[k]
              and not any(k == g or k.startswith(g + ".") for g in given)]
    if not differ:
        return
    shown = "; ".join(f"{k}: {then[k]} in the run, {now.get(k, '<absent>')} composed" for k in differ[:4]) + (
        f"; and {len(differ) - 4} more" if len(differ) > 4 else "")
    fix = [_as_override(k if k in now else f"+{k}", then[k]) for k in differ]
    raise Task1Error(f"{run}: its saved config is not what its recorded overrides compose today ({shown}: set in "
                     f"Python, or conf/ changed since), so choosing {groups} anew would change those too. Give them: "
                     f"{task1_command()} rerun {run} {' '.join(args)} {' '.join(fix)}; or rerun it without {groups}.")


def train_help() -> str:
    """`python -m task1.train --help`: the config groups and their options, read from conf/ (Hydra's own help
    composes every option of every group, about a second)."""
    import yaml

    text = (CONF / "config.yaml").read_text()
    defaults = {}
    for entry in yaml.safe_load(text)["defaults"]:
        if isinstance(entry, dict):
            (group, option), = entry.items()
            defaults[group.removeprefix("optional ").removeprefix("override /")] = option
    groups = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__"))
    lines = ["usage: python -m task1.train [group=option ...] [key=value ...]     (or: task1 train ...)",
             "       python -m task1.train -m key=a,b ...                         a sweep: one job per combination",
             "       python -m task1.train --cfg job [overrides]                  print the config a run would use",
             "       python -m task1.train resume=<run folder>                    go on with a stopped run",
             "       python -m task1.train --hydra-help                           Hydra's own flags",
             "", "Config groups (conf/<group>/<option>.yaml; * the default):"]
    for group in groups:
        options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        shown = [f"{o}*" if o == defaults.get(group) else o for o in options]
        lines.append(f"  {group + ':':<16}{', '.join(shown)}")
    fields = text[text.index("\n\n") + 2:] if "\n\n" in text else ""
    lines += ["", "Fields (conf/config.yaml; a group's fields: group.field=value):", *
              (f"  {line}" for line in fields.strip().splitlines())]
    return "\n".join(lines)
