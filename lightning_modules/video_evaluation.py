"""Validation / test plumbing shared by the video families (video depth, colorization)."""

from __future__ import annotations

import lightning as L
import torch
from torchmetrics import Metric


class VideoMetricsEvaluation:
    """Mixin: validation and test steps call the family's `_evaluate(batch, metric)`, which updates
    `metric` (a clone of `self.val_metrics`, a torchmetrics Metric) and may keep the epoch's first clip
    in `self.media` for the media callback; each epoch end logs `{stage}/{key}` and resets.

    Several validation sets (the datamodule's `val_set_names`, one dataloader each, e.g.
    `data.val_sets`) get one metric each, logged as `{stage}/<set>/{key}`; `{stage}/{key}` is then
    their summary, chosen by the datamodule's `val_summary`: "mean" (the plain mean over the sets)
    or a set's name (that set's value). So a monitored `val/abs_rel` means the same with one
    validation set or several.
    """

    media: dict[str, torch.Tensor] | None = None

    def _set_names(self: L.LightningModule) -> list[str]:
        return list(getattr(self.trainer.datamodule, "val_set_names", None) or [])

    def _start_sets(self: L.LightningModule) -> None:
        # One metric per set, made on every rank before any batch: the epoch end reduces all of them.
        self.set_metrics = [self.val_metrics.clone().to(self.device) for _ in self._set_names()]

    def _metric(self, dataloader_idx: int) -> Metric:
        sets = getattr(self, "set_metrics", None)
        return sets[dataloader_idx] if sets else self.val_metrics

    def on_validation_epoch_start(self) -> None:
        self.media = None
        self._start_sets()

    def on_test_epoch_start(self) -> None:
        self._start_sets()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, self._metric(dataloader_idx))

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, self._metric(dataloader_idx))

    def epoch_results(self: L.LightningModule) -> dict[str, torch.Tensor]:
        """This epoch's metrics by log key (without the stage), computed (synced) and reset."""
        names, sets = self._set_names(), getattr(self, "set_metrics", None)
        if not sets:
            results = self.val_metrics.compute()  # compute() syncs the sum states
            self.val_metrics.reset()
            return results
        per_set = []
        for metric in sets:
            per_set.append(metric.compute())
            metric.reset()
        summary = getattr(self.trainer.datamodule, "val_summary", "mean")
        if summary == "mean":
            keys = [k for k in per_set[0] if all(k in r for r in per_set)]
            results = {k: torch.stack([r[k].double() for r in per_set]).mean() for k in keys}
        else:
            results = dict(per_set[names.index(summary)])
        for name, values in zip(names, per_set):
            results.update({f"{name}/{k}": v for k, v in values.items()})
        return results

    def _log_metrics(self: L.LightningModule, stage: str) -> None:
        for key, value in self.epoch_results().items():
            self.log(f"{stage}/{key}", value.float(), sync_dist=False, add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
