"""Packed runs: the jobs of a sweep that differ only in packable values (seed, the optimizer's and scheduler's
values, the initialisation) trained as one process, each writing its own job folder (DESIGN.md rule 21)."""
