"""Train the members of a pack in one process, one loop: Lightning's fit loop written out once for all of them.

What packing saves is what every job pays alone: the process, the imports, the data set read, Lightning's
per-step machinery. Two ways to take a step (`stack`):

- "loop": each member's epoch in turn, step by step the very operations of the job alone, so a member ends bit
  for bit where its job ends (the default: on the CPU one bmm over stacked weights costs about what K matmuls
  cost, and a member's whole epoch in a row keeps its weights in the caches, where stepping the members in
  turn evicts them: an MLP's weights and gradients are 1.6 MB).
- "vmap": one batched forward and backward over the members' weights stacked (torch.func.vmap of
  functional_call; each member's own parameters stay leaf tensors, gathered by torch.stack inside autograd, so
  each keeps its own real torch optimizer and scheduler). The matmuls are batched, so results agree with the
  job alone within float rounding, not bit for bit; it is the way for a GPU, where K small matmuls leave it idle.

Each member keeps its own batch order (its seed), optimizer, scheduler, sums and files (task1.pack.member). A
member whose loss stops being finite is marked failed and leaves the pack; the others go on. So does a member
whose search trial is pruned (task1.pack.member): it ends at once, as its job alone ends, and trains no more.
"""

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.func import functional_call, vmap

from task1 import Task1Error, drawer, first_line
from task1.core.runs import failure_metrics
from task1.data.loader import TensorLoader
from task1.io import write_json
from task1.pack.grouping import STACKS
from task1.pack.member import Member

log = logging.getLogger("task1")


def device_of(cfg: DictConfig) -> str:
    accelerator = str(cfg.trainer.get("accelerator"))
    return "cuda" if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu"


def train_pack(cfgs: list[DictConfig], choices: list[dict | None] | None = None, stack: str = "loop",
               trials: list | None = None) -> list[dict]:
    """Train the jobs `cfgs` (resolved configs that differ only in packable values: task1.pack.grouping) as one
    pack, each reporting to its search trial in `trials` (task1.sweeps.trial.StudyTrial, or None); return each
    one's metrics.json as written (a failed member's says why)."""
    if stack not in STACKS:
        raise ValueError(f"stack={stack!r}: expected one of {', '.join(STACKS)}")
    first, device = cfgs[0], device_of(cfgs[0])
    start = time.perf_counter()
    data = instantiate(first.data)  # one data set for the pack: members differ in their shuffling seed alone
    data.prepare()
    data.setup()
    data.splits = {k: (X.to(device), y.to(device)) for k, (X, y) in data.splits.items()}
    if (first.get("figures") or {}).get("enabled"):
        drawer.start()
    members, refused = [], {}
    for i, (cfg, chosen, trial) in enumerate(zip(cfgs, choices or [None] * len(cfgs), trials or [None] * len(cfgs),
                                                 strict=True)):
        try:
            members.append(Member(cfg, data, chosen, device, trial))
        except Exception as e:  # this job alone fails (a state it cannot go on from, a logger it cannot build)
            refused[i] = _refused(cfg, e)
    if not members:
        return [refused[i] for i in range(len(cfgs))]
    shared = (time.perf_counter() - start - sum(m.seconds for m in members)) / len(members)
    for member in members:  # the data set, read once for all
        member.seconds += shared
    try:
        with _deterministic(all(cfg.seed is not None for cfg in cfgs)), _ending_on_sigterm():
            fit(members, data, stack)
    except (KeyboardInterrupt, SystemExit):  # each member's folder says so; its state after its epoch is kept
        for member in members:
            if member.result is None:  # (a failed or pruned one is over)
                member.interrupted()
        raise
    tested = []  # each member's test first, its figures queued; then one wait for all of them (not one a member)
    for member in members:
        if member.result is not None:  # failed, or pruned: its files are written
            continue
        try:
            with timed([member]):
                tested.append((member, evaluate([member], data.splits["test"], first.data.eval_batch_size, stack,
                                                "test")[0]))
        except Exception as e:  # this member's files: the others still end
            member.fail(e)
    with timed([m for m, _ in tested]):
        drawer.settle()  # the prediction figures on disk before any metrics.json says its run is over
    for member, test in tested:
        try:
            member.finish(test, settled=True)
        except Exception as e:
            member.fail(e)
    drawer.settle()  # every member's figures on disk, as train() leaves a run's
    results = [m.result for m in members]
    done = iter(results)
    return [refused[i] if i in refused else next(done) for i in range(len(cfgs))]


def _refused(cfg: DictConfig, error: Exception) -> dict:
    """metrics.json of a job that could not join the pack, written; its error logged, as a failed job's is."""
    metrics, _ = failure_metrics(error, [], cfg.get("seed"), Path(cfg.output_dir))
    write_json(Path(cfg.output_dir) / "metrics.json", metrics)
    log.error("%s: %s", cfg.output_dir, first_line(error), exc_info=not isinstance(error, Task1Error))
    return metrics


@contextlib.contextmanager
def timed(members: list[Member]):
    """The block's time, shared out among `members`: a member's wall_time_s is what it cost the pack."""
    start = time.perf_counter()
    try:
        yield
    finally:
        for m in members:
            m.seconds += (time.perf_counter() - start) / max(1, len(members))


