"""The Optuna search with hydra/launcher=packed: the trials of a batch train as one pack, each member reports to its
own trial after each epoch and leaves the pack when its trial is pruned; a pack of trials that was killed goes on.

Real searches from the command line on the generated data (test_search.py's settings): trials at lr 1e-4 stay under
val/acc 0.5 and are pruned after their second epoch, trials at lr 0.5 pass it and complete their three epochs.
"""

import json
import signal

import optuna
import pytest
import torch
from conftest import make_fashion_mnist, run_cli
from optuna.trial import TrialState
from test_packed import files, job, stop_after_an_epoch
from test_search import SEARCH, study_of
from test_sweeps import jobs_of, sweep_cli

from task1.pack.trainer import train_pack
from task1.sweeps.trial import StudyTrial

# lr decides the ending, weight_decay (packable, searched by the preset) makes each trial its own; one width
PACKED = [*SEARCH, "optimizer.lr=choice(0.0001,0.5)", "model.num_hiddens=32", "hydra.sweeper.n_jobs=4",
          "hydra.sweeper.n_trials=8"]
ENDING = {0.0001: TrialState.PRUNED, 0.5: TrialState.COMPLETE}


def trials_of(sweep) -> list[tuple]:
    """What the study holds of each trial: number, parameters, state, value, intermediate values."""
    return [(t.number, t.params, t.state, t.value, t.intermediate_values) for t in study_of(sweep).trials]


