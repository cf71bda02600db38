"""Not a test: a two-process CPU DDP fit with seed=null in which each rank writes which training examples it was
given in epoch 1 to <out>/rank<r>.json. `python -m ddp_seen_examples <data root> <out>`, with tests/ on the path;
Lightning starts rank 1 by running the same command again."""

import json
import sys
from pathlib import Path

from conftest import compose_cfg
from lightning.pytorch.callbacks import Callback

from task1.core.build import build


class SeenExamples(Callback):
    """Records the index in the training split of every example of every training batch."""

    def __init__(self, out: Path):
        self.out, self.seen = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        split = trainer.datamodule.splits["train"][0].flatten(1)  # (N, 784): every image differs
        self.seen += (batch[0].flatten(1)[:, None] == split[None]).all(-1).int().argmax(1).tolist()

    def on_train_epoch_end(self, trainer, pl_module):
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


if __name__ == "__main__":
    root, out = sys.argv[1], Path(sys.argv[2])
    cfg = compose_cfg(f"data.root={root}", f"output_dir={out}", "seed=null", "trainer=ddp", "trainer.devices=2",
                      "trainer.accelerator=cpu", "trainer.max_epochs=1", "data.batch_size=8", "logger=none",
                      "figures.enabled=false")
    built = build(cfg, callbacks=(SeenExamples(out),))
    built.trainer.fit(built.system, datamodule=built.datamodule)
