"""Fashion-MNIST, read and verified by torchvision, then kept in memory as one tensor per split."""

import contextlib
import gzip
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch

from task1 import Task1Error, error_line
from task1.checks import Folder, NonNegativeInt, PositiveInt
from task1.data.loader import InMemoryData
from task1.io import atomic_open, locked

log = logging.getLogger("task1")
LABELS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _md5(name: str) -> str:
    """torchvision's MD5 of a file it downloads ("train-images-idx3-ubyte.gz")."""
    from torchvision import datasets  # here, not at import: tools that read no data skip torchvision

    return dict(datasets.FashionMNIST.resources)[name]


def text_labels(labels) -> list[str]:
    """The text label of each class index (d2l's `get_fashion_mnist_labels`)."""
    return [LABELS[int(i)] for i in labels]


def _missing_message(raw: Path) -> str:
    names = ", ".join(f"{n}.gz" for n in FILES)
    return (f"Fashion-MNIST is not in {raw}/: expected the four files {names} (gzipped or not). Copy them there "
            f"(mkdir -p {raw} && cp <folder with the files>/*.gz {raw}/), set data.download=true on a machine "
            f"that can reach the internet, or set paths.data_dir=<folder> (or TASK1_DATA_DIR) to the folder that "
            f"holds FashionMNIST/raw/.")


def prepare_files(root: str | os.PathLike, download: bool) -> Path:
    """Make the four unzipped IDX files exist in root/FashionMNIST/raw; return that folder.

    Gzipped files are checked against torchvision's MD5s before they are unzipped, so a damaged copy is
    named instead of surfacing later as garbage.
    """
    from torchvision.datasets.utils import check_integrity

    raw = Path(root) / "FashionMNIST" / "raw"
    todo = [n for n in FILES if not (raw / n).is_file()]
    for name in todo:
        gz = raw / f"{name}.gz"
        if not gz.is_file():
            continue
        if not check_integrity(str(gz), _md5(gz.name)):
            raise Task1Error(f"{gz} is corrupt or truncated (its MD5 is not {_md5(gz.name)}): delete it and copy "
                             f"or download it again.")
        # atomic, through a temporary file of its own: an interrupted unzip never leaves a half file under the
        # real name, and jobs that unzip the same file at once never write into each other's
        with gzip.open(gz, "rb") as src, atomic_open(raw / name) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    if all((raw / n).is_file() for n in FILES):
        return raw
    if not download:
        raise Task1Error(_missing_message(raw))
    # one download at a time (jobs of a sweep start together on a fresh machine), into a folder of its own: the
    # files appear in raw/ whole and verified, or not at all; a job that waited finds them there
    lock = raw.parent / ".download.lock"
    made = [p for p in (lock, raw, *raw.parents) if not p.exists()]  # what a failed attempt takes back
    try:
        with locked(lock):
            if not all((raw / n).is_file() for n in FILES):
                _download(raw)
    except Task1Error:
        _remove_if_empty(made)
        raise
    return raw


def _remove_if_empty(made: list[Path]) -> None:
    """Remove the lock file and the folders a failed download made (innermost first), each only while it holds
    nothing: another job's download, or a file the user put there meanwhile, stays."""
    for path in made:
        with contextlib.suppress(OSError):
            if path.is_dir():
                path.rmdir()
            elif path.stat().st_size == 0:
                path.unlink()


