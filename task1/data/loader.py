"""Mini-batches as slices of tensors already in memory (nanoGPT's "prepare once, then index")."""

import torch


class TensorLoader:
    """Iterates (X, y) batches of in-memory tensors; a drop-in for a DataLoader without per-item work.

    Shuffling draws a fresh permutation each epoch from `seed + epoch`, so the order of any epoch can be
    recreated (a resumed run sees the batches an uninterrupted one would). Under data parallelism, each of
    `world_size` ranks takes every `world_size`-th example of that permutation: disjoint shards.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        if len(X) != len(y):
            raise ValueError(f"{len(X)} inputs but {len(y)} labels")
        self.X, self.y = X, y
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.batches_done, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # Lightning saves the state of a loader that has these two methods in its checkpoints, and restores it
    # before iterating: a run resumed mid-epoch goes on with the batches it had not trained yet.
    def state_dict(self) -> dict:
        # the seed too: an unseeded run drew its own, and a resumed one must skip batches of the same order
        return {"epoch": self.epoch, "batches_done": self.batches_done, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        epoch, done = state["epoch"], state["batches_done"]
        self.seed = state.get("seed", self.seed)  # (checkpoints before 2026-12 hold none)
        if done >= len(self):  # that epoch was finished: the next one starts at its first batch
            epoch, done = epoch + 1, 0
        self.epoch, self._skip = epoch, done

    # Lightning calls `dataloader.sampler.set_epoch(epoch)` before every epoch (its hook for DistributedSampler):
    # being our own sampler is how we hear of it. No batch_sampler: batches are slices, not lists of indices.
    batch_sampler = None

    @property
    def sampler(self) -> "TensorLoader":
        return self

    def _num_examples(self) -> int:
        n = len(self.X)
        if self.world_size == 1:
            return n
        if self.shuffle:  # training: equal shards, or ranks would disagree on the number of optimizer steps
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        return -(-self._num_examples() // self.batch_size)

    def __iter__(self):
        n, bs = self._num_examples(), self.batch_size
        start, self._skip = self._skip * bs, 0
        self.batches_done = start // bs
        if not self.shuffle and self.world_size == 1:
            batches = ((self.X[i:i + bs], self.y[i:i + bs]) for i in range(start, n, bs))  # views, no copy
        else:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + self.epoch)
                idx = torch.randperm(len(self.X), generator=g)
            else:
                idx = torch.arange(len(self.X))
            idx = idx[self.rank::self.world_size][:n].to(self.X.device)
            # index_select: the same gather as X[j], about twice as fast on the CPU
            batches = ((self.X.index_select(0, j), self.y.index_select(0, j))
                       for j in (idx[i:i + bs] for i in range(start, n, bs)))
        for batch in batches:
            # Lightning fetches no batch ahead from a loader that has a length: whenever it saves a checkpoint,
            # this is the number of batches trained in the epoch
            self.batches_done += 1
            yield batch


class InMemoryData:
    """A data set held in memory as (X, y) tensor pairs, one per split, and how to batch it.

    `setup()` fills `splits` once with `load()`; the Lightning side (`task1.data.module.DataModule`) serves it.
    """

    labels: tuple[str, ...] | None = None  # the class names, for classification data
    # whether `seed` draws the data itself (synthetic data) rather than only the order of the training batches:
    # jobs of different seeds share one data set in a packed run only where it does not (task1.pack.grouping)
    seed_draws_data = True

    def __init__(self, batch_size: int, eval_batch_size: int, seed: int | None, on_device: bool = True):
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.seed, self.on_device = seed, on_device
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare(self) -> None:
        """Make the files exist (download, unzip): once per machine, before `setup` in every process."""

    def load(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Return the "train", "val" and "test" splits as (X, y) pairs."""
        raise NotImplementedError

    def setup(self) -> None:
        if not self.splits:
            self.splits = self.load()
