"""Run a finished run again from its folder: `task1 rerun <run folder> [overrides]`.

The run's `.hydra/config.yaml` (the full config, interpolations kept) becomes the primary config, so the rerun
trains exactly what the run trained, in a new run folder; overrides such as `trainer.max_epochs=20` still apply
on top.

A run folder is data: the classes its saved config names must be task1's, torch's optimizers and schedulers,
Lightning's callbacks, loggers and plugins, or under a module prefix you trust (`trust=mypkg`, or
TASK1_TRUST=mypkg, for a run you made with classes of your own); anything else is refused before it is built
(docs/errors.md, "What task1 trusts").
"""

import sys

from task1 import cli, train


@cli.exit_on_error
def main() -> None:
    cli.answer_help(__doc__)
    if sys.argv[1:2] != ["--config-path"]:  # (a DDP rank that Lightning started again has its arguments rewritten)
        sys.argv = cli.rerun_main_argv(sys.argv)
    train.run()


if __name__ == "__main__":
    main()
