"""Hand-written optimizers and scheduler wiring."""

from task1.optim.sgd import SGD

__all__ = ["SGD"]
