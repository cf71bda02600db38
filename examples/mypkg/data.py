"""A data set of its own: Gaussian blobs, one per class, held in memory as task1's data sets are."""

import torch

from task1.data import InMemoryData


class Blobs(InMemoryData):
    """`num_classes` Gaussian clouds in `num_inputs` dimensions; `num_examples` to train on, `num_test` to test,
    `val_size` of the training examples held out to validate on (0: validate on the test split)."""

    def __init__(self, num_classes: int = 3, num_inputs: int = 2, num_examples: int = 600, num_test: int = 300,
                 val_size: int = 0, spread: float = 1.0, batch_size: int = 32, eval_batch_size: int = 10_000,
                 seed: int | None = 0, on_device: bool = True):
        super().__init__(batch_size, eval_batch_size, seed, on_device)
        self.labels = tuple(f"blob {k}" for k in range(num_classes))  # the class names, for the figures
        self.num_classes, self.num_inputs, self.spread = num_classes, num_inputs, spread
        self.num_examples, self.num_test, self.val_size = num_examples, num_test, val_size

    def load(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(0 if self.seed is None else self.seed)
        centres = 4 * torch.randn(self.num_classes, self.num_inputs, generator=g)
        n = self.num_examples + self.num_test
        y = torch.randint(0, self.num_classes, (n,), generator=g)  # (n,) int64 class indices
        X = centres[y] + self.spread * torch.randn(n, self.num_inputs, generator=g)  # (n, num_inputs) float32
        fit, test = slice(0, self.num_examples - self.val_size), slice(self.num_examples, n)
        held = slice(self.num_examples - self.val_size, self.num_examples)
        return {"train": (X[fit], y[fit]), "val": (X[held], y[held]) if self.val_size else (X[test], y[test]),
                "test": (X[test], y[test])}
