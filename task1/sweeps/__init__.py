"""What multiruns need: the sweep report, each job's share of the cores, and the Optuna search (its sweeper
and a job's trial)."""
