"""Packed runs: the jobs of a sweep that differ only in packable values (seed, the optimizer's and scheduler's
values, the initialisation) trained as one process, each writing its own job folder (DESIGN.md rule 21)."""

# checkpoints/<this> in a member's folder: its state after its latest epoch, from which a stopped pack goes on
# (task1.pack.member); the launcher reads it without importing torch
PACK_STATE = "pack_state.ckpt"
