"""Report the data that was lost or used: training samples skipped, validation clips evaluated."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)

SKIP_KEYS = {"num_corrupt_skipped": "data/corrupt_skipped", "num_too_few_tracks_skipped": "data/too_few_tracks_skipped"}


class DataHealthLogger(L.Callback):
    """Running totals of the skip counters that the DataModules attach to every training batch, and
    per validation (or test) epoch `<stage>/clips_evaluated` (summed over ranks; the DDP sampler may
    repeat a few clips to even out ranks) and `<stage>/clips_skipped` (damaged or too few tracks)."""

    def __init__(self) -> None:
        self.totals = {key: 0 for key in SKIP_KEYS}
        self.evaluated = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: dict[str, Any], batch_idx: int) -> None:
        for key, name in SKIP_KEYS.items():
            if key in batch:
                self.totals[key] += int(batch[key])
                value = torch.tensor(float(self.totals[key]), device=pl_module.device)
                pl_module.log(name, value, reduce_fx="sum", sync_dist=True, on_step=True, on_epoch=False)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluated = 0

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluated += int(batch["video"].shape[0])

    on_test_batch_end = on_validation_batch_end

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "val", trainer.val_dataloaders)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "test", trainer.test_dataloaders)

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str, loaders: Any) -> None:
        evaluated = int(trainer.strategy.reduce(torch.tensor(float(self.evaluated), device=pl_module.device),
                                                reduce_op="sum"))
        # Every rank holds the whole validation set, so its skip counts need no reduction.
        skipped = [getattr(loader.dataset, "skipped", None) for loader in _as_list(loaders)]
        corrupt = sum(s.corrupt for s in skipped if s is not None)
        too_few = sum(s.too_few_tracks for s in skipped if s is not None)
        pl_module.log(f"{stage}/clips_evaluated", float(evaluated), sync_dist=False)
        pl_module.log(f"{stage}/clips_skipped", float(corrupt + too_few), sync_dist=False)
        if trainer.is_global_zero:
            log.info("%s at step %d: %d clips evaluated, %d skipped (%d corrupt, %d with too few tracks)",
                     "validation" if stage == "val" else stage, trainer.global_step, evaluated, corrupt + too_few,
                     corrupt, too_few)


def _as_list(loaders: Any) -> list[Any]:
    if loaders is None:
        return []
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
