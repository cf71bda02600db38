"""A data set from the user's own file of arrays, no class to write: `data=arrays data.path=<file>`.

The file: an `.npz` (numpy.savez) or a `.pt` (torch.save of a dict, read back with weights_only=True) holding
`X_train`, `y_train`, `X_test`, `y_test` and optionally `labels` (the class names). X is (N, ...) numbers: a
feature vector (N, F), or images (N, H, W), (N, 1, H, W), (N, C, H, W); uint8 is scaled to [0, 1] as
Fashion-MNIST's pixels are. y is (N,) class indices 0..K-1 for classification, (N,) or (N, k) numbers for
regression. Every mistake in the file is a one-line Task1Error naming the key and the fix.
"""

import functools
import math
import os
from pathlib import Path

import numpy as np
import torch

from task1 import Task1Error
from task1.checks import NonNegativeInt, PositiveInt
from task1.data.loader import InMemoryData

KEYS = ("X_train", "y_train", "X_test", "y_test")
OPTIONAL = ("labels",)
GUIDE = "see docs/extending.md, 'Your own arrays'"


def _fail(path, message: str) -> None:
    raise Task1Error(f"data.path={path}: {message}")


def read(path: str | os.PathLike) -> dict:
    """The file's arrays as they are stored (numpy arrays or tensors; `labels` a list of str)."""
    p = Path(path)
    if not p.is_file():
        _fail(path, "no such file: give the path of an .npz or .pt file holding X_train, y_train, X_test, y_test")
    stat = p.stat()
    return dict(_read(str(p.resolve()), stat.st_mtime_ns, stat.st_size))  # a copy: nothing changes the cache


@functools.lru_cache(maxsize=2)  # the config check and the run read the same file once
def _read(path: str, mtime_ns: int, size: int) -> dict:
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as f:  # no pickles: a file is data, never code
                return {k: f[k] for k in f.files}
        except ValueError as e:  # an object array needs a pickle
            _fail(path, f"cannot be read without pickles ({e}): store plain numbers (and labels as strings)")
        except Exception as e:
            _fail(path, f"is not a readable .npz file ({type(e).__name__}: {e}): write it with numpy.savez")
    if path.endswith(".pt"):
        try:
            found = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as e:
            _fail(path, f"cannot be read with weights_only=True ({type(e).__name__}): save a dict of tensors "
                        f"(and labels as a list of strings) with torch.save")
        if not isinstance(found, dict):
            _fail(path, f"holds a {type(found).__name__}, not a dict: torch.save({{'X_train': ..., 'y_train': ..., "
                        f"'X_test': ..., 'y_test': ...}}, path)")
        return found
    _fail(path, "expected an .npz (numpy.savez) or a .pt (torch.save of a dict) file")


