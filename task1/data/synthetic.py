"""Synthetic linear-regression data (d2l 3.2's `synthetic_data`)."""

import torch

from task1.checks import NonNegative, NonNegativeInt, PositiveInt
from task1.data.loader import InMemoryData


def synthetic_data(w: torch.Tensor, b: float, num_examples: int, noise: float = 0.01,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """y = Xw + b + noise, X ~ N(0, 1), noise ~ N(0, noise^2)."""
    X = torch.normal(0, 1, (num_examples, len(w)), generator=generator)
    y = X @ w + b
    y += torch.normal(0, noise, y.shape, generator=generator)
    return X, y.reshape(-1, 1)  # (n, len(w)), (n, 1)


class SyntheticRegression(InMemoryData):
    """`num_examples` training pairs and `num_test` test pairs drawn from one noisy linear model.

    `val_size=0` validates on the whole training set, which is what the book reports after each epoch.
    """

    def __init__(self, w: list[float] = (2.0, -3.4), b: float = 4.2, noise: NonNegative = 0.01,
                 num_examples: PositiveInt = 1000, num_test: PositiveInt = 1000, batch_size: PositiveInt = 10,
                 val_size: NonNegativeInt = 0, eval_batch_size: PositiveInt = 10_000, seed: int | None = 0,
                 on_device: bool = True):
        super().__init__(batch_size, eval_batch_size, seed, on_device)
        self.true_w, self.true_b = [float(v) for v in w], float(b)
        self.noise, self.num_examples, self.num_test, self.val_size = noise, num_examples, num_test, val_size

    def load(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator()
        g.manual_seed(self.seed) if self.seed is not None else g.seed()
        X, y = synthetic_data(torch.tensor(self.true_w), self.true_b, self.num_examples + self.num_test, self.noise, g)
        n_fit, n = self.num_examples - self.val_size, self.num_examples
        train = X[:n_fit], y[:n_fit]
        return {"train": train, "val": (X[n_fit:n], y[n_fit:n]) if self.val_size else train,
                "test": (X[n:], y[n:])}
