"""Fashion-MNIST through the real torchvision reader on generated IDX files; the in-memory loader; data errors."""

import gzip
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from conftest import N_TEST, N_TRAIN, ROOT, gz_only_copy, make_fashion_mnist, make_images, run_cli, write_idx
from torchvision import datasets

from task1 import Task1Error
from task1.data import LABELS, FashionMNIST, SyntheticRegression, TensorLoader, synthetic_data, text_labels
from task1.data.fashion_mnist import prepare_files, read_split


def loaded(root, **kwargs) -> FashionMNIST:
    dm = FashionMNIST(root=str(root), download=False, **kwargs)
    dm.prepare()
    dm.setup()
    return dm


def test_splits_are_whole_tensors_scaled_like_to_tensor(fake_root):
    dm = loaded(fake_root)
    X, y = dm.splits["train"]
    assert X.shape == (N_TRAIN, 1, 28, 28) and X.dtype == torch.float32 and y.dtype == torch.int64
    images, labels = make_images(N_TRAIN, 0)
    torch.testing.assert_close(X[:, 0], torch.from_numpy(images).float() / 255)  # ToTensor: pixels / 255
    assert torch.equal(y, torch.from_numpy(labels).long())
    assert dm.splits["val"][0] is dm.splits["test"][0]  # val_size=0: validate on the official test split
    assert len(dm.splits["test"][0]) == N_TEST


def test_val_split_is_seeded_disjoint_and_never_touches_the_test_split(fake_root):
    a, b = loaded(fake_root, val_size=100), loaded(fake_root, val_size=100)
    assert torch.equal(a.splits["val"][0], b.splits["val"][0])
    assert len(a.splits["train"][0]) == N_TRAIN - 100 and len(a.splits["val"][0]) == 100
    train_rows = {tuple(r.flatten().tolist()[:60]) for r in a.splits["train"][0]}
    assert not any(tuple(r.flatten().tolist()[:60]) in train_rows for r in a.splits["val"][0])
    test_images, _ = make_images(N_TEST, 1)
    torch.testing.assert_close(a.splits["test"][0][:, 0], torch.from_numpy(test_images).float() / 255)
    other = loaded(fake_root, val_size=100, split_seed=1)
    assert not torch.equal(other.splits["val"][0], a.splits["val"][0])


def test_gzipped_files_are_verified_and_unzipped(tmp_path):
    """With the original .gz files only, torchvision's MD5s guard the unzip; generated files fail them by name."""
    root = make_fashion_mnist(tmp_path, compress=True)
    with pytest.raises(Task1Error, match=r"train-images-idx3-ubyte\.gz is corrupt.*MD5"):
        loaded(root)


def test_real_gz_files_are_verified_unzipped_and_loaded(real_root, tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (real_root / "FashionMNIST" / "raw").glob("*.gz"):
        shutil.copy(gz, raw)
    if len(list(raw.glob("*.gz"))) < 4:
        pytest.skip("the real files are unzipped only")
    dm = loaded(tmp_path)
    X, y = dm.splits["test"]
    assert X.shape == (10_000, 1, 28, 28) and torch.bincount(y).tolist() == [1000] * 10
    assert (raw / "t10k-images-idx3-ubyte").is_file()
    damaged = raw / "t10k-labels-idx1-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:-100])
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(Task1Error, match=r"t10k-labels-idx1-ubyte\.gz is corrupt or truncated"):
        loaded(tmp_path)


def _prepare_at_once(barrier, root) -> None:
    barrier.wait()
    prepare_files(root, download=False)


def test_processes_that_unzip_one_fresh_folder_at_once_all_get_whole_files(real_root, tmp_path):
    # parallel jobs on a folder holding the .gz files only (as scripts/setup.sh leaves it), released together
    # so that their unzips overlap for sure (a sweep's jobs start seconds apart, and mostly miss each other)
    raw, gz = gz_only_copy(real_root, tmp_path)
    ctx = multiprocessing.get_context("fork")  # the children need no imports of their own
    barrier = ctx.Barrier(4)
    jobs = [ctx.Process(target=_prepare_at_once, args=(barrier, tmp_path)) for _ in range(4)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=300)
    assert [job.exitcode for job in jobs] == [0, 0, 0, 0]
    assert sorted(p.name for p in raw.iterdir()) == sorted([*(p.name for p in gz), *(p.stem for p in gz)])
    for path in gz:  # every unzipped file whole, no temporary file left
        assert (raw / path.stem).read_bytes() == gzip.decompress(path.read_bytes())


def test_real_data_set(real_root):
    dm = loaded(real_root)
    X, y = dm.splits["train"]
    assert X.shape == (60_000, 1, 28, 28) and torch.bincount(y).tolist() == [6000] * 10
    assert X.mean().item() == pytest.approx(0.2860, abs=1e-4) and X.std().item() == pytest.approx(0.3530, abs=1e-4)
    assert len(dm.splits["test"][0]) == 10_000


def test_ten_text_labels():
    assert LABELS == ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                      "ankle boot")
    assert text_labels(torch.tensor([0, 9, 5])) == ["t-shirt", "ankle boot", "sandal"]
    assert len(datasets.FashionMNIST.classes) == len(LABELS)


