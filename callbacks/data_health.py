"""Log how many training samples were lost to bad data (summed over ranks)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

SKIP_KEYS = {"num_corrupt_skipped": "data/corrupt_skipped", "num_too_few_tracks_skipped": "data/too_few_tracks_skipped"}


class DataHealthLogger(L.Callback):
    """Running totals of the skip counters that the DataModules attach to every batch."""

    def __init__(self) -> None:
        self.totals = {key: 0 for key in SKIP_KEYS}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: dict[str, Any], batch_idx: int) -> None:
        for key, name in SKIP_KEYS.items():
            if key in batch:
                self.totals[key] += int(batch[key])
                value = torch.tensor(float(self.totals[key]), device=pl_module.device)
                pl_module.log(name, value, reduce_fx="sum", sync_dist=True, on_step=True, on_epoch=False)
