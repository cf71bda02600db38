"""Shared fixtures: tiny Fashion-MNIST-shaped IDX files, and Hydra composition of the real config tree."""

import gzip
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from task1.cli import CONF  # the config tree, found as task1 finds it (importlib.resources)

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT / "data"
N_TRAIN, N_TEST = 600, 200


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, compress: bool = False) -> None:
    """Write `array` (uint8) as an IDX file, the format of the Fashion-MNIST files."""
    header = struct.pack(">I", magic if magic is not None else 0x0800 + array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake clothing: class k lights up row band k of the image, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 28, 28))
    for i, k in enumerate(labels):
        images[i, 2 + 2 * k:4 + 2 * k, :] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def make_fashion_mnist(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST, compress: bool = False) -> Path:
    """Generate the four Fashion-MNIST files under root/FashionMNIST/raw; return root."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = make_images(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress=compress)
    return root


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory) -> Path:
    """A data root holding small generated Fashion-MNIST files (read-only by convention: copy to modify)."""
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The real data set's root; skipped where it is absent, an error in CI (which always provides it)."""
    raw = REAL_DATA / "FashionMNIST" / "raw"
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if not all((raw / n).exists() or (raw / f"{n}.gz").exists() for n in names):
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide the real Fashion-MNIST in {raw} (scripts/setup.sh copies it)")
        pytest.skip(f"real Fashion-MNIST not in {raw}")
    return REAL_DATA


def gz_only_copy(real_root: Path, root: Path) -> tuple[Path, list[Path]]:
    """root/FashionMNIST/raw holding the real data set's .gz files only, as scripts/setup.sh leaves a fresh
    folder (generated files would fail torchvision's MD5s); return that folder and the originals."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    gz = sorted((real_root / "FashionMNIST" / "raw").glob("*.gz"))
    if len(gz) < 4:
        pytest.skip("the real files are unzipped only")
    for path in gz:
        shutil.copy(path, raw)
    return raw, gz


def compose_cfg(*overrides: str, config_name: str = "config"):
    """The config `python -m task1.train <overrides>` would run (conf/<config_name>.yaml: task1.show's, ...),
    composed by Hydra itself."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


@pytest.fixture
def make_cfg(tmp_path, fake_root):
    """compose_cfg on the generated data, on the CPU, writing into tmp_path; extra overrides win."""

    def make(*overrides: str):
        base = [f"output_dir={tmp_path}", "trainer=cpu", "trainer.max_epochs=1", "logger=none"]
        if "model=linear" not in overrides:  # linear regression brings its own synthetic data
            base += [f"data.root={fake_root}", "data.batch_size=64"]
        return compose_cfg(*base, *overrides)

    return make


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 600, env: dict | None = None):
    """Run `python -m task1.train ...` (or another module given as -m NAME first) as a user would."""
    import subprocess

    cmd = [sys.executable, *args] if args and args[0] == "-m" else [sys.executable, "-m", "task1.train", *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def no_traceback(result) -> str:
    """The output of a command that must have failed with exit status 1 and no traceback."""
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in out, out[-3000:]
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)



def pytest_collection_modifyitems(items):
    """The longest files first (the cluster's, about 6 minutes; the wheel's, about 2), so that the two workers of
    scripts/test.sh end together; each file's tests stay together and in their order."""
    first = ("test_cluster.py", "test_wheel.py")
    items.sort(key=lambda item: first.index(item.path.name) if item.path.name in first else len(first))
