#!/usr/bin/env bash
# task1's first check on a GPU, in at most 5 minutes on one GPU and offline: one table of
#   - plain `trainer=gpu` runs (MLP), 32-true and bf16-mixed;
#   - `task1 eval` of the 32-true run's checkpoint, on the GPU;
#   - scripts/bench.py --device cuda (the epoch times A, B, L and C);
#   - a packed sweep of N members (hydra/launcher=packed, stack vmap, data on the device), softmax and MLP, against
#     K of the same members trained one after another by the basic launcher: trials per second, peak memory.
# Each step has its own time limit and all of them share one budget; a step that fails or runs out of time prints
# its one-line reason in its row (its log is in the output folder) and the others still run.
#
#   scripts/gpu_check.sh                          # on the GPU
#   GPU_CHECK_DEVICE=cpu scripts/gpu_check.sh     # the same steps on the CPU, small (tests/test_gpu_check.py)
#
# Data: the real Fashion-MNIST in ${TASK1_DATA_DIR:-data} where it is there, else generated data of the same shape
# (on the CPU: small generated data, always). The table says which.
# Settings (environment): GPU_CHECK_MEMBERS (members of each pack: 64; cpu 4), GPU_CHECK_ALONE (of them, how many
# are trained one after another: 8; cpu 3), GPU_CHECK_EPOCHS (2; cpu 1), GPU_CHECK_STACK (vmap), GPU_CHECK_BUDGET_S
# (270: the steps' own), GPU_CHECK_OUT (where the runs, logs, table.txt and gpu_check.json go: a new folder under
# ${TASK1_OUTPUT_DIR:-outputs}/gpu_check/), PYTHON (default: the checkout's .venv, else python3).
set -u
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
command -v "$PY" >/dev/null || { echo "gpu_check: no Python: $PY not found (set PYTHON=...)"; exit 1; }
exec "$PY" - <<'PYTHON'
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path.cwd()
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
CPU = DEVICE == "cpu"

missing = []
for name in ("torch", "lightning", "hydra", "omegaconf", "torchvision", "tensorboard", "matplotlib", "task1"):
    try:
        __import__(name)
    except Exception as e:  # not installed, or installed and broken (a CUDA library missing, say)
        missing.append(f"{name} ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
if missing:
    print(f"gpu_check: {sys.executable} cannot import {'; '.join(missing)}: use the checkout's .venv "
          f"(scripts/setup.sh) or set PYTHON=...")
    sys.exit(1)
import torch  # noqa: E402

if not CPU and not torch.cuda.is_available():
    print(f"gpu_check: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU "
          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); GPU_CHECK_DEVICE=cpu runs the "
          f"steps on the CPU")
    sys.exit(1)
sys.path.insert(0, str(ROOT / "scripts"))
from bench import data_root, job_starts  # noqa: E402

MEMBERS = int(os.environ.get("GPU_CHECK_MEMBERS", 4 if CPU else 64))
ALONE = min(MEMBERS, int(os.environ.get("GPU_CHECK_ALONE", 3 if CPU else 8)))
EPOCHS = int(os.environ.get("GPU_CHECK_EPOCHS", 1 if CPU else 2))
STACK = os.environ.get("GPU_CHECK_STACK", "vmap")
BUDGET = float(os.environ.get("GPU_CHECK_BUDGET_S", 270))
if os.environ.get("GPU_CHECK_OUT"):
    OUT = Path(os.environ["GPU_CHECK_OUT"]).resolve()
else:
    base = Path(os.environ.get("TASK1_OUTPUT_DIR", "outputs"), "gpu_check")
    base.mkdir(parents=True, exist_ok=True)
    OUT = Path(tempfile.mkdtemp(prefix=time.strftime("%Y-%m-%d_%H-%M-%S_"), dir=base)).resolve()
(OUT / "logs").mkdir(parents=True, exist_ok=True)
TRAINER = "trainer=cpu" if CPU else "trainer=gpu"