def test_loader_shuffles_per_epoch_reproducibly_and_covers_every_example():
    X, y = torch.arange(100).float().reshape(100, 1), torch.arange(100)
    loader = TensorLoader(X, y, batch_size=32, shuffle=True, seed=7)
    assert len(loader) == 4  # the last, short batch is kept
    epoch0 = torch.cat([b for _, b in loader])
    loader.set_epoch(1)
    epoch1 = torch.cat([b for _, b in loader])
    assert sorted(epoch0.tolist()) == list(range(100)) == sorted(epoch1.tolist())
    assert not torch.equal(epoch0, epoch1)
    loader.set_epoch(0)
    assert torch.equal(torch.cat([b for _, b in loader]), epoch0)
    assert torch.equal(torch.cat([b for _, b in TensorLoader(X, y, 32, shuffle=True, seed=7)]), epoch0)


def test_evaluation_loader_keeps_order_and_last_batch():
    X, y = torch.zeros(10, 2), torch.arange(10)
    batches = [b.tolist() for _, b in TensorLoader(X, y, batch_size=4)]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_loader_shards_are_disjoint_and_equal_sized_for_training():
    X, y = torch.zeros(103, 1), torch.arange(103)
    shards = [torch.cat([b for _, b in TensorLoader(X, y, 10, shuffle=True, seed=0, rank=r, world_size=2)])
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 51
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    evals = [torch.cat([b for _, b in TensorLoader(X, y, 10, rank=r, world_size=2)]) for r in range(2)]
    assert sorted(torch.cat(evals).tolist()) == list(range(103))  # evaluation sees every example once


def test_synthetic_data_follows_the_linear_model():
    X, y = synthetic_data(torch.tensor([2.0, -3.4]), 4.2, 5000, 0.01, torch.Generator().manual_seed(0))
    assert X.shape == (5000, 2) and y.shape == (5000, 1)
    residual = y.reshape(-1) - (X @ torch.tensor([2.0, -3.4]) + 4.2)
    assert residual.std().item() == pytest.approx(0.01, rel=0.05)
    dm = SyntheticRegression(val_size=0, seed=0)
    dm.setup()
    assert dm.splits["val"][0] is dm.splits["train"][0] and len(dm.splits["test"][0]) == 1000


# --- errors, through the command line as a user meets them -------------------------------------------------------

def _fails(root, *extra):
    result = run_cli(f"paths.data_dir={root}", "data.download=false", "trainer=cpu", "trainer.max_epochs=1",
                     "logger=none", "hydra.run.dir=" + str(root / "run"), *extra)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    return result.stderr + result.stdout


def test_missing_folder_names_the_folder_the_files_and_the_fix(tmp_path):
    out = _fails(tmp_path / "empty")
    assert str(tmp_path / "empty" / "FashionMNIST" / "raw") in out
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        assert name in out
    assert "paths.data_dir=<folder> (or TASK1_DATA_DIR)" in out and "data.download=true" in out


def test_download_failure_is_one_short_message(tmp_path, monkeypatch):
    """download=true with an unreachable mirror: torchvision's real download code fails, the user gets one line."""
    dm = FashionMNIST(root=str(tmp_path), download=True)
    monkeypatch.setattr(datasets.FashionMNIST, "mirrors", [f"file://{tmp_path}/no-mirror/"])
    with pytest.raises(Task1Error, match=r"Downloading Fashion-MNIST failed.*expected the four files") as e:
        dm.prepare()
    # what the mirror answered is kept, on the one line, and the cause stays chained for a traceback
    assert "\n" not in str(e.value) and f"Tried file://{tmp_path}/no-mirror/, got:" in str(e.value)
    assert re.search(r"\(RuntimeError: Error downloading train-images-idx3-ubyte.gz: .*No such file or directory",
                     str(e.value))
    assert isinstance(e.value.__cause__, RuntimeError)


def test_a_failed_download_takes_back_what_it_made_and_nothing_the_user_had(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.FashionMNIST, "mirrors", [f"file://{tmp_path}/no-mirror/"])
    with pytest.raises(Task1Error, match="Downloading Fashion-MNIST failed"):
        prepare_files(tmp_path / "fresh" / "data", download=True)
    assert not (tmp_path / "fresh").exists()  # the data folder it made: gone, up to the folder that was there
    raw = tmp_path / "mine" / "FashionMNIST" / "raw"  # the user's folder, with a file of theirs
    raw.mkdir(parents=True)
    (raw / "notes.txt").write_text("mine")
    with pytest.raises(Task1Error, match="Downloading Fashion-MNIST failed"):
        prepare_files(tmp_path / "mine", download=True)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "mine").rglob("*")) == [
        "mine/FashionMNIST", "mine/FashionMNIST/raw", "mine/FashionMNIST/raw/notes.txt"]  # no .download.lock


