"""A packed sweep against the basic launcher, on the CPU: the two whole commands, side by side (ABBA).

    python scripts/bench_pack.py [--jobs 16] [--epochs 10] [--mlp-epochs 10] [--rounds 1] [--models softmax mlp]
                                 [--tiny] [--out outputs/bench_pack.json] [paths.data_dir=...]

For each model it runs, each in a fresh sweep folder, with the defaults (figures, TensorBoard, checkpoints, the test):
  basic   python -m task1.train -m model=M seed=0,...,J-1 trainer.max_epochs=E
  packed  the same with hydra/launcher=packed (one pack of J members, stack=loop)
in ABBA order (basic, packed, packed, basic; `--rounds` times), and prints the ratios packed/basic of the
neighbouring pairs (min/median/max), of wall time and of CPU time (user + system, the commands' child processes
too: on a shared machine the load moves wall times much more). Between the commands it times epochs of the hand
loop B of scripts/bench.py (in this process, one thread, the same net, batch and data; its test accuracy over the
test split, as a member validates on it) and sets a member's epoch against it: a member's `wall_time_s` (what it
cost the pack: its epochs with their validation and checkpoints, its share of reading the data, its test) over its
epochs; and the packed command's CPU time over its member-epochs against B's CPU time per epoch. Uses the real
Fashion-MNIST in paths.data_dir when present, else generated data of the same shape.
"""

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench import MODELS, ROOT, Shuffled, command_s, compose_cfg, data_root, plain_epoch
from hydra.utils import instantiate

from task1.cli import paths
from task1.data.fashion_mnist import read_split
from task1.io import write_json

LAUNCHERS = {"basic": [], "packed": ["hydra/launcher=packed"]}


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "all": values}


class HandLoop:
    """B of scripts/bench.py for one model, trained on and on: `epochs(n)` adds n timed epochs."""

    def __init__(self, model: str, root: Path):
        cfg = compose_cfg(f"model={model}", f"paths.data_dir={root}")
        (X, y), (Xt, yt) = read_split(root, train=True), read_split(root, train=False)
        bs, eval_bs = cfg.data.batch_size, cfg.data.eval_batch_size
        self.batches = Shuffled(X, y, bs)
        self.test = [(Xt[i:i + eval_bs], yt[i:i + eval_bs]) for i in range(0, len(Xt), eval_bs)]
        self.net = instantiate(cfg.model.net)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=cfg.optimizer.lr)
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []  # this process's CPU time of each epoch (one thread: the load moves it less)
        self.epochs(1)  # warm-up, not counted
        self.seconds.clear()
        self.cpu_seconds.clear()

    def epochs(self, n: int) -> None:
        for _ in range(n):
            cpu = time.process_time()
            self.seconds.append(plain_epoch(self.net, self.opt, self.batches, self.test)[1])
            self.cpu_seconds.append(time.process_time() - cpu)


