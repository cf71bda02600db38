"""An own package that extends task1 without touching it: a model, an optimizer, a scheduler, a callback, a logger
and a data set (docs/extending.md). Put the folder that holds `mypkg/` on PYTHONPATH and pass the YAMLs of
examples/conf/ with `--config-dir`."""
