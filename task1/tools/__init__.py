"""The commands built on the core: show, curves, lr_schedule, reproduce, rerun, eval. `python -m task1.<tool>`
runs each (through the two-line module of that name in task1/), as does the console script `task1-<tool>`."""
