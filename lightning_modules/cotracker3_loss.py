"""CoTracker3 Kubric loss (co-tracker `losses.py` + `train_on_kubric.py`), written for our window outputs.

Per window j with n refinement iterations i (weights gamma^(n-1-i), divided by n), all
windows averaged:
    0.05 * Huber(delta=6) on visible points   (masked mean over valid & visible)
  + 0.01 * L1 on occluded points              (masked mean over valid & ~visible)
  + BCE(visibility)                            (all elements, no gamma, no query mask)
  + BCE(confidence, target = |err| <= 12 px)   (times visible, mean over frames and tracks)
The online model's `valid` is False before each track's query frame; the offline model is
supervised on all frames. BCE is computed from logits, which equals the reference's
sigmoid-then-BCE except where the reference clamps log(0) to -100.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    visible: float = 0.05
    occluded: float = 0.01
    visibility: float = 1.0
    confidence: float = 1.0
    gamma: float = 0.8
    huber_delta: float = 6.0
    confidence_threshold: float = 12.0


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reference `reduce_masked_mean`: sum(x * m) / (1e-6 + sum(m)) over all elements."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / (1e-6 + mask.sum())


def huber(pred: torch.Tensor, target: torch.Tensor, delta: float) -> torch.Tensor:
    diff = (pred - target).abs()
    return torch.where(diff <= delta, 0.5 * diff**2, delta * (diff - 0.5 * delta))


def window_loss(
    coords: list[torch.Tensor], vis_logits: list[torch.Tensor], conf_logits: list[torch.Tensor],
    gt_tracks: torch.Tensor, gt_visible: torch.Tensor, valid: torch.Tensor, w: LossWeights,
) -> dict[str, torch.Tensor]:
    """Loss terms of one window. coords[i] (B,S,N,2); logits[i] (B,S,N); gt for the same frames."""
    n = len(coords)
    vis = gt_visible.float()
    visible_mask, occluded_mask = valid & gt_visible, valid & ~gt_visible
    terms = {k: gt_tracks.new_zeros(()) for k in ("visible", "occluded", "visibility", "confidence")}
    for i in range(n):
        gamma = w.gamma ** (n - 1 - i)
        terms["visible"] = terms["visible"] + gamma * masked_mean(
            huber(coords[i], gt_tracks, w.huber_delta).mean(-1), visible_mask)
        terms["occluded"] = terms["occluded"] + gamma * masked_mean(
            (coords[i] - gt_tracks).abs().mean(-1), occluded_mask)
        terms["visibility"] = terms["visibility"] + F.binary_cross_entropy_with_logits(vis_logits[i], vis)
        sq_err = ((coords[i].detach() - gt_tracks) ** 2).sum(-1)
        target = (sq_err <= w.confidence_threshold**2).float()
        conf = F.binary_cross_entropy_with_logits(conf_logits[i], target, reduction="none") * vis
        terms["confidence"] = terms["confidence"] + conf.mean(dim=(1, 2)).mean()
    return {k: v / n for k, v in terms.items()}


def query_mask(queries: torch.Tensor, start: int, num_frames: int) -> torch.Tensor:
    """(B, S, N) True from each track's query frame on (the online model's supervision mask)."""
    frames = torch.arange(start, start + num_frames, device=queries.device).view(1, -1, 1)
    return frames >= queries[..., 0].round().unsqueeze(1)


def cotracker3_loss(
    windows: list[dict[str, object]], batch: dict[str, torch.Tensor], w: LossWeights, mask_before_query: bool,
) -> dict[str, torch.Tensor]:
    """Average the window losses over windows and combine with the reference weights.

    Each window is a dict with `start` (int), `coords`, `vis_logits`, `conf_logits` (lists over
    iterations). Returns the individual terms and `loss`.
    """
    totals: dict[str, torch.Tensor] = {}
    for window in windows:
        start, coords = int(window["start"]), window["coords"]
        frames = slice(start, start + coords[0].shape[1])
        valid = batch["valid"][:, frames]
        if mask_before_query:
            valid = valid & query_mask(batch["queries"], start, coords[0].shape[1])
        terms = window_loss(coords, window["vis_logits"], window["conf_logits"],
                            batch["tracks"][:, frames], batch["visible"][:, frames], valid, w)
        for k, v in terms.items():
            totals[k] = totals.get(k, 0) + v / len(windows)
    totals["loss"] = (w.visible * totals["visible"] + w.occluded * totals["occluded"]
                      + w.visibility * totals["visibility"] + w.confidence * totals["confidence"])
    return totals
