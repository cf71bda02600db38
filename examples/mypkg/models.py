"""A model of its own: d2l 5.6's MLP with dropout, a plain nn.Module."""

import torch
from torch import nn


class DropoutMLP(nn.Module):
    """Two hidden ReLU layers, each followed by dropout (active in training only)."""

    def __init__(self, num_inputs: int, num_outputs: int, num_hiddens1: int = 256, num_hiddens2: int = 256,
                 dropout1: float = 0.5, dropout2: float = 0.5):
        super().__init__()
        self.num_inputs = num_inputs
        self.net = nn.Sequential(
            nn.Linear(num_inputs, num_hiddens1), nn.ReLU(), nn.Dropout(dropout1),
            nn.Linear(num_hiddens1, num_hiddens2), nn.ReLU(), nn.Dropout(dropout2),
            nn.Linear(num_hiddens2, num_outputs))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X.reshape(-1, self.num_inputs))  # (n, 1, 28, 28) -> (n, 784) -> (n, num_outputs)
