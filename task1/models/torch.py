"""`model.impl=torch`: the config's `_target_: task1.models.${model.impl}.MLP` lands here; the nets are in `nets`."""

from task1.models.nets import MLP, LinearRegression, SoftmaxRegression, cross_entropy, squared_loss

__all__ = ["MLP", "LinearRegression", "SoftmaxRegression", "cross_entropy", "squared_loss"]
