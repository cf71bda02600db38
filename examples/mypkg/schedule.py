"""A learning-rate schedule of its own: a function that takes the optimizer and returns a torch scheduler."""

import torch


def warmup(optimizer: torch.optim.Optimizer, warmup_steps: int = 10) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate grows linearly over the first `warmup_steps` scheduler steps, then stays."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps))
