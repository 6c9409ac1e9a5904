"""Shared half of every point-tracking family: TAP-Vid evaluation, zero-motion baseline, media, predict.

A family subclasses PointTrackingModule, builds its network and loss, and implements
`predict_tracks(video, queries) -> (tracks, visible)` in pixels of `video`. Its model config has
`query_mode` (the evaluation data's, registry.QUERY_MODE_FROM_DATA) and `media_every_n_validations`
(registry.MEDIA_EVERY_FROM_WANDB).
"""

from __future__ import annotations

import lightning as L
import torch
from omegaconf import DictConfig

from callbacks.console import HeadlineMetric
from lightning_modules.nonfinite import NonFiniteGuard
from metrics.tapvid import TapVidMetrics


def to_metric_space(points: torch.Tensor, hw: tuple[int, int], size: int = 256) -> torch.Tensor:
    """Map pixel coordinates of an (H, W) frame to the benchmark's size x size frame (centres at integers)."""
    scale = points.new_tensor([size / hw[1], size / hw[0]])
    return (points + 0.5) * scale - 0.5


class PointTrackingModule(NonFiniteGuard, L.LightningModule):
    headline_metrics = (HeadlineMetric("AJ", "aj", "zero_motion_aj", percent=True),
                        HeadlineMetric("δ_avg", "delta_avg", "zero_motion_delta_avg", percent=True),
                        HeadlineMetric("OA", "oa", "zero_motion_oa", percent=True))
    headline_baseline = "zero motion"

    def __init__(self, cfg: DictConfig) -> None:
        """`cfg`: the family's model section (registry.model_config)."""
        super().__init__()
        self.cfg = cfg
        self.query_mode = cfg.query_mode
        self.val_metrics = TapVidMetrics(self.query_mode)
        self.zero_motion_metrics = TapVidMetrics(self.query_mode)
        self.media: dict[str, torch.Tensor] | None = None  # one validation clip for the media callback

    def predict_tracks(self, video: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tracks (B, T, N, 2) pixels, visible (B, T, N) bool) for `queries` (B, N, 3)."""
        raise NotImplementedError

    def configure_callbacks(self) -> list[L.Callback]:
        from callbacks.track_video import TrackVideoLogger

        return [TrackVideoLogger(self.cfg.media_every_n_validations)]

    def on_validation_epoch_start(self) -> None:
        self.media = None

    def _evaluate(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        video, queries = batch["video"], batch["queries"]
        tracks, visible = self.predict_tracks(video, queries)
        hw = tuple(video.shape[-2:])
        gt_tracks, gt_visible, valid = batch["tracks"], batch["visible"], batch["valid"]
        self.val_metrics.update(to_metric_space(tracks, hw), visible, to_metric_space(gt_tracks, hw), gt_visible,
                                queries, valid)
        # Zero-motion baseline: every point stays at its query position, always visible.
        still = queries[:, None, :, 1:].expand_as(gt_tracks)
        self.zero_motion_metrics.update(to_metric_space(still, hw), torch.ones_like(gt_visible),
                                        to_metric_space(gt_tracks, hw), gt_visible, queries, valid)
        if self.media is None and self.global_rank == 0:
            self.media = {"video": video[0].detach().cpu(), "pred_tracks": tracks[0].cpu(),
                          "pred_visible": visible[0].cpu(), "gt_tracks": gt_tracks[0].cpu(),
                          "gt_visible": gt_visible[0].cpu()}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx)

    def _log_metrics(self, stage: str) -> None:
        # compute() syncs sum states across ranks; every rank calls it.
        values = self.val_metrics.compute()
        baseline = self.zero_motion_metrics.compute()
        for key in ("aj", "delta_avg", "oa"):
            self.log(f"{stage}/{key}", values[key], sync_dist=False)
            self.log(f"{stage}/zero_motion_{key}", baseline[key], sync_dist=False)
        for key, value in values.items():
            if key.startswith(("jaccard_", "pts_within_")):
                self.log(f"{stage}/{key}", value, sync_dist=False)
        self.val_metrics.reset()
        self.zero_motion_metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        tracks, visible = self.predict_tracks(batch["video"], batch["queries"])
        return {"tracks": tracks.cpu(), "visible": visible.cpu(), "queries": batch["queries"].cpu()}
