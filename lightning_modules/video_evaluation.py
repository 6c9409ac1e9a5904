"""Validation / test plumbing shared by the video families (video depth, colorization)."""

from __future__ import annotations

import lightning as L
import torch


class VideoMetricsEvaluation:
    """Mixin: validation and test steps call the family's `_evaluate(batch)`, which updates
    `self.val_metrics` (a torchmetrics Metric) and may keep the epoch's first clip in
    `self.media` for the media callback; each epoch end logs `{stage}/{key}` and resets."""

    media: dict[str, torch.Tensor] | None = None

    def on_validation_epoch_start(self) -> None:
        self.media = None

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch)

    def _log_metrics(self: L.LightningModule, stage: str) -> None:
        for key, value in self.val_metrics.compute().items():  # compute() syncs the sum states
            self.log(f"{stage}/{key}", value.float(), sync_dist=False)
        self.val_metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
