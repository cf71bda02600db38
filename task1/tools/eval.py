"""Evaluate a checkpoint on the test (or validation) split with the config of the run that made it.

    task1 eval ckpt_path=<checkpoint> [split=test|val] [out=<folder>] [trust=<module prefix>,...] [key=value ...]

Checkpoints carry their run's resolved config, so nothing else is needed; `key=value` overrides adjust it
(`paths.data_dir=...` for data that moved, `trainer.accelerator=cpu` for a checkpoint made on a GPU,
`data.eval_batch_size=...`) and are checked as train checks them. The metrics are printed and written to
`<out>/<split>.json`, with the prediction grid and confusion matrix as `<out>/<split>_predictions.png` and
`<out>/<split>_confusion.png`; `out` defaults to `<run folder>/eval/<checkpoint name>/`.

A checkpoint is data: the classes its config names must be task1's, torch's optimizers and schedulers,
Lightning's callbacks, loggers and plugins, or under a module prefix you trust (`trust=mypkg`, or
TASK1_TRUST=mypkg); anything else is refused before it is built (docs/errors.md, "What task1 trusts").
"""

import difflib
import logging
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from task1 import Task1Error, cli
from task1.core.config import check_values
from task1.core.trust import check_config, take_trust
from task1.io import dotted, override_key, write_json

log = logging.getLogger("task1")
SPLITS = ("test", "val")


def run_checkpoint(ckpt_path: str | Path, overrides: list[str] = ()) -> tuple[DictConfig, dict]:
    """The run's config and the model's state_dict from a task1 checkpoint (no pickled objects are loaded, and
    its config is data: what it would build is checked against what task1 trusts first, less the keys the
    user's own `overrides` set)."""
    from task1.core.checkpoints import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    try:
        config, state_dict = ckpt["hyper_parameters"]["config"], ckpt["state_dict"]
    except (KeyError, TypeError):  # another program's checkpoint
        raise Task1Error(f"ckpt_path={ckpt_path} is not a task1 checkpoint (it has no run config). Pass a "
                         f"checkpoint written by python -m task1.train.") from None
    check_config(config, f"ckpt_path={ckpt_path} (its hyper_parameters.config)", overrides)
    return OmegaConf.create(config), state_dict


def evaluate(ckpt_path: str | Path, overrides: list[str] = (), split: str = "test",
             out: Path | None = None) -> dict[str, float]:
    """Score the checkpointed model on its run's `split`; return {"<split>/loss": ..., "<split>/acc": ...}. With
    `out`, also draw the prediction grid and the confusion matrix there (and add per_class_acc)."""
    import torch  # here, not above: --help and a mistake in the arguments answer without torch and Lightning
    from hydra.utils import instantiate

    from task1 import drawer
    from task1.core.build import build_system, check_devices
    from task1.core.callbacks import PredictionFigures
    from task1.data.module import DataModule

    if split not in SPLITS:
        raise Task1Error(f"split={split} is not allowed: expected test or val.")
    overrides = take_trust(list(overrides))  # trust=mypkg: prefixes the user trusts (task1.core.trust)
    cfg, state_dict = run_checkpoint(ckpt_path, overrides)
    check_keys(cfg, overrides)
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.removeprefix("+") for o in overrides]))
    keys = {override_key(o) for o in overrides}
    moved = "paths.data_dir" in keys or os.environ.get("TASK1_DATA_DIR")
    if moved and "data.root" not in keys and "root" in cfg.data:  # the run's data.root holds the path it resolved
        cfg.data.root = cli.paths(list(overrides))["data_dir"]
    check_values(cfg)  # a bad value (data.eval_batch_size=0): one line, as for train
    check_devices(cfg.trainer)
    if cfg.get("threads") is not None:
        torch.set_num_threads(cfg.threads)
    datamodule = DataModule(instantiate(cfg.data))
    system = build_system(cfg)
    system.load_state_dict(state_dict)
    figures = PredictionFigures(out, datamodule.labels) if out is not None and system.classify else None
    # max_epochs=1: the one validation pass is the "last epoch" whose figures are drawn
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_model_summary=False,
                          callbacks=[figures] if figures else [], max_epochs=1)
    score = trainer.test if split == "test" else trainer.validate
    score(system, datamodule=datamodule, verbose=False)
    metrics = system.last_metrics(split)  # exact, as a run's metrics.json keeps them (not float32 copies)
    if figures:
        drawer.settle()  # the figures are drawn by a process of their own: on disk before this returns
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / f"{split}.json", {"ckpt_path": str(Path(ckpt_path).resolve()), "split": split,
                                           "overrides": list(overrides), "metrics": metrics,
                                           "per_class_acc": figures.per_class_acc.get(split) if figures else None})
    return metrics


def check_keys(cfg: DictConfig, overrides: list[str]) -> None:
    """Every override sets a key of the run's config (a typo such as data.eval_batch_sizee=7 is refused, as Hydra
    refuses it for train), unless it adds one with `+`; `paths.*` always (runs saved before `paths` lack them)."""
    known = dotted(OmegaConf.to_container(cfg))
    for override in overrides:
        key = override.split("=", 1)[0]
        if "=" not in override:
            raise Task1Error(f"{override}: expected key=value (e.g. data.eval_batch_size=1000).")
        if key.startswith(("+", "paths.")) or any(k == key or k.startswith(key + ".") for k in known):
            continue
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise Task1Error(f"{key} is not a key of the checkpoint's run config.{hint} (A key the run did not have is "
                         f"added with +{key}=...)")


def default_out(ckpt_path: Path) -> Path:
    """`<run>/eval/<checkpoint name>/` for a run's `checkpoints/<name>.ckpt`, else `<its folder>/eval/<name>/`."""
    folder = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    return folder / "eval" / ckpt_path.stem


@cli.exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    cli.answer_help(__doc__, args)
    own = {k: [a.split("=", 1)[1] for a in args if a.startswith(f"{k}=")] for k in ("ckpt_path", "split", "out")}
    if len(own["ckpt_path"]) != 1 or len(own["split"]) > 1 or len(own["out"]) > 1:
        print("usage: task1 eval ckpt_path=<checkpoint> [split=test|val] [out=<folder>] [key=value ...]"
              "   (--help says more)", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ckpt, split = Path(own["ckpt_path"][0]), (own["split"] or ["test"])[0]
    out = Path(own["out"][0]) if own["out"] else default_out(ckpt)
    rest = [a for a in args if a.split("=", 1)[0] not in own]
    metrics = evaluate(ckpt, rest, split, out)
    from task1.core.build import summary_table

    print(f"{ckpt} ({split} split)\n{summary_table(metrics)}\nwritten to {out / f'{split}.json'}")


if __name__ == "__main__":
    main()
