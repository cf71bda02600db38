"""task1's Optuna sweeper, where Hydra looks for plugins (a Sweeper must live in the hydra_plugins package): the
sweeper (sweeper.py) and its configs (conf/), which searchpath.py adds to every Hydra app's search path, task1's
own included, so that `hydra/sweeper=optuna_search` and `hydra/sweeper/pruner=...` work in any app."""
