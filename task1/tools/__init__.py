"""The commands built on the core: show, curves, lr_schedule, reproduce, rerun, eval; `task1 <command>`
(task1/__main__.py) runs each as `python -m task1.tools.<module>`."""