def sweep(model: str, launcher: str, root: Path, folder: Path, jobs: int, epochs: int) -> dict:
    """One whole sweep command: its wall time and CPU time (user + system, its child processes too), and each
    job's wall_time_s from its metrics.json."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = command_s(["-m", "task1.train", "-m", f"model={model}", f"seed={','.join(map(str, range(jobs)))}",
                         f"trainer.max_epochs={epochs}", f"paths.data_dir={root}", f"hydra.sweep.dir={folder}",
                         *LAUNCHERS[launcher]])
    metrics = [json.loads(p.read_text()) for p in sorted(folder.glob("*/metrics.json"))]
    done = [m for m in metrics if m.get("status") == "completed" and m.get("epochs") == epochs]
    if len(done) != jobs:
        raise RuntimeError(f"{folder}: {len(done)} of {jobs} jobs completed {epochs} epochs")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {"wall_s": seconds, "cpu_s": cpu, "job_s": [m["wall_time_s"] for m in metrics]}


def bench_model(model: str, root: Path, tmp: Path, jobs: int, epochs: int, rounds: int, b_epochs: int) -> dict:
    """Rounds of basic, packed, packed, basic for one model, with B's epochs timed before each command."""
    hand = HandLoop(model, root)
    runs: dict[str, list[dict]] = {name: [] for name in LAUNCHERS}
    ratios, cpu_ratios = [], []
    for r in range(rounds):
        for i, name in enumerate(("basic", "packed", "packed", "basic")):
            hand.epochs(b_epochs)
            runs[name].append(sweep(model, name, root, tmp / f"{model}_{name}_{r}_{i}", jobs, epochs))
            print(f"{model} round {r + 1} {name}: {runs[name][-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)
        basic, packed = runs["basic"][-2:], runs["packed"][-2:]
        ratios += [p["wall_s"] / b["wall_s"] for p, b in zip(packed, basic, strict=True)]  # (A1, B1), (B2, A2)
        cpu_ratios += [p["cpu_s"] / b["cpu_s"] for p, b in zip(packed, basic, strict=True)]
    b_epoch, b_cpu = statistics.median(hand.seconds), statistics.median(hand.cpu_seconds)
    member_epoch = [s / epochs for run in runs["packed"] for s in run["job_s"]]
    job_epoch = [s / epochs for run in runs["basic"] for s in run["job_s"]]
    return {"jobs": jobs, "epochs": epochs, "rounds": rounds,
            "wall_s": {name: [run["wall_s"] for run in v] for name, v in runs.items()},
            "cpu_s": {name: [run["cpu_s"] for run in v] for name, v in runs.items()},
            "packed/basic": spread(ratios), "packed/basic cpu": spread(cpu_ratios),
            "B_epoch_s": b_epoch, "B_epochs": len(hand.seconds), "B_epoch_cpu_s": b_cpu,
            # the whole packed command's CPU time over its member-epochs: start-up, data, test and files included
            "packed_cpu/B_cpu": spread([r["cpu_s"] / (jobs * epochs) / b_cpu for r in runs["packed"]]),
            "member_epoch_s": statistics.median(member_epoch),
            "member/B": spread([s / b_epoch for s in member_epoch]),
            "job_epoch_s": statistics.median(job_epoch),
            "job/B": spread([s / b_epoch for s in job_epoch])}


def report(result: dict) -> str:
    """The benchmark as a text table."""

    def mmm(r: dict) -> str:
        return f"{r['min']:.2f}/{r['median']:.2f}/{r['max']:.2f}"

    lines = [f"{result['data']}; basic, packed, packed, basic; ratios of the neighbouring pairs, min/median/max",
             f"{'model':<8} {'jobs':>4} {'epochs':>6}  {'measure':<26} {'basic':>8} {'packed':>8}  packed/basic"]
    for model, m in result["models"].items():
        head = f"{model:<8} {m['jobs']:>4} {m['epochs']:>6}  "
        for key, name in (("wall_s", "wall s (median)"), ("cpu_s", "CPU s (median)")):
            basic, packed = (statistics.median(m[key][k]) for k in ("basic", "packed"))
            ratio = m["packed/basic" if key == "wall_s" else "packed/basic cpu"]
            lines.append(f"{head}{name:<26} {basic:>8.1f} {packed:>8.1f}  {mmm(ratio)}")
        name = f"epoch / B epoch ({m['B_epoch_s']:.3f} s)"
        lines.append(f"{head}{name:<26} {m['job/B']['median']:>8.2f} {m['member/B']['median']:>8.2f}  "
                     f"(member/B {mmm(m['member/B'])})")
        name = f"CPU / B epoch ({m['B_epoch_cpu_s']:.3f} s)"
        lines.append(f"{head}{name:<26} {'':>8} {m['packed_cpu/B_cpu']['median']:>8.2f}  "
                     f"(packed CPU s / member-epochs / B's; {mmm(m['packed_cpu/B_cpu'])})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16, help="seeds in each sweep (default 16)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each job (default 10)")
    parser.add_argument("--mlp-epochs", type=int, help="the MLP's epochs, where time is short (default --epochs)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of basic, packed, packed, basic (default 1)")
    parser.add_argument("--b-epochs", type=int, default=2, help="hand-loop epochs timed before each command")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--tiny", action="store_true", help="generated data, 3 jobs of 2 epochs, one B epoch")
    parser.add_argument("--out", type=Path, help="where to write JSON (<paths.output_dir>/bench_pack.json)")
    parser.add_argument("paths", nargs="*", metavar="paths.KEY=VALUE", help="paths.data_dir=..., paths.output_dir=...")
    args = parser.parse_args()
    if any(not p.startswith("paths.") for p in args.paths):
        parser.error(f"only paths.data_dir=... and paths.output_dir=... are taken, not {' '.join(args.paths)}")
    where = paths(args.paths)
    out = args.out or ROOT / where["output_dir"] / "bench_pack.json"
    jobs, epochs, b_epochs = (3, 2, 1) if args.tiny else (args.jobs, args.epochs, args.b_epochs)
    model_epochs = {"softmax": epochs, "mlp": epochs if args.tiny else args.mlp_epochs or epochs}
    torch.set_num_threads(1)  # as the sweeps' jobs (threads: 1)
    with tempfile.TemporaryDirectory() as tmp:
        root, data = data_root(args.tiny, Path(tmp) / "data", where["data_dir"])
        result = {"data": data, "models": {m: bench_model(m, root.resolve(), Path(tmp), jobs, model_epochs[m],
                                                          args.rounds, b_epochs) for m in args.models}}
    print(report(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
