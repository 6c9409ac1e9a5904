"""Chrono's training loss: cvlab-kaist/Chrono `model_utils.tapir_loss` on our batch layout."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.chrono import ChronoOutput


@dataclass
class ChronoLossConfig:
    """cvlab-kaist/Chrono `model_utils.tapir_loss` with its defaults."""

    position_weight: float = 0.05
    huber_delta: float = 4.0  # pixels of a 256x256 frame
    expected_dist_threshold: float = 6.0  # pixels of a 256x256 frame
    # The reference adds every term twice (for `tracks` and again for its one `unrefined_tracks`
    # copy); 2.0 reproduces its gradient scale, which matters with clipping at norm 1.0.
    repeats: float = 2.0


def chrono_loss(out: ChronoOutput, batch: dict[str, torch.Tensor], w: ChronoLossConfig) -> dict[str, torch.Tensor]:
    """Reference `tapnet_loss` terms (times `repeats`) on our batch layout.

    Positions are compared in a 256x256 frame. Per (b, t, n) entry:
      position   = 0.05 * Huber_delta(sqrt(|e|^2 + 1e-6)) * visible
      occlusion  = BCE(occ_logit, occluded)
      expected   = BCE(expd_logit, |e_detached|^2 > 6^2) * visible
    each averaged over the annotated (`valid`) entries; with every entry valid this is the
    reference's plain mean over (B, N, T), occluded entries counting as zeros.
    """
    tracks, gt = out.tracks, batch["tracks"]
    h, w_ = batch["video"].shape[-2:]
    scale = gt.new_tensor([256.0 / w_, 256.0 / h])
    err = (tracks - gt) * scale
    sq = (err**2).sum(-1)
    dist = torch.sqrt(sq + 1e-6)
    d = w.huber_delta
    huber = torch.where(dist < d, sq / 2, d * (dist - d / 2))
    valid = batch["valid"].to(sq.dtype)
    visible = batch["visible"].to(sq.dtype) * valid
    count = valid.sum().clamp_min(1.0)
    position = w.position_weight * (huber * visible).sum() / count
    occluded = 1.0 - batch["visible"].to(out.occlusion_logits.dtype)
    occlusion_bce = F.binary_cross_entropy_with_logits(out.occlusion_logits, occluded, reduction="none")
    occlusion = (occlusion_bce * valid).sum() / count
    far = ((err.detach() ** 2).sum(-1) > w.expected_dist_threshold**2).to(sq.dtype)
    expected_bce = F.binary_cross_entropy_with_logits(out.expected_dist_logits, far, reduction="none")
    expected = (expected_bce * visible).sum() / count
    terms = {"position": position, "occlusion": occlusion, "expected_dist": expected}
    terms["loss"] = w.repeats * (position + occlusion + expected)
    return terms