def _tensor(path, key: str, value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        _fail(path, f"{key} holds {array.dtype} values: store numbers (int or float arrays)")
    return torch.from_numpy(np.ascontiguousarray(array))


def check(arrays: dict, path, task: str) -> tuple[dict[str, torch.Tensor], tuple[str, ...] | None]:
    """The file's arrays checked and converted: X float32 (images (N, C, H, W)), y int64 (N,) for classification
    or float32 (N, k) for regression; and the class names (None for regression)."""
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        _fail(path, f"has no {missing[0]}: the file must hold {', '.join(KEYS)} (and optionally labels); {GUIDE}")
    unknown = sorted(set(arrays) - {*KEYS, *OPTIONAL})
    if unknown:
        _fail(path, f"holds {unknown[0]}, which task1 does not read: the keys are {', '.join(KEYS)} and labels "
                    f"(a validation split is held out of X_train with data.val_size)")
    t = {k: _tensor(path, k, arrays[k]) for k in KEYS}
    for split in ("train", "test"):
        X, y = t[f"X_{split}"], t[f"y_{split}"]
        if X.ndim < 2 or len(X) == 0:
            _fail(path, f"X_{split} has shape {tuple(X.shape)}: expected (N, features) or images (N, H, W), "
                        f"(N, C, H, W) with N >= 1")
        if len(X) != len(y):
            _fail(path, f"X_{split} holds {len(X)} examples but y_{split} {len(y)}: one label per example")
        if X.dtype == torch.bool or not torch.isfinite(X.float()).all():
            _fail(path, f"X_{split} holds NaN, inf or true/false values: store finite numbers")
    if t["X_test"].shape[1:] != t["X_train"].shape[1:]:
        _fail(path, f"X_train's examples have shape {tuple(t['X_train'].shape[1:])} but X_test's "
                    f"{tuple(t['X_test'].shape[1:])}: both splits need the same")
    for k in ("X_train", "X_test"):
        X = t[k]
        X = X.float().div_(255) if X.dtype == torch.uint8 else X.float()  # pixels as ToTensor scales them
        t[k] = X.unsqueeze(1) if X.ndim == 3 else X  # (N, H, W) -> (N, 1, H, W), as Fashion-MNIST's
    labels = arrays.get("labels")
    if task == "regression":
        for k in ("y_train", "y_test"):
            y = t[k].float()
            if y.ndim > 2 or not torch.isfinite(y).all():
                _fail(path, f"{k} has shape {tuple(t[k].shape)} or values that are not finite: a regression "
                            f"target is (N,) or (N, k) finite numbers")
            t[k] = y.reshape(len(y), -1)  # (N,) -> (N, 1)
        return t, None
    names = None if labels is None else tuple(str(n) for n in np.asarray(labels).reshape(-1).tolist())
    for k in ("y_train", "y_test"):
        y = t[k]
        if y.is_floating_point() or y.dtype == torch.bool:
            _fail(path, f"{k} holds {str(y.dtype).removeprefix('torch.')} values: classification needs class "
                        f"indices 0..K-1 as integers (y.astype('int64')); for a regression choose a regression "
                        f"model (model=linear, or model.task=regression)")
        if y.ndim != 1:
            _fail(path, f"{k} has shape {tuple(y.shape)}: classification needs one class index per example, (N,)")
        low, high = int(y.min()), int(y.max())
        if low < 0 or (names is not None and high >= len(names)):
            allowed = f"0..{len(names) - 1} (labels names {len(names)} classes)" if names else "0 or more"
            _fail(path, f"{k} holds class {low if low < 0 else high}: class indices must be {allowed}")
        t[k] = y.long()
    if names is None:
        names = tuple(str(k) for k in range(max(int(t["y_train"].max()), int(t["y_test"].max())) + 1))
    return t, names


def sizes(path: str | os.PathLike, task: str) -> dict[str, int]:
    """What the model must take and give for this file: num_inputs (numbers per example), num_outputs (classes,
    or the regression target's width), and num_examples (training examples, before a validation split)."""
    stat = Path(path).stat() if Path(path).is_file() else None
    return _sizes(str(path), task, stat and (stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=4)  # the config check asks twice
def _sizes(path: str, task: str, version: tuple | None) -> dict[str, int]:
    t, names = check(read(path), path, task)
    X = t["X_train"]
    return {"num_inputs": math.prod(X.shape[1:]), "num_examples": len(X),
            "num_outputs": len(names) if names is not None else t["y_train"].shape[1]}


def hold_out(X: torch.Tensor, y: torch.Tensor, val_size: int, split_seed: int) -> tuple[tuple, tuple]:
    """(train, val): `val_size` examples held out of (X, y) at random, the same ones for the same `split_seed`."""
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(split_seed))
    val, fit = perm[:val_size], perm[val_size:]
    return (X[fit], y[fit]), (X[val], y[val])


class ArraysData(InMemoryData):
    """The arrays of the user's file (module docstring), held in memory; `val_size` training examples held out
    with a seeded split (`split_seed`), or `val_size=0`: validate on the test split, as Fashion-MNIST does."""

    seed_draws_data = False  # the seed orders the training batches alone

    def __init__(self, path: str, task: str = "classification", batch_size: PositiveInt = 256,
                 val_size: NonNegativeInt = 0, eval_batch_size: PositiveInt = 10_000, split_seed: int = 0,
                 seed: int | None = None, on_device: bool = True):
        super().__init__(batch_size, eval_batch_size, seed, on_device)
        self.path, self.task, self.val_size, self.split_seed = path, task, val_size, split_seed

    @functools.cached_property
    def _checked(self) -> tuple[dict[str, torch.Tensor], tuple[str, ...] | None]:
        return check(read(self.path), self.path, self.task)

    @property
    def labels(self) -> tuple[str, ...] | None:
        """The class names (the file's `labels`, else "0", "1", ...): the figures need them before `setup`."""
        return self._checked[1]

    def load(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        t = self._checked[0]
        X, y = t["X_train"], t["y_train"]
        test = t["X_test"], t["y_test"]
        if not 0 <= self.val_size < len(X):
            raise Task1Error(f"data.val_size={self.val_size} but X_train of {self.path} has {len(X)} examples: "
                             f"choose 0 (validate on the test split) up to {len(X) - 1}.")
        if self.val_size == 0:
            return {"train": (X, y), "val": test, "test": test}
        train, val = hold_out(X, y, self.val_size, self.split_seed)
        return {"train": train, "val": val, "test": test}