@pytest.mark.parametrize("stack", ["loop", "vmap"])
def test_a_member_whose_trial_is_pruned_stops_there_and_the_others_go_on(fake_root, tmp_path, stack):
    # a real study in memory: after its first epoch, a trial under val/acc 0.5 is pruned (its last one is not judged)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    quiet = ["logger=none", "figures.enabled=false", "optimized_metric=val/acc"]
    cfgs = [job(tmp_path, fake_root, str(i), *quiet, f"optimizer.lr={lr}")[1] for i, lr in enumerate((1e-4, 0.5, 1e-4))]
    trials = [StudyTrial(study.ask()) for _ in cfgs]
    results = train_pack(cfgs, stack=stack, trials=trials)
    assert [r["status"] for r in results] == ["pruned", "completed", "pruned"]
    assert [r["epochs"] for r in results] == [1, 2, 1] and "test/acc" not in results[0]["final"]
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.RUNNING, TrialState.PRUNED]  # the
    for t, r in zip(study.trials, results, strict=True):  # search tells the completed one, from its folder
        assert t.intermediate_values == {e["epoch"] - 1: e["val/acc"] for e in r["history"]}
    # a pruned member takes no step after it: its last checkpoint is that of its first epoch
    assert torch.load(tmp_path / "0" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0


@pytest.fixture(scope="module")
def searches(fake_root, tmp_path_factory) -> dict:
    """The same search (same sampler seed) with the packed launcher and with the basic one: sweep folder, output."""
    runs = {}
    for launcher in ("packed", "basic"):
        sweep = tmp_path_factory.mktemp(launcher) / "sweep"
        result = sweep_cli(*PACKED, f"hydra/launcher={launcher}", "logger=tensorboard", f"data.root={fake_root}",
                           f"hydra.sweep.dir={sweep}")
        runs[launcher] = (sweep, result.stdout + result.stderr)
    return runs


@pytest.mark.slow
def test_a_packed_search_trains_each_batch_as_a_pack_and_ends_as_the_basic_launcher(searches):
    (sweep, out), (basic, _) = searches["packed"], searches["basic"]
    assert "trials: batches of 4 (PackedLauncher)" in out
    assert out.count("Launching 4 jobs: 4 in 1 pack, 0 alone") == 2, out[-3000:]
    jobs, study = jobs_of(sweep), study_of(sweep)
    assert len(study.trials) == 8 and {t.params["optimizer.lr"] for t in study.trials} == set(ENDING)
    for t in study.trials:  # each member reported its own val/acc after each epoch, steps from 0
        history = jobs[str(t.number)]["history"]
        assert t.intermediate_values == {e["epoch"] - 1: e["val/acc"] for e in history}
        assert t.value == jobs[str(t.number)]["final"]["val/acc"]
    # the same trials (same parameters) ended with the same values as their jobs alone: stack=loop, bit for bit
    assert trials_of(sweep) == trials_of(basic)
    for t in study.trials:
        packed, alone = jobs[str(t.number)], jobs_of(basic)[str(t.number)]
        assert packed["history"] == alone["history"] and packed["final"] == alone["final"]


@pytest.mark.slow
def test_a_pruned_member_ends_as_a_pruned_job_and_the_rest_of_its_pack_goes_on(searches):
    (sweep, out), (basic, _) = searches["packed"], searches["basic"]
    jobs, study = jobs_of(sweep), study_of(sweep)
    packs = [study.trials[:4], study.trials[4:]]  # as the log says: each batch of 4 trained as one pack
    assert out.count("Launching 4 jobs: 4 in 1 pack, 0 alone") == 2, out[-3000:]
    assert any({t.state for t in pack} == set(ENDING.values()) for pack in packs)  # pruned beside completed
    for t in study.trials:
        metrics, folder = jobs[str(t.number)], sweep / str(t.number)
        assert t.state == ENDING[t.params["optimizer.lr"]]
        log = (folder / "train.log").read_text()
        if t.state == TrialState.PRUNED:  # judged from the second epoch on: it stopped there, its test split unseen
            assert metrics["status"] == "pruned" and metrics["epochs"] == 2 and len(metrics["history"]) == 2
            assert "test/acc" not in metrics["final"] and "epoch 3/3" not in log
            assert "the search pruned this trial after epoch 2 of 3" in log
            # it took no step after its second epoch: its last checkpoint is its job's alone, to the last bit
            ckpts = [torch.load(f / str(t.number) / "checkpoints" / "last.ckpt", weights_only=True)
                     for f in (sweep, basic)]
            assert ckpts[0]["global_step"] == ckpts[1]["global_step"] and ckpts[0]["epoch"] == ckpts[1]["epoch"]
            assert all(torch.equal(v, ckpts[1]["state_dict"][k]) for k, v in ckpts[0]["state_dict"].items())
        else:
            assert metrics["status"] == "completed" and metrics["epochs"] == 3 and "test/acc" in metrics["final"]
        # what the job alone writes (metrics.json, checkpoints, TensorBoard's files, figures), file for file
        assert files(folder) == files(basic / str(t.number))
    md = (sweep / "summary.md").read_text()
    counts = {s: sum(t.state == s for t in study.trials) for s in ENDING.values()}
    assert f"8 jobs: {counts[TrialState.COMPLETE]} completed, {counts[TrialState.PRUNED]} pruned" in md


@pytest.mark.slow
def test_a_pack_of_trials_killed_mid_run_goes_on_to_the_study_an_uninterrupted_search_ends_with(tmp_path):
    root = make_fashion_mnist(tmp_path / "data", n_train=12000, n_test=200)  # epochs long enough to kill one
    args = [*SEARCH, "optimizer.lr=choice(0.0001,0.5)", "model.num_hiddens=32", "hydra.sweeper.n_jobs=4",
            "hydra.sweeper.n_trials=4", "trainer.max_epochs=4", "figures.enabled=false", f"data.root={root}"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    sweep_cli(*args, "hydra/launcher=packed", f"hydra.sweep.dir={whole}")

    stop_after_an_epoch(["--multirun", *args, "hydra/launcher=packed", f"hydra.sweep.dir={killed}"], killed, 4,
                        signal.SIGKILL)
    assert not any(json.loads(p.read_text())["status"] == "completed" for p in killed.glob("*/metrics.json")), \
        "the pack ended before it was killed: use more data"
    left = [t.number for t in study_of(killed).trials if t.state == TrialState.RUNNING]
    assert left == [0, 1, 2, 3]  # the kill left the pack's trials running in the study, none pruned yet

    # the same command again: the trials left running are launched again, as one pack, from their states
    result = run_cli("--multirun", *args, "hydra/launcher=packed", f"hydra.sweep.dir={killed}")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert f"Launching {len(left)} jobs: {len(left)} in 1 pack, 0 alone" in out, out[-3000:]
    assert "resuming after epoch" in (killed / str(left[0]) / "train.log").read_text()
    assert not study_of(killed).get_trials(states=(TrialState.RUNNING,))
    assert trials_of(killed) == trials_of(whole)
    assert {t.state for t in study_of(whole).trials} == set(ENDING.values())  # pruning happened in both
    for n in range(4):
        a, b = (json.loads((s / str(n) / "metrics.json").read_text()) for s in (whole, killed))
        assert (b["status"], b["history"], b["final"]) == (a["status"], a["history"], a["final"])