# Each step runs in a Python of its own that reports its peak memory: what torch's allocator held on the GPU, or on
# the CPU the process's peak resident set.
MEASURE = r"""
import json, os, resource, runpy, sys
import torch
target = sys.argv[1]
sys.argv = sys.argv[1:]
try:
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
finally:
    gpu = torch.cuda.is_available() and torch.cuda.is_initialized()
    peak = torch.cuda.max_memory_allocated() if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open(os.environ["GPU_CHECK_PEAK"], "w") as f:
        json.dump({"peak_mb": peak / 2**20, "on": "gpu" if gpu else "cpu"}, f)
"""


class StepError(Exception):
    pass


def run(slug: str, args: list[str], limit: float) -> dict:
    """`python <args>` (a module, or a script ending in .py) under MEASURE, within `limit` s and the budget left."""
    left = BUDGET - (time.monotonic() - START)
    if left < 5:
        raise StepError(f"not run: the {BUDGET:.0f} s budget is spent")
    limit = min(limit, left)
    log, peak = OUT / "logs" / f"{slug}.log", OUT / "logs" / f"{slug}.peak.json"
    start = time.perf_counter()
    with open(log, "w") as f:
        try:
            proc = subprocess.run([sys.executable, "-c", MEASURE, *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                  env={**os.environ, "GPU_CHECK_PEAK": str(peak)}, timeout=limit)
        except subprocess.TimeoutExpired:
            raise StepError(f"timed out after {limit:.0f} s (log: {log})") from None
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        raise StepError(f"exit {proc.returncode}: {lines[-1].strip() if lines else 'no output'} (log: {log})")
    measured = json.loads(peak.read_text())
    if not CPU and measured["on"] != "gpu":
        raise StepError(f"ran, but never used the GPU (log: {log})")
    return {"wall_s": wall, "peak_mb": measured["peak_mb"]}


def final(run_dir: Path, key: str = "test/acc") -> float:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if metrics.get("status") != "completed":
        raise StepError(f"{run_dir}: {metrics.get('status')}: {metrics.get('error')}")
    return metrics["final"][key]


def sweep(slug: str, model: str, seeds: int, packed: bool, limit: float) -> tuple[dict, str]:
    """A sweep of `seeds` seeds of `model`, packed in one pack or one job after another; trials per second."""
    folder = OUT / "sweeps" / slug
    launcher = ["hydra/launcher=packed", f"hydra.launcher.pack={seeds}", f"hydra.launcher.stack={STACK}"]
    done = run(slug, ["task1.train", "-m", f"model={model}", TRAINER, f"seed={','.join(map(str, range(seeds)))}",
                      f"trainer.max_epochs={EPOCHS}", f"paths.data_dir={DATA}", f"hydra.sweep.dir={folder}",
                      *(launcher if packed else [])], limit)
    runs = sorted(p.parent for p in folder.glob("*/metrics.json"))
    accs = [final(r) for r in runs]
    if len(accs) != seeds:
        raise StepError(f"{folder}: {len(accs)} of {seeds} jobs have metrics.json")
    done["trials_per_s"] = seeds / done["wall_s"]
    text = f"{done['trials_per_s']:.3f} trials/s; test/acc {min(accs):.3f}-{max(accs):.3f}"
    starts = job_starts(folder)[1:]  # the jobs after the first, which pays the imports
    periods = [b - a for a, b in itertools.pairwise(starts)]
    if not packed and periods:
        done["steady_trials_per_s"] = 1 / statistics.median(periods)
        text += f"; {done['steady_trials_per_s']:.3f} trials/s between job starts"
    return done, text


ROWS: list[dict] = []


def row(name: str, step) -> dict:
    try:
        measured, text = step()
        entry = {"part": name, "ok": True, **measured, "result": text}
    except Exception as e:  # the row says why; the other steps still run
        entry = {"part": name, "ok": False, "result": (str(e).splitlines() or [type(e).__name__])[0]}
    ROWS.append(entry)
    print(f"gpu_check: {name}: {'ok' if entry['ok'] else 'FAILED'} {entry['result']}", file=sys.stderr, flush=True)
    return entry


def train_run(precision: str) -> tuple[dict, str]:
    folder = OUT / "runs" / precision
    done = run(f"train_{precision}", ["task1.train", "model=mlp", TRAINER, f"trainer.precision={precision}",
                                      f"trainer.max_epochs={EPOCHS}", f"paths.data_dir={DATA}",
                                      f"hydra.run.dir={folder}"], 75)
    return done, f"MLP, {EPOCHS} epoch(s): test/acc {final(folder):.4f}"


def eval_run() -> tuple[dict, str]:
    ckpt = OUT / "runs" / "32-true" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise StepError(f"no {ckpt}: the 32-true run did not end")
    done = run("eval", ["task1", "eval", f"ckpt_path={ckpt}", f"out={OUT / 'eval'}", f"paths.data_dir={DATA}"], 45)
    acc = json.loads((OUT / "eval" / "test.json").read_text())["metrics"]["test/acc"]
    return done, f"test/acc {acc:.4f} of last.ckpt (the run's own test: {final(ckpt.parents[1]):.4f})"


def bench_run() -> tuple[dict, str]:
    out = OUT / "bench.json"
    args = ["--tiny"] if CPU else ["--device", "cuda", "--epochs", "1", f"paths.data_dir={DATA}"]
    done = run("bench", ["scripts/bench.py", "--epochs-only", "--out", str(out), *args], 120)
    models = json.loads(out.read_text())["models"]
    return done, "; ".join(f"{m} epoch C {r['C']['epoch_s']:.3f} s, B {r['B']['epoch_s']:.3f} s, C/B "
                           f"{r['C/B']['epoch_s']:.2f}" for m, r in models.items())


DATA, DATA_NAME = data_root(CPU, OUT / "data", os.environ.get("TASK1_DATA_DIR", "data"))
DATA = DATA.resolve()
name = torch.cuda.get_device_name() if not CPU else "CPU (GPU_CHECK_DEVICE=cpu: a dry run of the steps)"
print(f"gpu_check: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}; {DATA_NAME}; output {OUT}",
      file=sys.stderr, flush=True)
START = time.monotonic()  # the steps' budget: 270 s leaves the imports and the data half a minute of the five
row(f"train {TRAINER} 32-true", lambda: train_run("32-true"))
row(f"train {TRAINER} bf16-mixed", lambda: train_run("bf16-mixed"))
row(f"eval ({TRAINER})", eval_run)
for model in ("softmax", "mlp"):
    packed = row(f"{model}: packed, {MEMBERS} members ({STACK})",
                 lambda m=model: sweep(f"{m}_packed", m, MEMBERS, True, 90))
    alone = row(f"{model}: {ALONE} of them one after another",
                lambda m=model: sweep(f"{m}_alone", m, ALONE, False, 60))
    if packed["ok"] and alone["ok"]:
        packed["speedup"] = packed["trials_per_s"] / alone["trials_per_s"]
        packed["result"] += f"; {packed['speedup']:.1f}x one after another"
row(f"scripts/bench.py --device {DEVICE}", bench_run)

lines = [f"gpu_check {time.strftime('%Y-%m-%d %H:%M')}: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}; "
         f"{DATA_NAME}; {EPOCHS} epoch(s) a run; the steps {time.monotonic() - START:.0f} s",
         f"{'part':<40} {'status':<6} {'wall s':>7} {'peak MB':>8}  result"]
for r in ROWS:
    numbers = (f"{r['wall_s']:>7.1f} {r['peak_mb']:>8.1f}" if r["ok"] else f"{'-':>7} {'-':>8}")
    lines.append(f"{r['part']:<40} {'ok' if r['ok'] else 'FAILED':<6} {numbers}  {r['result']}")
lines.append(f"peak MB: torch.cuda.max_memory_allocated of the step's process{' (here: peak RSS)' if CPU else ''}; "
             f"trials/s: jobs over the whole command's wall time")
table = "\n".join(lines)
(OUT / "table.txt").write_text(table + "\n")
(OUT / "gpu_check.json").write_text(json.dumps({"device": name, "data": DATA_NAME, "rows": ROWS}, indent=1))
print(table)
sys.exit(0 if all(r["ok"] for r in ROWS) else 1)
PYTHON
