"""The chapter-3 models and losses with torch.nn (d2l's "concise implementations")."""

import torch
import torch.nn.functional as F
from torch import nn

from task1.checks import BiasInit, InitStd, PositiveInt
from task1.models.init import init_linear_


def _linear(num_inputs: int, num_outputs: int, init_std: float | None, bias_init: str) -> nn.Linear:
    layer = nn.Linear(num_inputs, num_outputs)
    init_linear_(layer.weight, layer.bias, num_inputs, init_std, bias_init)
    return layer


class LinearRegression(nn.Module):
    """y_hat = X w + b with nn.Linear (d2l 3.3)."""

    def __init__(self, num_inputs: PositiveInt = 2, init_std: InitStd = 0.01, bias_init: BiasInit = "zeros"):
        super().__init__()
        self.net = _linear(num_inputs, 1, init_std, bias_init)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X)  # (n, num_inputs) -> (n, 1)

    def get_w_b(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.weight.detach().reshape(-1), self.net.bias.detach()


class SoftmaxRegression(nn.Module):
    """Logits of a single linear layer on flattened images (d2l 3.7); the softmax lives in the loss."""

    def __init__(self, num_inputs: PositiveInt = 784, num_outputs: PositiveInt = 10, init_std: InitStd = 0.01,
                 bias_init: BiasInit = "zeros"):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), _linear(num_inputs, num_outputs, init_std, bias_init))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X)  # (n, 1, 28, 28) -> (n, num_outputs)


class MLP(nn.Module):
    """Flatten, Linear, ReLU, Linear (d2l 3.10)."""

    def __init__(self, num_inputs: PositiveInt = 784, num_hiddens: PositiveInt = 256, num_outputs: PositiveInt = 10,
                 init_std: InitStd = 0.01, bias_init: BiasInit = "zeros"):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            _linear(num_inputs, num_hiddens, init_std, bias_init),
            nn.ReLU(),
            _linear(num_hiddens, num_outputs, init_std, bias_init),
        )

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X)  # (n, 1, 28, 28) -> (n, num_outputs)


def cross_entropy(y_hat: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """nn.CrossEntropyLoss on logits."""
    return F.cross_entropy(y_hat, y, reduction=reduction)


def squared_loss(y_hat: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """nn.MSELoss: (y_hat - y)^2 without the book's 1/2 (d2l 3.3)."""
    return F.mse_loss(y_hat, y.reshape(y_hat.shape), reduction=reduction)
