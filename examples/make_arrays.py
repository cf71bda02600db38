"""Write an arrays file for `data=arrays`: `python examples/make_arrays.py blobs.npz` (docs/extending.md).

Three classes of 2-D points, each around a centre of its own; any program that can write numpy.savez (or
torch.save a dict) makes such a file from data of its own.
"""

import sys

import numpy as np


def blobs(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    centres = np.array([[0.0, 4.0], [4.0, 0.0], [-4.0, -4.0]])
    y = rng.integers(0, len(centres), n)  # (n,) int64 class indices
    return (centres[y] + rng.normal(size=(n, 2))).astype(np.float32), y  # (n, 2) float32


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    (X_train, y_train), (X_test, y_test) = blobs(600, rng), blobs(200, rng)
    np.savez(sys.argv[1], X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test,
             labels=np.array(["north", "east", "south-west"]))
