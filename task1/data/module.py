"""The Lightning side of the data: a LightningDataModule that serves an in-memory data set's splits."""

import lightning as L
import torch

from task1.core.shortcuts import OnDeviceBatches
from task1.data.loader import InMemoryData, TensorLoader


class DataModule(OnDeviceBatches, L.LightningDataModule):
    """Serves `data`'s splits as TensorLoaders; with `data.on_device`, the tensors live on the training device."""

    def __init__(self, data: InMemoryData):
        super().__init__()
        self.data = data
        self.shuffle_seed: int | None = None

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.data.labels

    @property
    def splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return self.data.splits

    def prepare_data(self) -> None:
        self.data.prepare()

    def setup(self, stage: str | None = None) -> None:
        data = self.data
        if self.shuffle_seed is None:
            data.setup()
            # drawn once, after seeding, so a seeded run shuffles the same way every time; under data
            # parallelism every process takes the first one's, or unseeded processes would shard different
            # orders (overlapping examples, missing others)
            seed = data.seed if data.seed is not None else int(torch.randint(0, 2**31, ()))
            if self.trainer is not None and self.trainer.world_size > 1:
                seed = self.trainer.strategy.broadcast(seed, src=0)
            self.shuffle_seed = seed
        if data.on_device and self.trainer is not None:  # batches then need no host-to-device copy
            device = self.trainer.strategy.root_device
            data.splits = {k: (X.to(device), y.to(device)) for k, (X, y) in data.splits.items()}

    def _loader(self, split: str) -> TensorLoader:
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        train = split == "train"
        data = self.data
        return TensorLoader(*data.splits[split], data.batch_size if train else data.eval_batch_size,
                            shuffle=train, seed=self.shuffle_seed, rank=rank, world_size=world_size)

    def train_dataloader(self) -> TensorLoader:
        return self._loader("train")

    def val_dataloader(self) -> TensorLoader:
        return self._loader("val")

    def test_dataloader(self) -> TensorLoader:
        return self._loader("test")
