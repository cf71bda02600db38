"""Per-epoch time of task1's training path against a hand-written loop and the textbook pipeline.

    python scripts/bench.py [--threads 1] [--epochs 3] [--out outputs/bench.json] [--tiny] [paths.data_dir=...]
                            [--startup-only | --job-cost [--job-rounds 2] [--against <checkout>]]
                            [--epochs-only [--device cuda]]

For softmax regression and the MLP it times, in one process and interleaved (A, B, L, C, A, B, L, C, ...) so
that machine noise hits all of them alike, all on the CPU (also where a GPU is present; `--device cuda` runs
A, B, L and C on the GPU, the data set held there for B, L and C, A copying each batch):
  A  the textbook pipeline: torchvision FashionMNIST with transforms.ToTensor() per item, DataLoader(batch 256,
     shuffle), a plain loop (the book's train_ch3 with its test-set accuracy);
  B  a plain hand-written loop over the same images held in memory as one tensor (the floor), its shuffled
     batches gathered with index_select, the fastest gather on the CPU;
  L  a bare Lightning Trainer.fit of the same net on the same in-memory batches, logging nothing, with no
     callbacks, checkpoints or validation: what any LightningModule with automatic optimization costs;
  C  task1's own path: the config `python -m task1.train model=...` composes, built by task1.train.build
     (same data module, LightningModule, callbacks, logger), run by Trainer.fit.
"train" is the pass over the training batches; "epoch" is everything one epoch costs (for C: training,
validation, logging, checkpoints; for A and B: training and test accuracy; L has no more than its training).
Figures are medians over the epochs after the first (warm-up) one. Start-up is measured on subprocesses, interleaved,
as ratios to `python -c "import torch"`: `task1.train --help`, a config error, `task1.lr_schedule`, `import
lightning`, and `python -m task1.train` to its first training step (the wall time of its first TensorBoard event).
The fixed cost of a job: two sweeps (`python -m task1.train -m seed=1,...,8 trainer.max_epochs=E`, softmax with
the defaults: figures, TensorBoard, checkpoints, the test), E = 1 and 3; a job's period is the time from its
start to the next job's (the first job, which imports Lightning, left out), its median taken over the sweep's
jobs and `--job-rounds` rounds in ABBA order. Epoch cost = half the difference of the two periods; fixed cost =
the 1-epoch period minus the epoch cost. `--against <checkout>` measures another checkout side by side.
Uses the real Fashion-MNIST in paths.data_dir (data/, or TASK1_DATA_DIR) when present, else generated data of the
same shape; writes <paths.output_dir>/bench.json unless --out says otherwise.
"""

import argparse
import itertools
import logging
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's task1, also when another copy is installed

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

from task1 import drawer  # noqa: E402
from task1.cli import CONF, paths  # noqa: E402
from task1.core.build import build  # noqa: E402
from task1.data.fashion_mnist import FILES, prepare_files, read_split  # noqa: E402
from task1.io import write_json  # noqa: E402

MODELS = ("softmax", "mlp")
JOBS = 8  # jobs in each sweep of the job-cost measurement


