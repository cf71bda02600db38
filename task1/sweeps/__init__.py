"""What multiruns need: the sweep report and each job's share of the cores."""
