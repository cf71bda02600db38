"""Models: `nets` (torch.nn) and `scratch` (hand-written twins), plus the LightningModule that trains them.

`model.impl=torch|scratch` picks a module by name in the config's `_target_`, so `torch` names `nets` here.
"""

from task1.models import nets, scratch
from task1.models.system import System

torch = nets

__all__ = ["System", "nets", "scratch", "torch"]
