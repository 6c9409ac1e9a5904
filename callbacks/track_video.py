"""Render predicted (left) and ground-truth (right) tracks over the frames; log to W&B on rank 0."""

from __future__ import annotations

import colorsys
import logging
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger

from callbacks.video_io import write_mp4

log = logging.getLogger(__name__)


def track_colours(num: int) -> torch.Tensor:
    """(num, 3) distinct RGB colours in 0..255 (hue wheel)."""
    return torch.tensor([colorsys.hsv_to_rgb(i / max(num, 1), 0.9, 1.0) for i in range(num)]) * 255


def draw_tracks(video: torch.Tensor, tracks: torch.Tensor, visible: torch.Tensor, min_size: int = 256,
                radius: float = 2.5) -> torch.Tensor:
    """video (T, 3, H, W) 0..255, tracks (T, N, 2) pixels, visible (T, N) -> uint8 (T, H', W', 3).

    Small frames are upscaled (pixel centres kept) so points stay legible. Visible points are
    filled discs in their track's colour; occluded points are rings of the same colour.
    """
    T, _, H, W = video.shape
    scale = max(1, -(-min_size // min(H, W)))
    frames = F.interpolate(video.float(), scale_factor=scale, mode="nearest") if scale > 1 else video.float()
    pts = (tracks.float() + 0.5) * scale - 0.5
    colours = track_colours(tracks.shape[1]).to(frames)
    ys = torch.arange(frames.shape[-2], dtype=torch.float32).view(-1, 1)
    xs = torch.arange(frames.shape[-1], dtype=torch.float32).view(1, -1)
    out = frames.clone()
    for t in range(T):
        dist = ((xs - pts[t, :, 0, None, None]) ** 2 + (ys - pts[t, :, 1, None, None]) ** 2).sqrt()  # (N, H, W)
        disc = dist <= radius
        ring = (dist <= radius + 0.5) & (dist >= radius - 1.0)
        mark = torch.where(visible[t, :, None, None], disc, ring)
        any_mark = mark.any(0)
        owner = mark.float().argmax(0)  # first track covering the pixel
        out[t] = torch.where(any_mark, colours[owner].permute(2, 0, 1), out[t])
    return out.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def side_by_side(media: dict[str, torch.Tensor]) -> torch.Tensor:
    pred = draw_tracks(media["video"], media["pred_tracks"], media["pred_visible"])
    gt = draw_tracks(media["video"], media["gt_tracks"], media["gt_visible"])
    gap = torch.full((pred.shape[0], pred.shape[1], 4, 3), 255, dtype=torch.uint8)
    return torch.cat([pred, gap, gt], dim=2)


class TrackVideoLogger(L.Callback):
    """After validation, log one clip with tracks drawn (prediction | ground truth) on rank 0.

    Also sets W&B summaries so `val/aj` etc. keep their best value. The video is written as
    mp4 under `<run_dir>/media/` whatever the logger, and uploaded when W&B is active.
    """

    def __init__(self, every_n_validations: int = 1, fps: float = 8.0) -> None:
        self.every = max(1, every_n_validations)
        self.fps = fps
        self.count = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and isinstance(trainer.logger, WandbLogger):
            experiment = trainer.logger.experiment
            if hasattr(experiment, "define_metric"):
                for key in ("val/aj", "val/delta_avg", "val/oa"):
                    experiment.define_metric(key, summary="max")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        media = getattr(pl_module, "media", None)
        if not trainer.is_global_zero or media is None or trainer.sanity_checking:
            return
        self.count += 1
        if (self.count - 1) % self.every:
            return
        path = Path(trainer.default_root_dir) / "media" / f"tracks_step{trainer.global_step:07d}.mp4"
        write_mp4(path, side_by_side(media), self.fps)
        if isinstance(trainer.logger, WandbLogger):
            import wandb

            trainer.logger.experiment.log({"val/tracks_video": wandb.Video(str(path), format="mp4"),
                                           "trainer/global_step": trainer.global_step})
