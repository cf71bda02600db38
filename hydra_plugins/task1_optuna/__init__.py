"""task1's Optuna sweeper, where Hydra looks for plugins (a Sweeper must live in the hydra_plugins package)."""
