"""last.ckpt at a fixed step cadence, and always at the end of training."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """Keep `last.ckpt` current: every `every_n_train_steps`, and at the final step.

    Lightning's ModelCheckpoint skips the final save when training stops at max_steps between
    two cadence points, so a finished run would look unfinished to `resume=auto`.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int) -> None:
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=every_n_train_steps)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last_global_step_saved != trainer.global_step and not trainer.fast_dev_run:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