@contextlib.contextmanager
def _ending_on_sigterm():
    """SIGTERM (kill, scancel, a preemption) ends the pack at once, as Ctrl-C does: what the pack keeps of a member
    is its state after its latest epoch, written atomically, so stopping anywhere in between loses nothing more."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame) -> None:
        raise SystemExit(128 + signum)

    before = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def _deterministic(on: bool):
    """What Lightning's Trainer(deterministic=True) does for a seeded run, for the pack's loop."""
    before = torch.are_deterministic_algorithms_enabled()
    if on:  # cuBLAS is deterministic only with this workspace (Lightning sets the same)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def fit(members: list[Member], data, stack: str) -> None:
    """Every epoch of every member; a member that fails, or whose trial is pruned, leaves the pack at once."""
    max_epochs = max(m.max_epochs for m in members)
    eval_batch_size = members[0].cfg.data.eval_batch_size
    for epoch in range(min(m.epochs_done for m in members), max_epochs):
        active = [m for m in members if m.result is None and m.epochs_done <= epoch]
        if not active:
            break
        for m in active:
            m.start_epoch(epoch)
        if stack == "loop":  # member after member through the epoch: one net's weights stay in the caches
            for m in active:
                with timed([m]):
                    for batch_idx, batch in enumerate(m.loader):
                        if _loop_step([m], [batch], batch_idx, epoch):
                            break
        else:  # all members in step, each step one batched call
            with timed(active):
                running = [(m, iter(m.loader)) for m in active]
                for batch_idx in range(len(active[0].loader)):
                    batches = [next(it) for _, it in running]
                    failed = _vmap_step([m for m, _ in running], batches, batch_idx, epoch)
                    running = [(m, it) for m, it in running if m not in failed]
        active = [m for m in active if m.failed is None]
        with timed(active):
            val = evaluate(active, data.splits["val"], eval_batch_size, stack, "val")
        for m, metrics in zip(active, val, strict=True):
            try:
                with timed([m]):
                    m.end_epoch(epoch, metrics)
                    if m.pruned:  # its files now, as its job alone writes them when pruned: no test split
                        m.finish({})
            except Exception as e:
                m.fail(e)


def _loop_step(members: list[Member], batches: list, batch_idx: int, epoch: int) -> list[Member]:
    """One training step of each member in turn: Lightning's automatic optimization, operation for operation."""
    failed = []
    for m, (X, y) in zip(members, batches, strict=True):
        try:
            y_hat = m.net(X)
            loss = m.loss(y_hat, y, reduction=m.reduction)
            m.add("train", loss, y_hat, y)
            m.optimizer.zero_grad()
            loss.backward()
            m.optimizer.step()
            m.after_step(loss, batch_idx, len(y), epoch)
        except Exception as e:
            m.fail(e)
            failed.append(m)
    return failed


def _stacked(members: list[Member]) -> dict[str, torch.Tensor]:
    """The members' parameters, stacked: (K, *shape) each, still connected to each member's own leaves."""
    names = [n for n, _ in members[0].net.named_parameters()]
    own = [dict(m.net.named_parameters()) for m in members]
    return {n: torch.stack([p[n] for p in own]) for n in names}


def _vmap_step(members: list[Member], batches: list, batch_idx: int, epoch: int) -> list[Member]:
    """One step of all the members at once: a batched forward and backward, then each member's own optimizer."""
    net, loss_fn, reduction = members[0].net, members[0].loss, members[0].reduction
    X = torch.stack([b[0] for b in batches])  # (K, n, ...)
    y = torch.stack([b[1] for b in batches])  # (K, n)
    y_hat = vmap(lambda p, X: functional_call(net, p, (X,)))(_stacked(members), X)  # (K, n, outputs)
    losses = vmap(lambda y_hat, y: loss_fn(y_hat, y, reduction=reduction))(y_hat, y)  # (K,)
    for m in members:
        m.optimizer.zero_grad()
    losses.sum().backward()  # each member's gradient is its own loss's: the sum only joins the graphs
    failed = []
    for k, m in enumerate(members):
        try:
            m.optimizer.step()
            m.add("train", losses[k], y_hat[k], y[k])
            m.after_step(losses[k], batch_idx, len(y[k]), epoch)
        except Exception as e:
            m.fail(e)
            failed.append(m)
    return failed


@torch.no_grad()
def evaluate(members: list[Member], split: tuple, batch_size: int, stack: str, stage: str) -> list[dict]:
    """Each member's loss (and accuracy) on `split`, as System's validation and test steps sum them."""
    if not members:
        return []
    hooks = {"val": "validation"}.get(stage, stage)  # Lightning's hook names: on_validation_..., on_test_...
    for m in members:
        m.hook(f"{hooks}_epoch_start")
    for batch_idx, (X, y) in enumerate(TensorLoader(*split, batch_size)):
        if stack == "loop":
            for m in members:
                y_hat = m.net(X)
                m.add(stage, m.loss(y_hat, y, reduction=m.reduction), y_hat, y)
        else:
            net, loss_fn, reduction = members[0].net, members[0].loss, members[0].reduction
            y_hat = vmap(functional_call, in_dims=(None, 0, None))(net, _stacked(members), (X,))  # (K, n, outputs)
            for k, m in enumerate(members):
                m.add(stage, loss_fn(y_hat[k], y, reduction=reduction), y_hat[k], y)
        for m in members:
            m.hook(f"{hooks}_batch_end", None, (X, y), batch_idx)
    for m in members:
        m.hook(f"{hooks}_epoch_end")
    return [m.epoch_metrics(stage) for m in members]