def _download(raw: Path) -> None:
    from torchvision import datasets

    raw.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=raw.parent, prefix=".download-"))
    try:
        try:
            datasets.FashionMNIST(str(tmp), train=True, download=True)
        except Exception as e:  # offline, proxy, mirror down: one message, with what each mirror answered
            raise Task1Error(f"Downloading Fashion-MNIST failed ({error_line(e)}). {_missing_message(raw)}") from e
        for path in (tmp / "FashionMNIST" / "raw").iterdir():
            os.replace(path, raw / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_idx(path: Path, magic: int) -> int:
    """Check an IDX file's header and length against each other; return its number of examples."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(16 if magic == 2051 else 8)
    if len(header) < 8 or struct.unpack(">I", header[:4])[0] != magic:
        found = struct.unpack(">I", header[:4])[0] if len(header) >= 4 else "none"
        raise Task1Error(f"{path} is not an IDX {'image' if magic == 2051 else 'label'} file (magic number "
                         f"{found}, expected {magic}): replace it with the original Fashion-MNIST file.")
    n = struct.unpack(">I", header[4:8])[0]
    expected = 16 + n * 28 * 28 if magic == 2051 else 8 + n
    if magic == 2051 and (len(header) < 16 or struct.unpack(">II", header[8:16]) != (28, 28)):
        raise Task1Error(f"{path} does not hold 28x28 images: replace it with the original Fashion-MNIST file.")
    if size != expected:
        raise Task1Error(f"{path} is truncated or corrupt: its header announces {n} examples ({expected} bytes) "
                         f"but the file has {size} bytes. Delete it and copy or download it again.")
    return n


def train_size(root: str | os.PathLike) -> int:
    """The number of training examples, from the label file's header (60000 until the files are there)."""
    raw = Path(root) / "FashionMNIST" / "raw"
    name = "train-labels-idx1-ubyte"
    for path, opener in ((raw / name, open), (raw / f"{name}.gz", gzip.open)):
        try:
            with opener(path, "rb") as f:
                header = f.read(8)
        except (OSError, EOFError):
            continue
        if len(header) == 8 and struct.unpack(">I", header[:4])[0] == 2049:
            return struct.unpack(">I", header[4:])[0]
    return 60_000


# the last split of each kind read in this process, by the identity of its files: the next run of a sweep in
# this process (the basic launcher's, a joblib worker's) takes it as it is. Nothing changes a split in place.
_last_read: dict[bool, tuple[tuple, tuple[torch.Tensor, torch.Tensor]]] = {}


def _identity(*paths: Path) -> tuple:
    """Which files these are, and which version of them: a file written again is read again."""
    stats = [(p, p.stat()) for p in paths]
    return tuple((str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns) for p, st in stats)


def read_split(root: str | os.PathLike, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one split through torchvision as (X, y): X float32 in [0, 1], (n, 1, 28, 28); y int64, (n,).
    The same files read again in this process give the same tensors, unread (about 0.1 s a split)."""
    raw = Path(root) / "FashionMNIST" / "raw"
    prefix = "train" if train else "t10k"
    images, labels = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
    for path in (images, labels):
        if not path.is_file():
            raise Task1Error(_missing_message(raw))
    identity = _identity(images, labels)
    if train in _last_read and _last_read[train][0] == identity:
        return _last_read[train][1]
    split = _read_split(images, labels, root, train)
    _last_read[train] = (identity, split)
    return split


def _read_split(images: Path, labels: Path, root: str | os.PathLike, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's files checked, then read through torchvision."""
    n_images, n_labels = _check_idx(images, 2051), _check_idx(labels, 2049)
    if n_images != n_labels:
        raise Task1Error(f"{images} holds {n_images} images but {labels} holds {n_labels} labels: the two files "
                         f"do not belong together. Copy both again from the same release.")
    from torchvision import datasets

    ds = datasets.FashionMNIST(str(root), train=train, download=False)
    if ds.targets.numel() and not 0 <= int(ds.targets.min()) <= int(ds.targets.max()) <= 9:
        raise Task1Error(f"{labels} holds labels outside 0-9: replace it with the original Fashion-MNIST file.")
    # ToTensor's scaling (pixels / 255, no normalisation), done once for the whole split
    return ds.data.unsqueeze(1).float().div_(255), ds.targets.long()


class FashionMNIST(InMemoryData):
    """Fashion-MNIST: 60k training and 10k test images of ten kinds of clothing, 28x28 grey.

    `val_size` examples are held out of the 60k training images with a seeded split; `val_size=0`
    validates on the official test split, as the book does. The test split is never trained on.
    """

    labels = LABELS

    seed_draws_data = False  # the seed orders the training batches alone

    def __init__(self, root: Folder = "data", batch_size: PositiveInt = 256, val_size: NonNegativeInt = 0,
                 eval_batch_size: PositiveInt = 10_000, download: bool = True, split_seed: int = 0,
                 seed: int | None = None, on_device: bool = True):
        super().__init__(batch_size, eval_batch_size, seed, on_device)
        self.root, self.download, self.val_size, self.split_seed = root, download, val_size, split_seed

    def prepare(self) -> None:
        prepare_files(self.root, self.download)

    def load(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        self.prepare()  # cheap when done; setup() alone is enough outside a Trainer
        X, y = read_split(self.root, train=True)
        test = read_split(self.root, train=False)
        if not 0 <= self.val_size < len(X):
            raise Task1Error(f"data.val_size={self.val_size} but the training set has {len(X)} examples: "
                             f"choose 0 (validate on the test split) up to {len(X) - 1}.")
        if self.val_size == 0:
            log.info("data.val_size=0: validation is on the test split (as in the book), so best.ckpt and early "
                     "stopping choose on test examples. Hold out a validation split with data.val_size=5000.")
            return {"train": (X, y), "val": test, "test": test}
        perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(self.split_seed))
        val, fit = perm[:self.val_size], perm[self.val_size:]
        return {"train": (X[fit], y[fit]), "val": (X[val], y[val]), "test": test}
