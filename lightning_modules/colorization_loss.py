"""The colorization family's training loss: L1 on ab, DDColor's colourfulness term and the temporal
term along tracks (weights ``ColorLossWeights``; module docstring of ``colorization.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.color import l_ab_to_rgb


@dataclass
class ColorLossWeights:
    l1: float = 1.0  # L1 on ab in Lab units
    colorfulness: float = 0.0  # DDColor's 1 - colourfulness of the predicted RGB in [0, 1], mean over frames
    temporal: float = 0.0  # L1 between predicted and true ab changes along the tracks (track_temporal_loss)


def colorfulness_loss(rgb: torch.Tensor) -> torch.Tensor:
    """DDColor's colourfulness loss term 1 - M, M on RGB in [0, 1] (absolute opponents, unbiased std),
    averaged over frames: rgb (N, 3, H, W) 0..255."""
    r, g, b = (rgb / 255.0).unbind(1)
    rg = (r - g).abs().flatten(1)
    yb = (0.5 * (r + g) - b).abs().flatten(1)
    # The clamp keeps the gradient of sqrt finite on a flat grey frame (DDColor's would be NaN there).
    std_root = torch.sqrt((rg.std(1) ** 2 + yb.std(1) ** 2).clamp(min=1e-12))
    mean_root = torch.sqrt((rg.mean(1) ** 2 + yb.mean(1) ** 2).clamp(min=1e-12))
    return (1.0 - (std_root + 0.3 * mean_root)).mean()


def sample_at_points(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values of maps (N, C, H, W) at (x, y) pixels (N, M, 2), centres at integers -> (N, M, C)."""
    H, W = maps.shape[-2:]
    scale = points.new_tensor([2.0 / max(W - 1, 1), 2.0 / max(H - 1, 1)])
    grid = (points * scale - 1.0).unsqueeze(2)  # (N, M, 1, 2) in [-1, 1], align_corners=True
    return F.grid_sample(maps, grid, mode="bilinear", align_corners=True).squeeze(-1).transpose(1, 2)


def track_temporal_loss(pred_ab: torch.Tensor, target_ab: torch.Tensor, tracks: torch.Tensor,
                        visible: torch.Tensor) -> torch.Tensor:
    """Mean |(a_{t+1} - a_t) - (a*_{t+1} - a*_t)| over ab channels and the track points visible at t and
    t+1, a = predicted and a* = true ab read at the point's positions p_t, p_{t+1}: the colour of a
    surface point should change between frames exactly as much as its true colour does (the colour
    analogue of Video Depth Anything's temporal gradient matching). pred_ab, target_ab (B, T, 2, H, W);
    tracks (B, T, M, 2) pixels; visible (B, T, M) bool. Zero when no point is visible twice in a row."""
    B, T = pred_ab.shape[:2]
    pred = sample_at_points(pred_ab.flatten(0, 1), tracks.flatten(0, 1).to(pred_ab.dtype)).view(B, T, -1, 2)
    target = sample_at_points(target_ab.flatten(0, 1), tracks.flatten(0, 1).to(target_ab.dtype)).view(B, T, -1, 2)
    diff = ((pred[:, 1:] - pred[:, :-1]) - (target[:, 1:] - target[:, :-1])).abs().mean(-1)
    both = (visible[:, 1:] & visible[:, :-1]).to(diff.dtype)
    return (diff * both).sum() / both.sum().clamp(min=1.0)


def colorization_loss(lab: torch.Tensor, ab: torch.Tensor, batch: dict[str, torch.Tensor], w: ColorLossWeights
                      ) -> dict[str, torch.Tensor]:
    """Loss terms and their weighted sum ("loss") for the Lab of the clip (B, T, 3, H, W) and predicted ab."""
    terms = {"l1": (ab - lab[:, :, 1:]).abs().mean()}
    loss = w.l1 * terms["l1"]
    if w.colorfulness:
        terms["colorfulness"] = colorfulness_loss(l_ab_to_rgb(lab[:, :, :1], ab).flatten(0, 1))
        loss = loss + w.colorfulness * terms["colorfulness"]
    if w.temporal:
        terms["temporal"] = track_temporal_loss(ab, lab[:, :, 1:], batch["tracks"], batch["visible"])
        loss = loss + w.temporal * terms["temporal"]
    terms["loss"] = loss
    return terms