SHOW_OFFLINE = """
import runpy, sys
from torchvision import datasets
datasets.FashionMNIST.mirrors = [sys.argv[1]]  # unreachable without the network: a folder that does not exist
sys.argv = ["show", "paths.output_dir=" + sys.argv[2]]
runpy.run_module("task1.tools.show", run_name="__main__")
"""


@pytest.mark.slow
def test_show_without_the_data_leaves_no_data_folder_behind(tmp_path):
    cwd = tmp_path / "here"
    cwd.mkdir()
    result = subprocess.run([sys.executable, "-c", SHOW_OFFLINE, f"file://{tmp_path}/no-mirror/",
                             str(tmp_path / "out")], cwd=cwd, capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if k != "TASK1_DATA_DIR"})
    assert result.returncode == 1 and "Downloading Fashion-MNIST failed" in result.stderr + result.stdout, \
        result.stderr[-2000:]
    assert list(cwd.iterdir()) == []  # no data/FashionMNIST/ in the folder it ran in


DOWNLOAD_AND_READ = """
import sys
from torchvision import datasets
from task1.data.fashion_mnist import prepare_files, read_split
datasets.FashionMNIST.mirrors = [sys.argv[2]]  # the test's own server on 127.0.0.1
prepare_files(sys.argv[1], download=True)
X, y = read_split(sys.argv[1], train=True)
print(len(y), float(X.sum()))
"""


