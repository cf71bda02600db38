"""The chapter-3 models and losses written by hand (d2l's "implementations from scratch").

Same names and signatures as `task1.models.nets`; `model.impl=scratch` picks these. Parameters are
nn.Parameter so that optimizers, state_dict and checkpoints see them.
"""

import torch
from torch import nn

from task1.checks import BiasInit, InitStd, PositiveInt
from task1.models.init import init_linear_


def _params(num_inputs: int, num_outputs: int, init_std: float | None, bias_init: str):
    W = nn.Parameter(torch.empty(num_inputs, num_outputs))  # d2l's layout: X @ W, not nn.Linear's W.T
    b = nn.Parameter(torch.empty(num_outputs))
    init_linear_(W, b, num_inputs, init_std, bias_init)
    return W, b


def relu(X: torch.Tensor) -> torch.Tensor:
    return torch.maximum(X, torch.zeros_like(X))


def logsumexp(X: torch.Tensor) -> torch.Tensor:
    """log(sum(exp(X), dim=1)), shifted by the row max so exp never overflows."""
    c = X.max(dim=1, keepdim=True).values.detach()
    return (X - c).exp().sum(dim=1).log() + c.squeeze(1)


def softmax(X: torch.Tensor) -> torch.Tensor:
    """Row-wise softmax; subtracting the row max changes nothing mathematically but avoids exp overflow."""
    X_exp = (X - X.max(dim=1, keepdim=True).values).exp()
    return X_exp / X_exp.sum(dim=1, keepdim=True)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction={reduction!r}: expected mean, sum or none")


def cross_entropy(y_hat: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """-log softmax(y_hat)[y] from logits, as logsumexp(y_hat) - y_hat[y]: finite even for logits of +-100."""
    picked = y_hat.gather(1, y.unsqueeze(1)).squeeze(1)  # (n, q) -> (n,)
    return _reduce(logsumexp(y_hat) - picked, reduction)


def squared_loss(y_hat: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The book's (y_hat - y)^2 / 2 per example (d2l 3.2)."""
    return _reduce(((y_hat - y.reshape(y_hat.shape)) ** 2 / 2).reshape(-1), reduction)


class LinearRegression(nn.Module):
    """y_hat = X w + b (d2l 3.2)."""

    def __init__(self, num_inputs: PositiveInt = 2, init_std: InitStd = 0.01, bias_init: BiasInit = "zeros"):
        super().__init__()
        self.w, self.b = _params(num_inputs, 1, init_std, bias_init)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return X @ self.w + self.b  # (n, num_inputs) -> (n, 1)

    def get_w_b(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.w.detach().reshape(-1), self.b.detach()


class SoftmaxRegression(nn.Module):
    """Logits X W + b on flattened images (d2l 3.6); `softmax` turns them into probabilities."""

    def __init__(self, num_inputs: PositiveInt = 784, num_outputs: PositiveInt = 10, init_std: InitStd = 0.01,
                 bias_init: BiasInit = "zeros"):
        super().__init__()
        self.num_inputs = num_inputs
        self.W, self.b = _params(num_inputs, num_outputs, init_std, bias_init)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return X.reshape(-1, self.num_inputs) @ self.W + self.b  # (n, 1, 28, 28) -> (n, num_outputs)


class MLP(nn.Module):
    """One hidden ReLU layer (d2l 3.9)."""

    def __init__(self, num_inputs: PositiveInt = 784, num_hiddens: PositiveInt = 256, num_outputs: PositiveInt = 10,
                 init_std: InitStd = 0.01, bias_init: BiasInit = "zeros"):
        super().__init__()
        self.num_inputs = num_inputs
        self.W1, self.b1 = _params(num_inputs, num_hiddens, init_std, bias_init)
        self.W2, self.b2 = _params(num_hiddens, num_outputs, init_std, bias_init)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        H = relu(X.reshape(-1, self.num_inputs) @ self.W1 + self.b1)  # (n, num_hiddens)
        return H @ self.W2 + self.b2  # (n, num_outputs)
