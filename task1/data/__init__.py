"""Data: Fashion-MNIST, synthetic linear-regression data and the user's own arrays, all held in memory (no
Lightning here: the LightningDataModule that serves them to a Trainer is `task1.data.module.DataModule`)."""

from task1.data.arrays import ArraysData
from task1.data.fashion_mnist import LABELS, FashionMNIST, text_labels
from task1.data.loader import InMemoryData, TensorLoader
from task1.data.synthetic import SyntheticRegression, synthetic_data

__all__ = ["LABELS", "ArraysData", "FashionMNIST", "InMemoryData", "SyntheticRegression", "TensorLoader",
           "synthetic_data", "text_labels"]
