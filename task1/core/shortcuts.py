"""Speed-ups that reach into Lightning's internals, in one place, each with what it relies on and why.

Lightning's automatic-optimization loop spends more time per step than a softmax regression's arithmetic.
These short-cuts remove work that does nothing for task1's runs (measured in docs/performance.md). Each one rests
on a detail of Lightning that an upgrade may change; `check()` verifies every such detail, and a test fails
loudly when one is gone, so an upgrade cannot silently make a short-cut wrong or useless.
"""

import contextlib
import inspect

import lightning as L
from lightning.pytorch.profilers import PassThroughProfiler


class QuietProfiler(PassThroughProfiler):
    """Lightning's default (no profiling) without its cost.

    Relies on: the Trainer wraps every hook call in `profiler.profile(name)`. The default profiler returns a
    new generator-based context manager each time; this one returns one shared nullcontext.
    `trainer.profiler=simple` (or advanced, pytorch) still profiles.
    """

    _null = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return self._null


class QuietHooks:
    """A LightningModule mixin: the per-step hooks that do nothing for task1 cost nothing either.

    - `_current_fx_name`: Lightning names the running hook on the module twice per hook call, many times a step;
      `nn.Module.__setattr__` looks for parameters, buffers and submodules first. A string is none of those.
    - `configure_gradient_clipping`: called every step; unset or 0, the default checks its arguments and clips
      nothing.
    """

    def __setattr__(self, name: str, value) -> None:
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if gradient_clip_val:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


class OnDeviceBatches:
    """A LightningDataModule mixin: a batch already on the device is passed through as it is.

    Lightning's default transfer walks the batch and calls `.to(device)` on every tensor, every step, to no
    effect when the data module keeps its splits on the device.
    """

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        X, y = batch
        if X.device == device and y.device == device:
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)


def store_signature(method) -> None:
    """Lightning inspects `training_step`'s signature before every step (to know whether to pass batch_idx);
    inspect answers from a stored `__signature__` at once."""
    method.__signature__ = inspect.signature(method)


def stop_as_on_sigterm(trainer: L.Trainer) -> None:
    """End training after this batch as Lightning does on SIGTERM (it raises SIGTERMException at the end of the
    batch, and the checkpoint callback saves), without sending a signal: Lightning's SIGTERM handler makes a
    collective call under DDP from inside the handler, which can pair with another rank's gradient all-reduce.

    Relies on: `trainer._signal_connector.received_sigterm` is the flag the training loops read at the end of
    each batch (`training_epoch_loop.on_advance_end`).
    """
    trainer._signal_connector.received_sigterm = True


def go_manual(module: L.LightningModule) -> None:
    """Switch `module` to manual optimization once the Trainer has checked its configuration (call it from the
    `setup` hook): Lightning refuses `accumulate_grad_batches` and `gradient_clip_val` with manual optimization,
    but task1's manual loop honours both itself. The Trainer keeps its own `accumulate_grad_batches`, so all that
    reads it (the loggers' step, checkpoint callbacks, `estimated_stepping_batches`) sees what it sees under the
    automatic loop.

    Relies on: `Trainer._run` checks the loop configuration (`_verify_loop_configurations`) before the setup
    hook, and the fit loop reads `automatic_optimization` afresh at every batch and when it sets up the
    optimizers (after the setup hook).
    """
    module.automatic_optimization = False


def backward_sync(strategy, block: bool) -> contextlib.AbstractContextManager:
    """No gradient all-reduce under data parallelism while `block`: the micro-batches of an accumulation that
    are not its last, as Lightning's automatic loop does (its `_block_parallel_sync_behavior`)."""
    from lightning.pytorch.loops.utilities import _block_parallel_sync_behavior

    return _block_parallel_sync_behavior(strategy, block)


def check() -> list[str]:
    """What the short-cuts rely on that this Lightning no longer has: an empty list when all is in place."""
    from lightning.pytorch.trainer import call
    from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature

    problems = []
    if "pl_module._current_fx_name = " not in inspect.getsource(call._call_lightning_module_hook):
        problems.append("the Trainer no longer sets LightningModule._current_fx_name in its hook calls")
    if "_current_fx_name" not in vars(L.LightningModule()):
        problems.append("LightningModule no longer has the attribute _current_fx_name")
    if "profiler.profile(" not in inspect.getsource(call._call_lightning_module_hook):
        problems.append("the Trainer no longer wraps hook calls in profiler.profile()")

    def one_arg(batch):
        pass

    from lightning.pytorch.loops import training_epoch_loop
    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    if "received_sigterm" not in vars(_SignalConnector(None)) or "self.trainer.received_sigterm" not in \
            inspect.getsource(training_epoch_loop._TrainingEpochLoop.on_advance_end):
        problems.append("the training loop no longer ends on _SignalConnector.received_sigterm at a batch's end")
    from lightning.pytorch.loops import utilities

    run = inspect.getsource(L.Trainer._run)
    if not 0 <= run.find("_verify_loop_configurations(") < run.find("_call_setup_hook(") or \
            "automatic_optimization" not in inspect.getsource(training_epoch_loop._TrainingEpochLoop.advance):
        problems.append("the Trainer no longer checks the loop configuration before the setup hook, or no longer "
                        "reads automatic_optimization at every batch")
    if not hasattr(utilities, "_block_parallel_sync_behavior"):
        problems.append("lightning.pytorch.loops.utilities._block_parallel_sync_behavior is gone")
    one_arg.__signature__ = inspect.signature(lambda batch, batch_idx: None)
    if not is_param_in_hook_signature(one_arg, "batch_idx"):
        problems.append("Lightning's hook-signature check no longer reads a stored __signature__")
    for cls, name, params in ((L.LightningModule, "configure_gradient_clipping",
                               ["self", "optimizer", "gradient_clip_val", "gradient_clip_algorithm"]),
                              (L.LightningDataModule, "transfer_batch_to_device",
                               ["self", "batch", "device", "dataloader_idx"])):
        if list(inspect.signature(getattr(cls, name)).parameters) != params:
            problems.append(f"{cls.__name__}.{name} no longer takes ({', '.join(params)})")
    return problems