def data_root(tiny: bool, tmp: Path, data_dir: str) -> tuple[Path, str]:
    """The real data set's root, or one holding generated IDX files of the same shape; and which it is."""
    real = ROOT / data_dir  # relative to the checkout, where the runs start
    raw = real / "FashionMNIST" / "raw"
    if not tiny and all((raw / n).exists() or (raw / f"{n}.gz").exists() for n in FILES):
        prepare_files(real, download=False)
        return real, "real Fashion-MNIST"
    n_train, n_test = (1024, 512) if tiny else (60_000, 10_000)
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=g)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) +
                                                         images.numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.numpy().tobytes())
    return tmp, f"generated data ({n_train} train, {n_test} test)"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read after it counts that work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_epoch(net: torch.nn.Module, opt: torch.optim.Optimizer, train_batches: Iterable,
                eval_batches: Iterable) -> tuple[float, float]:
    """One epoch of the book's loop: SGD over train_batches, then accuracy on eval_batches; (train s, epoch s).
    Batches go to the net's device (the textbook's copy per batch; a no-op for batches already there)."""
    device = next(net.parameters()).device
    start = time.perf_counter()
    for X, y in train_batches:
        loss = F.cross_entropy(net(X.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    synchronize(device)
    trained = time.perf_counter()
    with torch.no_grad():
        sum(int((net(X.to(device)).argmax(dim=1) == y.to(device)).sum()) for X, y in eval_batches)
    return trained - start, time.perf_counter() - start


class Shuffled:
    """A fresh random order each pass, as index_select gathers of the in-memory tensors."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, batch_size: int):
        self.X, self.y, self.batch_size = X, y, batch_size

    def __len__(self) -> int:
        return -(-len(self.X) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.randperm(len(self.X), device=self.X.device)
        for i in range(0, len(self.X), self.batch_size):
            j = idx[i:i + self.batch_size]
            yield self.X.index_select(0, j), self.y.index_select(0, j)


class Bare(L.LightningModule):
    """The least a LightningModule can be: the net, its loss, SGD."""

    def __init__(self, net: torch.nn.Module, lr: float):
        super().__init__()
        self.net, self.lr = net, lr

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        X, y = batch
        return F.cross_entropy(self.net(X), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class EpochTimer(Callback):
    """The seconds of each training epoch of a fit."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        synchronize(pl_module.device)
        self.seconds.append(time.perf_counter() - self.start)


def bare_lightning_epoch(module: Bare, batches: Shuffled, accelerator: str = "cpu") -> tuple[float, float]:
    """One epoch of L: a fresh bare Trainer fits `module` for one more epoch; (train s, epoch s), the same."""
    timer, lightning_log = EpochTimer(), logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # not the "GPU available" lines of every new Trainer
    try:  # deterministic as C: a Trainer sets torch's flag for the whole process
        trainer = L.Trainer(accelerator=accelerator, max_epochs=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                            limit_val_batches=0, num_sanity_val_steps=0,
                            deterministic=torch.are_deterministic_algorithms_enabled())
        trainer.fit(module, train_dataloaders=batches)
    finally:
        lightning_log.setLevel(level)
    return timer.seconds[0], timer.seconds[0]


class Interleave(Callback):
    """Times each of C's epochs, from its start to the next one's, and runs one epoch of A and B in between."""

    def __init__(self, between: Callable[[], None]):
        self.between, self.start = between, None
        self.train_s: list[float] = []
        self.epoch_s: list[float] = []

    def _close(self, pl_module) -> None:
        synchronize(pl_module.device)  # the epoch's queued GPU work counts in it
        if self.start is not None:
            self.epoch_s.append(time.perf_counter() - self.start)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._close(pl_module)
        self.between()
        self.start = time.perf_counter()

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            synchronize(pl_module.device)
            self.train_s.append(time.perf_counter() - self.start)

    def on_train_end(self, trainer, pl_module) -> None:
        self._close(pl_module)


def compose_cfg(*overrides: str):
    """The config `python -m task1.train <overrides>` runs."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def median_after_warmup(times: list[float], warmup: int) -> float:
    return statistics.median(times[warmup:])


def bench_model(model: str, root: Path, tmp: Path, threads: int, epochs: int, warmup: int,
                device: str = "cpu") -> dict:
    """A, B, L and C for one model, interleaved epoch by epoch, on `device` (cpu or cuda: the data set held
    there for B, L and C); median times and the ratios."""
    accelerator = "gpu" if device == "cuda" else "cpu"
    cfg = compose_cfg(f"model={model}", f"paths.data_dir={root}", f"threads={threads}", f"trainer={accelerator}",
                      f"trainer.max_epochs={warmup + epochs}", f"output_dir={tmp / model}")
    bs, eval_bs, lr = cfg.data.batch_size, cfg.data.eval_batch_size, cfg.optimizer.lr
    to_tensor = transforms.ToTensor()
    book_train = DataLoader(datasets.FashionMNIST(str(root), train=True, transform=to_tensor), bs, shuffle=True)
    book_test = DataLoader(datasets.FashionMNIST(str(root), train=False, transform=to_tensor), bs)
    (X, y), (Xt, yt) = (tuple(v.to(device) for v in read_split(root, train=train))
                            for train in (True, False))
    test_slices = [(Xt[i:i + eval_bs], yt[i:i + eval_bs]) for i in range(0, len(Xt), eval_bs)]
    nets = {k: instantiate(cfg.model.net).to(device) for k in "AB"}
    opts = {k: torch.optim.SGD(net.parameters(), lr=lr) for k, net in nets.items()}
    bare = Bare(instantiate(cfg.model.net), lr)
    runs: dict[str, list[tuple[float, float]]] = {"A": [], "B": [], "L": []}

    def between() -> None:
        runs["A"].append(plain_epoch(nets["A"], opts["A"], book_train, book_test))
        runs["B"].append(plain_epoch(nets["B"], opts["B"], Shuffled(X, y, bs), test_slices))
        runs["L"].append(bare_lightning_epoch(bare, Shuffled(X, y, bs), accelerator))

    timer = Interleave(between)
    datamodule, system, trainer = build(cfg, callbacks=(timer,))[:3]
    trainer.fit(system, datamodule=datamodule)
    times = {k: {"train_s": median_after_warmup([t for t, _ in v], warmup),
                 "epoch_s": median_after_warmup([e for _, e in v], warmup)} for k, v in runs.items()}
    times["C"] = {"train_s": median_after_warmup(timer.train_s, warmup),
                  "epoch_s": median_after_warmup(timer.epoch_s, warmup)}
    ratio = {f"{a}/{b}": {k: times[a][k] / times[b][k] for k in ("train_s", "epoch_s")}
             for a, b in (("C", "B"), ("L", "B"), ("A", "C"))}
    return {**times, **ratio}


def first_step_s(root: Path, run: Path, threads: int) -> float:
    """Seconds from starting `python -m task1.train` to its first training step (its first TensorBoard event)."""
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "task1.train", f"paths.data_dir={root}", f"threads={threads}",
                             "trainer.max_epochs=1", f"hydra.run.dir={run}"], cwd=ROOT, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"python -m task1.train failed:\n{result.stderr[-3000:]}")
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return events.Scalars("train/loss_step")[0].wall_time - start


def command_s(args: list[str], status: int = 0) -> float:
    """Wall seconds of `python <args>` in the checkout, which must exit with `status`."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != status:
        raise RuntimeError(f"python {' '.join(args)} exited {result.returncode}:\n{result.stdout[-2000:]}"
                           f"{result.stderr[-2000:]}")
    return seconds


def startup_commands(tmp: Path) -> dict[str, tuple[list[str], int]]:
    """The commands whose start-up is measured against `python -c "import torch"`, and their exit status."""
    return {
        "import torch": (["-c", "import torch"], 0),
        "import lightning": (["-c", "import lightning"], 0),
        "train --help": (["-m", "task1.train", "--help"], 0),
        "train config error": (["-m", "task1.train", "data.batch_size=0", f"hydra.run.dir={tmp / 'error'}"], 1),
        "lr_schedule": (["-m", "task1", "lr-schedule", "scheduler=cosine", "scheduler.interval=step",
                         "trainer.max_epochs=5", f"hydra.run.dir={tmp / 'lr'}"], 0),
    }


def bench_startup(root: Path, tmp: Path, threads: int, repeats: int) -> dict:
    """Median wall time of each command (interleaved, `repeats` rounds), its ratio to `import torch`, and the
    start-up of training: `python -m task1.train` to its first step."""
    commands = startup_commands(tmp)
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    first_step = []
    for r in range(repeats):
        for name, (args, status) in commands.items():
            seconds[name].append(command_s(args, status))
        first_step.append(first_step_s(root, tmp / f"startup{r}", threads))
    medians = {name: statistics.median(v) for name, v in seconds.items()}
    medians["train to first step"] = statistics.median(first_step)
    torch_s = medians["import torch"]
    return {"seconds": medians, "ratio_to_import_torch": {k: v / torch_s for k, v in medians.items()},
            "repeats": repeats}


def job_starts(sweep: Path) -> list[float]:
    """When each job of a sweep started: Hydra writes its .hydra/hydra.yaml first thing."""
    return sorted(p.stat().st_mtime for p in sweep.glob("*/.hydra/hydra.yaml"))


def sweep_periods(checkout: Path, root: Path, epochs: int, sweep: Path, jobs: int = JOBS) -> list[float]:
    """The seconds between the starts of consecutive jobs of a sweep of `jobs` softmax runs of `epochs` epochs
    with the defaults (figures, TensorBoard, checkpoints), run from `checkout`; the first job's period, which
    imports Lightning, left out."""
    result = subprocess.run([sys.executable, "-m", "task1.train", "--multirun", f"trainer.max_epochs={epochs}",
                             f"seed={','.join(str(s) for s in range(1, jobs + 1))}", f"paths.data_dir={root}",
                             f"hydra.sweep.dir={sweep}"], cwd=checkout, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the sweep in {checkout} failed:\n{result.stderr[-3000:]}")
    starts = job_starts(sweep)
    if len(starts) != jobs:
        raise RuntimeError(f"{sweep} holds {len(starts)} jobs, not {jobs}")
    return [b - a for a, b in itertools.pairwise(starts[1:])]


def bench_job_cost(root: Path, tmp: Path, rounds: int, against: Path | None) -> dict:
    """The fixed cost of a job, as two sweeps measure it (see the module's docstring), for this checkout and
    `against` (another checkout, e.g. the commit before) side by side: rounds in ABBA order, periods pooled."""
    checkouts = {"this": ROOT, **({"against": against.resolve()} if against else {})}
    periods: dict[str, dict[int, list[float]]] = {name: {1: [], 3: []} for name in checkouts}
    for r in range(rounds):
        order = [(name, e) for name in checkouts for e in (1, 3)]
        for name, epochs in order if r % 2 == 0 else order[::-1]:
            sweep = tmp / f"jobs_{name}_{epochs}_{r}"
            periods[name][epochs] += sweep_periods(checkouts[name], root, epochs, sweep)
    out = {}
    for name, by_epochs in periods.items():
        p1, p3 = (statistics.median(by_epochs[e]) for e in (1, 3))
        epoch = (p3 - p1) / 2
        out[name] = {"checkout": str(checkouts[name]), "period_1_epoch_s": p1, "period_3_epochs_s": p3,
                     "epoch_s": epoch, "fixed_s": p1 - epoch, "fixed_per_epoch": (p1 - epoch) / epoch,
                     "periods": {str(e): v for e, v in by_epochs.items()}}
    return {"rounds": rounds, "jobs": JOBS, "checkouts": out}


def report(result: dict) -> str:
    """The benchmark as a text table."""
    names = {"A": "A textbook", "B": "B hand loop", "L": "L bare fit", "C": "C task1", "C/B": "C/B",
             "L/B": "L/B", "A/C": "A/C"}
    lines = [f"{result['device']}, threads {result['threads']}, {result['data']}, batch 256, median of "
             f"{result['epochs']} epochs after {result['warmup']} warm-up",
             f"{'model':<8} {'pipeline':<12} {'train s':>9} {'epoch s':>9}"]
    if not result["models"]:
        lines = [f"threads {result['threads']}, {result['data']}"]
    for model, row in result["models"].items():
        for key, name in names.items():
            fmt = "{:>9.2f}" if "/" in key else "{:>9.3f}"
            lines.append(f"{model:<8} {name:<12} " + " ".join(fmt.format(row[key][k]) for k in ("train_s", "epoch_s")))
    if "job_cost" in result:
        cost = result["job_cost"]
        lines.append(f"fixed cost of a job (softmax, defaults; sweeps of {cost['jobs']} jobs of 1 and 3 epochs, "
                     f"{cost['rounds']} round(s) ABBA; medians of the periods between job starts):")
        lines.append(f"  {'checkout':<10} {'1 epoch s':>10} {'3 epochs s':>11} {'epoch s':>8} {'fixed s':>8} "
                     f"{'fixed/epoch':>12}")
        lines += [f"  {name:<10} {c['period_1_epoch_s']:>10.3f} {c['period_3_epochs_s']:>11.3f} {c['epoch_s']:>8.3f} "
                  f"{c['fixed_s']:>8.3f} {c['fixed_per_epoch']:>12.2f}" for name, c in cost["checkouts"].items()]
    if "startup" not in result:
        return "\n".join(lines)
    s = result["startup"]
    lines.append(f"start-up, median of {s['repeats']} (ratio to python -c 'import torch'):")
    lines += [f"  {name:<22} {sec:>6.2f} s  {s['ratio_to_import_torch'][name]:>5.2f}"
              for name, sec in s["seconds"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for all pipelines (default 1)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up one (default 3)")
    parser.add_argument("--startup-repeats", type=int, default=3, help="start-up runs of each kind (default 3)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--tiny", action="store_true", help="a few batches of generated data, one timed epoch")
    parser.add_argument("--startup-only", action="store_true", help="only the start-up section")
    parser.add_argument("--epochs-only", action="store_true", help="only the epoch times (A, B, L, C)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where A, B, L and C train "
                        "(default cpu)")
    parser.add_argument("--job-cost", action="store_true", help="only the fixed cost of a job: sweeps of 8 softmax "
                        "jobs of 1 and of 3 epochs with the defaults")
    parser.add_argument("--job-rounds", type=int, default=2, help="rounds of the job-cost sweeps, ABBA (default 2)")
    parser.add_argument("--against", type=Path, help="with --job-cost: another checkout measured side by side "
                        "(e.g. git worktree add /tmp/before HEAD~1)")
    parser.add_argument("--out", type=Path, help="where to write JSON (<paths.output_dir>/bench.json)")
    parser.add_argument("paths", nargs="*", metavar="paths.KEY=VALUE", help="paths.data_dir=..., paths.output_dir=...")
    args = parser.parse_args()
    if any(not p.startswith("paths.") for p in args.paths):
        parser.error(f"only paths.data_dir=... and paths.output_dir=... are taken, not {' '.join(args.paths)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: torch {torch.__version__} sees no CUDA GPU")
    where = paths(args.paths)
    out = args.out or ROOT / where["output_dir"] / "bench.json"
    epochs, repeats, rounds = (1, 1, 1) if args.tiny else (args.epochs, args.startup_repeats, args.job_rounds)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root, data = data_root(args.tiny, Path(tmp) / "data", where["data_dir"])
        result = {"threads": args.threads, "data": data, "epochs": epochs, "warmup": 1, "device": args.device,
                  "models": {}}
        if not (args.startup_only or args.job_cost):
            result["models"] = {m: bench_model(m, root, Path(tmp), args.threads, epochs, 1, args.device)
                                for m in args.models}
            drawer.settle()  # C's figures written before their folder goes with tmp
        if not (args.startup_only or args.epochs_only):
            result["job_cost"] = bench_job_cost(root.resolve(), Path(tmp), rounds, args.against)
        if not (args.job_cost or args.epochs_only):
            result["startup"] = bench_startup(root, Path(tmp), args.threads, repeats)
    print(report(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
