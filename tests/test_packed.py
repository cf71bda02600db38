"""Packed runs (task1/pack/, hydra/launcher=packed): a member of a pack is a job like any other (DESIGN.md rule 21).

On the generated data: what a member writes and ends with against the same job trained alone by Lightning, which
jobs share a pack, a member that diverges, and a packed sweep from the command line, killed and started again.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, compose_cfg, make_fashion_mnist, no_traceback, run_cli
from omegaconf import OmegaConf

from task1.pack.grouping import packs, unpackable
from task1.pack.trainer import train_pack
from task1.train import train

QUIET = ["trainer=cpu", "data.batch_size=64", "trainer.max_epochs=2"]


def job(tmp_path, root, name: str, *overrides: str):
    """A job's config as a sweep's job has it: composed, its folder set, resolved (what the pack is given)."""
    data = [] if "model=linear" in overrides else [f"data.root={root}"]  # linear regression: synthetic data
    cfg = compose_cfg(*QUIET, *data, f"output_dir={tmp_path / name}", *overrides)
    return cfg, OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def files(folder) -> set[str]:
    """What a run folder holds, by kind: TensorBoard's event files have a time and a process in their names."""
    return {"events" if ".tfevents." in p.name else str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file()} - {"checkpoints/pack_state.ckpt"}