@pytest.mark.slow
def test_parallel_jobs_on_a_fresh_machine_download_once_and_never_read_a_half_file(real_root, tmp_path):
    files = {p.name: p.read_bytes() for p in (real_root / "FashionMNIST" / "raw").glob("*.gz")}
    if len(files) < 4:
        pytest.skip("the real files are unzipped only")
    served = []

    class SlowMirror(BaseHTTPRequestHandler):  # about 6 MB/s: a download takes seconds, as over a network
        def do_GET(self):
            data = files.get(self.path.lstrip("/"))
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.headers.get("Method") == "HEAD":  # torchvision's look for redirects before it downloads
                return
            for i in range(0, len(data), 1 << 16):
                self.wfile.write(data[i:i + (1 << 16)])
                time.sleep(0.01)
            served.append(self.path)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowMirror)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        jobs = [subprocess.Popen([sys.executable, "-c", DOWNLOAD_AND_READ, str(tmp_path), url], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outs = [job.communicate(timeout=300) for job in jobs]
    finally:
        server.shutdown()
    assert all(job.returncode == 0 for job in jobs), [err[-2000:] for _, err in outs]
    assert len({out for out, _ in outs}) == 1 and outs[0][0].startswith("60000 ")
    assert sorted(served) == sorted(f"/{name}" for name in files)  # one download, each file once
    assert not list(tmp_path.glob("FashionMNIST/.download-*"))  # its folder is gone


@pytest.mark.parametrize("damage, message", [
    ("truncate", r"train-images-idx3-ubyte is truncated or corrupt: its header announces 600 examples"),
    ("magic", r"train-images-idx3-ubyte is not an IDX image file \(magic number 2049, expected 2051\)"),
    ("count", r"holds 600 images but .*train-labels-idx1-ubyte holds 599 labels"),
    ("labels", r"train-labels-idx1-ubyte holds labels outside 0-9"),
])
def test_damaged_files_are_named(tmp_path, damage, message):
    root = make_fashion_mnist(tmp_path)
    raw = root / "FashionMNIST" / "raw"
    images, labels = make_images(N_TRAIN, 0)
    if damage == "truncate":
        data = (raw / "train-images-idx3-ubyte").read_bytes()
        (raw / "train-images-idx3-ubyte").write_bytes(data[:len(data) // 2])
    elif damage == "magic":
        write_idx(raw / "train-images-idx3-ubyte", images, magic=2049)
    elif damage == "count":
        write_idx(raw / "train-labels-idx1-ubyte", labels[:-1])
    else:
        write_idx(raw / "train-labels-idx1-ubyte", np.where(labels == 3, 12, labels))
    with pytest.raises(Task1Error, match=message):
        loaded(root)


def test_a_split_read_again_in_this_process_is_not_read_again_unless_its_files_changed(tmp_path):
    root = make_fashion_mnist(tmp_path / "data")
    first = read_split(root, train=False)
    assert read_split(root, train=False) is first  # the next run of a sweep in this process: no reading
    labels = root / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    images, y = make_images(N_TEST, seed=7)
    write_idx(labels, y)
    write_idx(root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte", images)
    again = read_split(root, train=False)
    assert again is not first and torch.equal(again[1], torch.from_numpy(y).long())
    write_idx(labels, np.full(N_TEST, 11, dtype=np.uint8))  # a damaged file is checked again, not served
    with pytest.raises(Task1Error, match="labels outside 0-9"):
        read_split(root, train=False)


def test_a_loader_resumed_mid_epoch_goes_on_in_its_own_order_also_unseeded():
    # an unseeded run draws its own shuffle seed: the checkpoint carries it, or a resumed run would skip the
    # first batches of another order
    X, y = torch.arange(40.0).reshape(20, 2), torch.arange(20)
    first = TensorLoader(X, y, batch_size=4, shuffle=True, seed=1234)
    batches = iter(first)
    seen = [next(batches)[1].tolist() for _ in range(2)]
    state = first.state_dict()
    again = TensorLoader(X, y, batch_size=4, shuffle=True, seed=98765)  # the new process draws another seed
    again.load_state_dict(state)
    rest = [b[1].tolist() for b in again]
    whole = [b[1].tolist() for b in TensorLoader(X, y, batch_size=4, shuffle=True, seed=1234)]
    assert seen + rest == whole


def test_a_run_that_validates_on_the_test_split_says_so_at_its_start(fake_root, tmp_path):
    from task1 import api

    common = [f"paths.data_dir={fake_root}", "data.batch_size=64", "trainer=cpu", "trainer.max_epochs=1",
              "logger=none", "figures.enabled=false", f"paths.output_dir={tmp_path}"]
    note = ("data.val_size=0: validation is on the test split (as in the book), so best.ckpt and early stopping "
            "choose on test examples. Hold out a validation split with data.val_size=5000.")
    book = api.train(*common, "callbacks=early_stopping")
    assert (book.folder / "train.log").read_text().count(note) == 1
    held_out = api.train(*common, "data.val_size=100")
    assert "test split" not in (held_out.folder / "train.log").read_text()
