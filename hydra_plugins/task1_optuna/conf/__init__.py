"""The sweeper's configs (hydra/sweeper/optuna_search.yaml, hydra/sweeper/pruner/*.yaml), which the search path
plugin in ../searchpath.py offers to every Hydra app."""
