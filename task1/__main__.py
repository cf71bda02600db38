"""`task1 <command> [arguments]` (or `python -m task1 <command> ...`): every command of task1 behind one name;
`task1 --help` lists them. Each command is a module run as `python -m <module>` would run it, so that what it
starts again (Lightning's DDP ranks) starts the same module. `python -m task1.train` stays the Hydra app."""

import difflib
import runpy
import sys

from task1 import cli, typed

COMMANDS = {  # name: (module, what it does)
    "train": ("task1.train", "train one model, or a sweep or a search with -m"),
    "rerun": ("task1.tools.rerun", "run a finished run again from its folder, with overrides"),
    "eval": ("task1.tools.eval", "score a run's checkpoint on the test or the validation split"),
    "reproduce": ("task1.tools.reproduce", "the book's reported runs over seeds, judged against the book"),
    "show": ("task1.tools.show", "the data: a grid of images with their text labels"),
    "curves": ("task1.tools.curves", "the learning curves of runs, overlaid"),
    "lr-schedule": ("task1.tools.lr_schedule", "the learning rate of every step of a configured run, before it runs"),
    "summarize": ("task1.sweeps.report", "rebuild a sweep's report: summary.csv, summary.md, summary.png"),
}


def usage() -> str:
    lines = ["usage: task1 <command> [arguments]      (task1 <command> --help: what it takes)", "", "commands:"]
    lines += [f"  {name:<13}{what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help", "help"):
        cli.echo(usage())
        sys.exit(0 if args else 2)
    name = args[0]
    if name not in COMMANDS:
        near = difflib.get_close_matches(name, COMMANDS, n=1)
        print(f"task1: there is no command {name!r}{f'; did you mean {near[0]}?' if near else '.'} The commands: "
              f"{', '.join(COMMANDS)} (task1 --help).", file=sys.stderr)
        sys.exit(2)
    typed(["task1", *args])
    sys.argv = [f"task1 {name}", *args[1:]]
    runpy.run_module(COMMANDS[name][0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