@pytest.mark.parametrize("model", ["softmax", "linear"])
def test_a_pack_of_one_ends_bit_for_bit_where_the_job_alone_ends(fake_root, tmp_path, model):
    quiet = ["logger=none", "figures.enabled=false", "seed=3", f"model={model}"]
    alone_cfg, _ = job(tmp_path, fake_root, "alone", *quiet)
    _, member = job(tmp_path, fake_root, "member", *quiet)
    alone = train(alone_cfg)
    [packed] = train_pack([member])
    assert packed["status"] == "completed"
    # metrics.json as the job writes it, field for field, with the same floats (but the time it took)
    assert {k: v for k, v in packed.items() if k != "wall_time_s"} == {k: v for k, v in alone.items()
                                                                       if k not in ("wall_time_s", "provenance")} | {
        "provenance": packed["provenance"]}
    weights = [torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
               for name in ("alone", "member")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
def test_a_pack_of_four_writes_what_each_job_writes_and_ends_where_it_ends(fake_root, tmp_path):
    grid = [(seed, lr) for seed in (0, 1) for lr in (0.03, 0.1)]
    alone = [train(job(tmp_path, fake_root, f"alone_{s}_{lr}", f"seed={s}", f"optimizer.lr={lr}")[0])
             for s, lr in grid]
    for stack in ("loop", "vmap"):
        members = [job(tmp_path, fake_root, f"{stack}_{s}_{lr}", f"seed={s}", f"optimizer.lr={lr}")[1]
                   for s, lr in grid]
        packed = train_pack(members, stack=stack)
        for (s, lr), a, p in zip(grid, alone, packed, strict=True):
            assert p["status"] == "completed" and p.keys() == a.keys()
            assert files(tmp_path / f"{stack}_{s}_{lr}") == files(tmp_path / f"alone_{s}_{lr}")
            assert p["per_class_acc"] == a["per_class_acc"] or stack == "vmap"
            if stack == "loop":  # the job's own operations, in its order: the same floats
                assert p["history"] == a["history"] and p["final"] == a["final"]
                continue
            for key, value in a["final"].items():  # batched matmuls: equal within float rounding
                tolerance = 0.003 if key.endswith("/acc") else 1e-4 * abs(value)
                assert abs(p["final"][key] - value) <= tolerance, (stack, key, p["final"][key], value)
    # each member's own seed gave it its own start and batch order: the four ended apart
    assert len({json.dumps(p["final"]) for p in packed}) == 4
    # task1 eval reads a member's checkpoint as it reads any run's
    from task1.tools.eval import evaluate

    scored = evaluate(tmp_path / "vmap_1_0.1" / "checkpoints" / "last.ckpt")
    assert abs(scored["test/loss"] - packed[-1]["final"]["test/loss"]) <= 1e-6 * packed[-1]["final"]["test/loss"]


@pytest.mark.parametrize("stack", ["loop", "vmap"])
def test_a_member_that_diverges_fails_alone_and_the_others_go_on(fake_root, tmp_path, stack):
    members = [job(tmp_path, fake_root, name, "logger=none", "figures.enabled=false", f"optimizer.lr={lr}")[1]
               for name, lr in (("fine", 0.1), ("diverges", 1e38), ("alone", 0.1))]
    fine, diverged = train_pack(members[:2], stack=stack)
    assert fine == train_pack(members[2:], stack=stack)[0] | {"wall_time_s": fine["wall_time_s"]}  # unharmed
    assert fine["status"] == "completed" and fine["epochs"] == 2
    assert diverged["status"] == "failed" and diverged["repeats"] and "diverged" in diverged["error"]
    on_disk = json.loads((tmp_path / "diverges" / "metrics.json").read_text())
    assert on_disk["status"] == "failed" and not (tmp_path / "diverges" / "checkpoints" / "last.ckpt").exists()


def test_a_member_whose_saved_state_is_of_another_config_is_refused_and_the_others_go_on(fake_root, tmp_path):
    quiet = ["logger=none", "figures.enabled=false"]
    train_pack([job(tmp_path, fake_root, "first", *quiet)[1]])
    assert (tmp_path / "first" / "checkpoints" / "pack_state.ckpt").is_file()
    changed, other = (job(tmp_path, fake_root, name, *quiet, "optimizer.momentum=0.9")[1]
                      for name in ("first", "other"))
    refused, fine = train_pack([changed, other])
    assert refused["status"] == "failed" and "optimizer.momentum: 0.0 in the run, 0.9 now" in refused["error"]
    assert fine["status"] == "completed"


def test_jobs_that_differ_only_in_packable_values_share_a_pack(fake_root, tmp_path):
    def cfg(*overrides):
        return compose_cfg(*QUIET, f"data.root={fake_root}", *overrides)

    jobs = [cfg("seed=0"), cfg("seed=1", "optimizer.lr=0.3", "optimizer.momentum=0.9", "model.init_std=0.1"),
            cfg("data.batch_size=128"), cfg("model.impl=scratch"), cfg("optimizer=adam"), cfg("seed=2"),
            cfg("callbacks=early_stopping"), cfg("trainer.max_epochs=3"), cfg("model.bias_init=normal")]
    assert packs(jobs, 16) == [[0, 1, 5, 8], [2], [3], [4], [6], [7]]
    assert packs(jobs, 2) == [[0, 1], [5, 8], [2], [3], [4], [6], [7]]
    assert unpackable(jobs[6]) == "callbacks are set" and unpackable(jobs[0]) is None
    assert unpackable(cfg("+trainer.accumulate_grad_batches=2")) == "trainer.accumulate_grad_batches is set"
    # the hand-written twins pack too, among themselves
    scratch = [cfg("model.impl=scratch", "optimizer=sgd_scratch", f"seed={s}") for s in (0, 1)]
    assert packs(scratch, 16) == [[0, 1]]
    # compared as they resolve: a seed or an init_std that an interpolation carries is still the member's own
    resolved = [OmegaConf.create(OmegaConf.to_container(OmegaConf.merge(jobs[i], {"output_dir": str(tmp_path)}),
                                                        resolve=True)) for i in (0, 1, 5)]
    assert packs(resolved, 16) == [[0, 1, 2]]
    # synthetic data is drawn from the seed: another seed is other data, another pack
    assert packs([compose_cfg(*QUIET, "model=linear", f"seed={s}") for s in (0, 1, 0)], 16) == [[0, 2], [1]]


@pytest.mark.parametrize(("setting", "said"), [("stack=bmm", "hydra.launcher.stack=bmm is not allowed: expected one "
                                                               "of loop, vmap."),
                                               ("pack=0", "hydra.launcher.pack=0 is not allowed")])
def test_a_wrong_launcher_setting_is_one_line(fake_root, tmp_path, setting, said):
    out = no_traceback(run_cli("--multirun", "hydra/launcher=packed", f"hydra.launcher.{setting}", "seed=0,1",
                               f"data.root={fake_root}", f"hydra.sweep.dir={tmp_path}"))
    assert said in out and not list(tmp_path.glob("*/metrics.json"))


@pytest.mark.slow
def test_a_packed_sweep_packs_by_batch_size_and_records_a_member_refused(fake_root, tmp_path):
    result = run_cli("--multirun", "hydra/launcher=packed", f"data.root={fake_root}", *QUIET, "logger=none",
                     "optimizer.lr=-1,0.1", "data.batch_size=32,64", f"hydra.sweep.dir={tmp_path}")
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "Launching 4 jobs: 4 in 2 packs, 0 alone" in out, out[-3000:]
    jobs = {n: json.loads((tmp_path / str(n) / "metrics.json").read_text()) for n in range(4)}
    # Hydra orders the jobs by key: (32, -1), (32, 0.1), (64, -1), (64, 0.1)
    assert [jobs[n]["status"] for n in range(4)] == ["failed", "completed", "failed", "completed"]
    assert jobs[0]["error"].startswith("optimizer.lr=-1 is not allowed")  # refused before anything is built
    assert (tmp_path / "3" / ".hydra" / "overrides.yaml").is_file() and (tmp_path / "3" / "figures").is_dir()
    assert "epoch 2/2" in (tmp_path / "3" / "train.log").read_text()
    assert len((tmp_path / "summary.csv").read_text().splitlines()) == 5


def sweep_args(root, sweep) -> list[str]:
    return ["--multirun", "hydra/launcher=packed", f"data.root={root}", "trainer=cpu", "data.batch_size=32",
            "trainer.max_epochs=4", "logger=none", "figures.enabled=false", "seed=0,1", "optimizer.lr=0.03,0.1",
            f"hydra.sweep.dir={sweep}"]


def stop_after_an_epoch(args: list[str], sweep, members: int, sig: int) -> None:
    """`python -m task1.train <args>` started, and sent `sig` once each of the pack's `members` (folders 0, 1, ...
    of `sweep`) has ended an epoch, a moment into the next one; the command did not end well."""
    proc = subprocess.Popen([sys.executable, "-m", "task1.train", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    states = [sweep / str(n) / "checkpoints" / "pack_state.ckpt" for n in range(members)]
    deadline = time.monotonic() + 300
    while not all(s.exists() for s in states) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(sig)
    assert proc.wait() != 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_packed_sweep_killed_mid_epoch_resumes_every_member_to_where_an_uninterrupted_one_ends(tmp_path, sig):
    root = make_fashion_mnist(tmp_path / "data", n_train=12000, n_test=200)  # epochs long enough to kill one
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    result = run_cli(*sweep_args(root, whole))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "Launching 4 jobs: 4 in 1 pack, 0 alone" in result.stdout + result.stderr

    stop_after_an_epoch(sweep_args(root, killed), killed, 4, sig)
    said = [json.loads(p.read_text()) for p in killed.glob("*/metrics.json")]
    assert not any(m["status"] == "completed" for m in said), "the pack ended before it was killed: use more data"
    if sig == signal.SIGTERM:  # each member's folder says it was stopped, and how to go on
        assert len(said) == 4 and all(m["status"] == "interrupted" for m in said)
        assert "Continue with the same sweep command" in said[0]["error"]

    result = run_cli(*sweep_args(root, killed))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "resuming after epoch" in (killed / "0" / "train.log").read_text()
    for n in range(4):
        a, b = (json.loads((s / str(n) / "metrics.json").read_text()) for s in (whole, killed))
        assert b["status"] == "completed" and b["history"] == a["history"] and b["final"] == a["final"]

    # started again once more: every member is over, reused, not trained again
    before = [(killed / str(n) / "metrics.json").stat().st_mtime_ns for n in range(4)]
    result = run_cli(*sweep_args(root, killed))
    assert result.returncode == 0 and "4 alone" in result.stdout + result.stderr
    assert [(killed / str(n) / "metrics.json").stat().st_mtime_ns for n in range(4)] == before
    assert len((killed / "summary.csv").read_text().splitlines()) == 5  # the report reads the members' folders


# A member's folder taken by another process just after the launcher found it free (alone_reason): a helper process
# takes it then, and the wrapper writes down what the folder held at that moment
RACE = """import json, subprocess, sys
from pathlib import Path
from task1 import train
from task1.pack import launcher

HOLD = "import sys, time\\nfrom task1.io import hold\\nwith hold(sys.argv[1]):\\n    print('held', flush=True)\\n    \
time.sleep(600)"
found, helpers, taken = launcher.alone_reason, [], Path(sys.argv[1])

def racing(job):
    why = found(job)
    if job.num == 1:
        helpers.append(subprocess.Popen([sys.executable, "-c", HOLD, job.folder], stdout=subprocess.PIPE, text=True))
        assert helpers[0].stdout.readline() == "held\\n"
        files = {str(p.relative_to(job.folder)): p.read_bytes().hex() for p in job.folder.rglob("*") if p.is_file()}
        taken.write_text(json.dumps({"pid": helpers[0].pid, "files": files}))
    return why

launcher.alone_reason = racing
sys.argv = ["task1.train", *sys.argv[2:]]
try:
    train.main()
finally:
    for helper in helpers:
        helper.kill()
"""


@pytest.mark.slow
def test_a_member_whose_folder_another_process_takes_is_left_to_it_and_the_pack_trains_the_others(fake_root, tmp_path):
    sweep, scratch, taken = tmp_path / "sweep", tmp_path / "tmp", tmp_path / "taken.json"
    scratch.mkdir()
    result = subprocess.run([sys.executable, "-c", RACE, str(taken), "--multirun", "hydra/launcher=packed",
                             f"data.root={fake_root}", "trainer=cpu", "trainer.max_epochs=1", "logger=none",
                             "figures.enabled=false", "seed=0,1", f"hydra.sweep.dir={sweep}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(scratch)})
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "Traceback" not in out and "1 pack, 0 alone" in out, out[-3000:]
    held = json.loads(taken.read_text())
    assert out.count(f"{sweep / '1'} is in use by process {held['pid']} on ") == 1, out[-3000:]
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "completed"  # the pack went on
    files = {str(p.relative_to(sweep / "1")): p.read_bytes().hex() for p in (sweep / "1").rglob("*") if p.is_file()}
    assert files == held["files"]  # byte for byte as the other process took it
    assert list(scratch.iterdir()) == []  # it trained nowhere else (a scratch folder, its result lost)
    assert "| 1 | in use |" in (sweep / "summary.md").read_text()


# every model, both implementations, every optimizer and scheduler task1 ships (each at least once), the second
# member with its own seed and its own values of every hyperparameter its optimizer and scheduler have
SHIPPED = [("linear", "torch", "sgd", "step", ["optimizer.momentum=0.9", "optimizer.nesterov=true"]),
           ("linear", "scratch", "sgd_scratch", "none", ["optimizer.momentum=0.9", "optimizer.dampening=0.1",
                                                         "optimizer.weight_decay=0.001"]),
           ("softmax", "torch", "adam", "cosine", ["optimizer.betas=[0.8,0.99]", "optimizer.eps=1e-6",
                                                   "scheduler.eta_min=0.0001"]),
           ("softmax", "scratch", "sgd_scratch", "multistep", ["optimizer.momentum=0.5", "optimizer.nesterov=true",
                                                               "scheduler.milestones=[1]", "scheduler.gamma=0.5"]),
           ("mlp", "torch", "adamw", "onecycle", ["optimizer.weight_decay=0.05", "scheduler.pct_start=0.5",
                                                  "model.init_std=0.05"]),
           ("mlp", "scratch", "sgd", "step", ["optimizer.momentum=0.9", "optimizer.weight_decay=0.001",
                                              "scheduler.gamma=0.3", "scheduler.step_size=3",
                                              "model.bias_init=normal"])]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "impl", "optimizer", "scheduler", "own"), SHIPPED,
                         ids=["-".join(s[:4]) for s in SHIPPED])
def test_every_model_implementation_optimizer_and_scheduler_packs_and_each_member_ends_as_its_job(
        fake_root, tmp_path, model, impl, optimizer, scheduler, own):
    shared = ["logger=none", "figures.enabled=false", f"model={model}", f"model.impl={impl}",
              f"optimizer={optimizer}", f"scheduler={scheduler}"]
    if model == "mlp":
        shared.append("model.num_hiddens=16")
    if impl == "scratch" and scheduler == "step":  # a scheduler stepped per batch: the interval is the pack's
        shared.append("scheduler.interval=step")
    # (the synthetic data of linear regression is drawn from the seed: its jobs share a pack at one seed)
    values = [["seed=0"], [f"seed={int(model != 'linear')}", "optimizer.lr=0.02", *own]]
    cfgs = [job(tmp_path, fake_root, f"m{i}", *shared, *v)[1] for i, v in enumerate(values)]
    assert len(packs(cfgs, 16)) == 1, "the two jobs share a pack"
    alone = [train(job(tmp_path, fake_root, f"alone{i}", *shared, *v)[0]) for i, v in enumerate(values)]
    for stack in ("loop", "vmap"):
        members = [job(tmp_path, fake_root, f"{stack}{i}", *shared, *v)[1] for i, v in enumerate(values)]
        for a, p in zip(alone, train_pack(members, stack=stack), strict=True):
            assert p["status"] == "completed", p.get("error")
            if stack == "loop":
                assert p["history"] == a["history"] and p["final"] == a["final"]
                continue
            for key, value in a["final"].items():
                tolerance = 0.003 if key.endswith("/acc") else 1e-4 * abs(value) + 1e-12
                assert abs(p["final"][key] - value) <= tolerance, (stack, key, p["final"][key], value)
    assert alone[0]["final"] != alone[1]["final"]  # the second member's values took effect
