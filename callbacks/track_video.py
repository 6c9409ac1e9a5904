"""Render predicted (left) and ground-truth (right) tracks over the frames; log to W&B on rank 0.

`draw_tracks` also draws the overlay videos of `tools/predict.py track`.
"""

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

    Small frames are upscaled (pixel centres kept) so points stay legible; `min_size=0` keeps
    the frame size. Visible points are filled discs in their track's colour; occluded points
    are rings of the same colour; where marks overlap the lower track index wins. Only the
    pixels near each point are touched, so cost grows with T x N, not with the frame area.
    """
    T, _, H, W = video.shape
    scale = max(1, -(-min_size // min(H, W)))
    if scale == 1 and video.dtype == torch.uint8:  # decoded frames: no float round trip
        out = video.permute(0, 2, 3, 1).contiguous()
    else:
        frames = F.interpolate(video.float(), scale_factor=scale, mode="nearest") if scale > 1 else video.float()
        out = frames.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    pts = (tracks.float() + 0.5) * scale - 0.5
    N = tracks.shape[1]
    if N == 0:
        return out
    colours = track_colours(N).round().to(torch.uint8)
    reach = int(radius + 1.5)
    offsets = torch.arange(-reach, reach + 1, dtype=torch.float32)
    Hs, Ws = out.shape[1:3]
    for t in range(T):
        # Candidate pixels: a (2 reach + 1)^2 patch around each point's nearest pixel.
        px = pts[t, :, 0].round().view(N, 1, 1) + offsets.view(1, 1, -1)
        py = pts[t, :, 1].round().view(N, 1, 1) + offsets.view(1, -1, 1)
        dist = ((px - pts[t, :, 0, None, None]) ** 2 + (py - pts[t, :, 1, None, None]) ** 2).sqrt()
        disc = dist <= radius
        ring = (dist <= radius + 0.5) & (dist >= radius - 1.0)
        mark = torch.where(visible[t, :, None, None], disc, ring)
        mark &= (px >= 0) & (px < Ws) & (py >= 0) & (py < Hs) & torch.isfinite(dist)
        owner_of = torch.full((Hs * Ws,), N, dtype=torch.long)
        flat = (py.expand_as(mark)[mark] * Ws + px.expand_as(mark)[mark]).long()
        track = torch.arange(N).view(N, 1, 1).expand_as(mark)[mark]
        owner_of.scatter_reduce_(0, flat, track, reduce="amin")
        hit = owner_of < N
        out[t].view(-1, 3)[hit] = colours[owner_of[hit]]
    return out


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
