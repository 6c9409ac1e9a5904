"""Render predicted (left) and ground-truth (right) tracks over the frames; log to W&B on rank 0."""

from __future__ import annotations

import colorsys
import logging
import torch
import torch.nn.functional as F

from callbacks.media import ValidationVideoLogger

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


class TrackVideoLogger(ValidationVideoLogger):
    """One validation clip with tracks drawn (prediction | ground truth), as `val/tracks_video`."""

    name = "tracks"
    summaries = {"val/aj": "max", "val/delta_avg": "max", "val/oa": "max"}

    def render(self, media: dict[str, torch.Tensor]) -> torch.Tensor:
        return side_by_side(media)
