"""CoTracker3's loss on pseudo-labels (co-tracker ``train_on_real_data.py::forward_batch``).

Only the two position terms of the Kubric loss (``cotracker3_loss``) remain:

    0.05 * Huber(delta=6) on pseudo-visible points   (masked mean over valid & visible)
  + 0.01 * L1 on pseudo-occluded points              (masked mean over valid & ~visible & occluded_loss)

each weighted gamma^(n-1-i) over the n refinement iterations and divided by n, then averaged
over windows (online: the sliding windows, masked before each track's query frame; offline:
one window over the clip, every frame supervised). There is no visibility or confidence
loss: the reference freezes ``vis_conf_head`` and never supervises it with pseudo-labels.
The occluded term is dropped for teachers whose occlusion is not trusted (the reference's
TAPIR teacher; here Chrono and TAPTRv2), per sample through ``occluded_loss`` (B,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_modules.cotracker3_loss import huber, masked_mean, query_mask


@dataclass
class PseudoLabelLossConfig:
    visible: float = 0.05
    occluded: float = 0.01
    gamma: float = 0.8
    huber_delta: float = 6.0


def pseudolabel_loss(windows: list[dict[str, object]], targets: dict[str, torch.Tensor], w: PseudoLabelLossConfig,
                     mask_before_query: bool) -> dict[str, torch.Tensor]:
    """Terms `visible`, `occluded` and their weighted sum `loss`.

    windows: dicts with `start` and per-iteration `coords` (B, S, N, 2) (WindowPrediction fields);
    targets: `queries` (B, N, 3), `tracks` (B, T, N, 2), `visible`, `valid` (B, T, N) bool and
    `occluded_loss` (B,) bool.
    """
    use_occluded = targets["occluded_loss"].view(-1, 1, 1)
    total = {"visible": 0.0, "occluded": 0.0}
    for window in windows:
        start, coords = int(window["start"]), window["coords"]
        frames = slice(start, start + coords[0].shape[1])
        valid = targets["valid"][:, frames]
        if mask_before_query:
            valid = valid & query_mask(targets["queries"], start, coords[0].shape[1])
        gt, vis = targets["tracks"][:, frames], targets["visible"][:, frames]
        visible_mask, occluded_mask = valid & vis, valid & ~vis & use_occluded
        n = len(coords)
        visible = occluded = 0.0
        for i, pred in enumerate(coords):
            gamma = w.gamma ** (n - 1 - i)
            visible = visible + gamma * masked_mean(huber(pred, gt, w.huber_delta).mean(-1), visible_mask)
            occluded = occluded + gamma * masked_mean((pred - gt).abs().mean(-1), occluded_mask)
        total["visible"] = total["visible"] + visible / n
        total["occluded"] = total["occluded"] + occluded / n
    terms = {k: v / len(windows) for k, v in total.items()}
    terms["loss"] = w.visible * terms["visible"] + w.occluded * terms["occluded"]
    return terms
