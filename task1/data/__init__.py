"""Data modules: Fashion-MNIST and synthetic linear-regression data, both served from memory."""

from task1.data.fashion_mnist import LABELS, FashionMNIST, text_labels
from task1.data.loader import InMemoryDataModule, TensorLoader
from task1.data.synthetic import SyntheticRegression, synthetic_data

__all__ = ["LABELS", "FashionMNIST", "InMemoryDataModule", "SyntheticRegression", "TensorLoader",
           "synthetic_data", "text_labels"]
