"""The shape of a task1 config: the nodes task1 reads itself, as dataclasses (the form of Hydra's structured configs).

A dataclass's fields are the node's closed set of keys and their annotations its types (`task1.checks` adds ranges).
A node that names a class (`_target_`) takes that class's arguments instead, typed by the class's own signature;
a dataclass for such a node (`Scheduler`) adds the keys task1 reads beside them. `Any` is a node or value task1
leaves to what reads it. Nothing here imports Lightning: `task1.core.config` checks a config against these.
"""

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from task1.checks import Check, Folder, NonNegativeInt, PositiveInt


@dataclass
class Paths:
    data_dir: Folder
    output_dir: Folder


@dataclass
class Figures:
    enabled: bool
    every_n_epochs: NonNegativeInt


@dataclass
class Model:
    """The model node's own keys. The net's arguments beside them (`num_hiddens`, ...) are keys that `net`
    interpolates (`${model.num_hiddens}`), and typed by the net's signature."""

    net: Any  # the nn.Module to train: a _target_ node
    loss: Any  # loss(y_hat, y, reduction=...): a _target_ node with _partial_: true
    task: Literal["classification", "regression"]
    loss_reduction: Literal["mean", "sum"]
    impl: Literal["torch", "scratch"] | None = None  # task1's nets only: the module that ${model.impl} names


@dataclass
class Scheduler:
    """The keys task1 reads beside the arguments of the scheduler's class: when Lightning steps it."""

    interval: Literal["epoch", "step"]
    frequency: PositiveInt


@dataclass
class Loop:
    """conf/loop/: who writes the training loop (task1.models.system.System.manual_update for manual)."""

    name: Literal["automatic", "manual"]
    zero_grad: bool


@dataclass
class Show:
    """`task1 show`."""

    split: str
    count: PositiveInt
    ncols: PositiveInt
    classes: Any


@dataclass
class LrSchedule:
    """`task1 lr-schedule`."""

    train_examples: PositiveInt | None


@dataclass
class Reported:
    """An experiment's published figures (conf/experiment/), read by `task1 reproduce`."""

    source: str
    kind: Literal["classification", "regression", "asserts"]
    train_acc: Any
    test_acc: Any
    loss: Any
    loss_examples: Any
    w: Any
    b: Any
    train_loss_below: Any
    train_acc_above: Any
    test_acc_above: Any


@dataclass
class Optuna:
    """Where a trial of a search from before 2026-12 found its trial."""

    storage: Any
    study_name: Any
    trial: Any


@dataclass
class Config:
    """The top level."""

    data: Any
    model: Model
    optimizer: Any
    scheduler: Scheduler | None
    trainer: Any
    logger: Any
    callbacks: Any
    loop: Loop
    seed: int | None
    threads: PositiveInt | None
    output_dir: str
    figures: Figures
    ckpt_path: Annotated[str, Check("the path of a .ckpt file")] | None
    resume: Annotated[str, Check("a run folder")] | None
    checkpoint_every_n_steps: PositiveInt | None
    optimized_metric: Any  # one metric, or a list for a multi-objective search
    paths: Paths
    optuna: Optuna
    show: Show
    lr_schedule: LrSchedule
    reported: Reported
