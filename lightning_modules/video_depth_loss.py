"""Video depth losses in disparity space, as Video Depth Anything defines them (loss/loss.py).

All functions take prediction, target and mask as (B, T, H, W) (or (B, T, 1, H, W)), with the
target already a disparity and the mask True where the target is valid.

- :func:`ssi_loss`: each frame's prediction and target are normalised by their median and mean
  absolute deviation over the mask; loss = mean |p^ - t^| over all valid pixels of the batch.
- :func:`gradient_matching_loss`: on the normalised residual R = p^ - t^, sum over 4 scales
  (stride 2^k subsampling) of sum |d_x R| + |d_y R| over pixel pairs valid at both ends, divided
  by the valid pixel count of that scale (batch-based reduction, as the reference).
- :func:`temporal_gradient_loss` (TGM): the prediction is aligned to the target with one
  least-squares scale and shift per clip; loss = mean |(p_{t+1} - p_t) - (g_{t+1} - g_t)| over
  pixels valid in both frames whose target change is below `threshold` x (max - min of the
  target in frame t+1) — large target changes are occlusion boundaries, not flicker.
- :class:`VideoDepthLoss`: ssi + alpha x gradient + tgm_weight x TGM (defaults 0.5 and 10).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class DepthLossWeights:
    ssi: float = 1.0
    gradient: float = 0.5  # alpha of the multi-scale gradient-matching term
    gradient_scales: int = 4
    temporal: float = 10.0  # VDA's stable_scale
    temporal_threshold: float = 0.05


def _frames(x: Tensor) -> Tensor:
    """(B, T, 1, H, W) or (B, T, H, W) -> (B, T, H, W)."""
    if x.dim() == 5:
        if x.shape[2] != 1:
            raise ValueError(f"expected one channel at dim 2, got {tuple(x.shape)}")
        return x[:, :, 0]
    if x.dim() != 4:
        raise ValueError(f"expected (B, T, H, W) or (B, T, 1, H, W), got {tuple(x.shape)}")
    return x


def masked_median(x: Tensor, mask: Tensor) -> Tensor:
    """Lower median over the mask along the last dim of (N, P) tensors; 0 for empty rows."""
    count = mask.sum(-1)
    filled = torch.where(mask, x, torch.full_like(x, float("inf")))
    ordered = filled.sort(dim=-1).values
    index = ((count - 1).clamp(min=0) // 2).unsqueeze(-1)
    return torch.where(count > 0, ordered.gather(-1, index).squeeze(-1), torch.zeros_like(count, dtype=x.dtype))


def normalize_robust(x: Tensor, mask: Tensor) -> Tensor:
    """Per frame (over H, W): (x - median) / max(mean |x - median|, 1e-6), statistics over the mask."""
    flat, m = x.flatten(-2), mask.flatten(-2)
    lead = flat.shape[:-1]
    flat2, m2 = flat.reshape(-1, flat.shape[-1]), m.reshape(-1, m.shape[-1])
    median = masked_median(flat2, m2)
    centred = flat2 - median.unsqueeze(-1)
    count = m2.sum(-1).clamp(min=1)
    scale = ((centred.abs() * m2).sum(-1) / count).clamp(min=1e-6)
    return (centred / scale.unsqueeze(-1)).reshape(*lead, *x.shape[-2:])


def ssi_loss(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Median/MAD scale-and-shift-invariant MAE. Returns (loss, normalised pred, normalised target)."""
    pred, target, mask = _frames(pred), _frames(target), _frames(mask).bool()
    p, t = normalize_robust(pred, mask), normalize_robust(target, mask)
    total = mask.sum()
    loss = ((p - t).abs() * mask).sum() / total.clamp(min=1)
    return loss, p, t


def gradient_matching_loss(pred_n: Tensor, target_n: Tensor, mask: Tensor, scales: int = 4) -> Tensor:
    """Multi-scale gradient matching on already normalised maps (B, T, H, W)."""
    pred_n, target_n, mask = _frames(pred_n), _frames(target_n), _frames(mask).bool()
    total = pred_n.new_zeros(())
    for k in range(scales):
        s = 2 ** k
        diff = (pred_n - target_n)[..., ::s, ::s]
        m = mask[..., ::s, ::s]
        diff = diff * m
        gx = (diff[..., :, 1:] - diff[..., :, :-1]).abs() * (m[..., :, 1:] & m[..., :, :-1])
        gy = (diff[..., 1:, :] - diff[..., :-1, :]).abs() * (m[..., 1:, :] & m[..., :-1, :])
        count = m.sum()
        total = total + (gx.sum() + gy.sum()) / count.clamp(min=1)
    return total


def align_scale_shift(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares (s, t) per batch element minimising sum over the mask of (s p + t - target)^2.

    Inputs (B, ...); returns (B,) scale and shift (0 and 0 where the system is singular).
    """
    m = mask.flatten(1).to(pred.dtype)
    p, g = pred.flatten(1), target.flatten(1)
    a00, a01, a11 = (m * p * p).sum(1), (m * p).sum(1), m.sum(1)
    b0, b1 = (m * p * g).sum(1), (m * g).sum(1)
    det = a00 * a11 - a01 * a01
    ok = det.abs() > 1e-12
    safe = torch.where(ok, det, torch.ones_like(det))
    scale = torch.where(ok, (a11 * b0 - a01 * b1) / safe, torch.zeros_like(det))
    shift = torch.where(ok, (-a01 * b0 + a00 * b1) / safe, torch.zeros_like(det))
    return scale, shift


def temporal_gradient_loss(pred: Tensor, target: Tensor, mask: Tensor, threshold: float = 0.05) -> Tensor:
    """Temporal gradient matching (VDA TGM, stride 1) on a clip-aligned prediction."""
    pred, target, mask = _frames(pred), _frames(target), _frames(mask).bool()
    if pred.shape[1] < 2:
        return pred.new_zeros(())
    scale, shift = align_scale_shift(pred, target, mask)
    aligned = scale.view(-1, 1, 1, 1) * pred + shift.view(-1, 1, 1, 1)
    inf = torch.tensor(float("inf"), device=pred.device, dtype=target.dtype)
    lo = torch.where(mask, target, inf).amin((-1, -2))
    hi = torch.where(mask, target, -inf).amax((-1, -2))
    limit = ((hi - lo) * threshold)[:, 1:, None, None]  # the later frame's range, as the reference indexes it
    dp, dg = aligned.diff(dim=1), target.diff(dim=1)
    m = mask[:, 1:] & mask[:, :-1] & (dg.abs() < limit)
    return ((dp - dg).abs() * m).sum() / m.sum().clamp(min=1)


def reciprocal_where_valid(x: Tensor, valid: Tensor) -> Tensor:
    """1 / x where valid and positive, else 0: depth <-> disparity."""
    ok = valid & (x > 0)
    return torch.where(ok, 1.0 / torch.where(ok, x, torch.ones_like(x)), torch.zeros_like(x))


class VideoDepthLoss:
    """Weighted sum of the three terms; returns a dict with `loss` and each term."""

    def __init__(self, weights: DepthLossWeights | None = None) -> None:
        self.w = weights or DepthLossWeights()

    def __call__(self, pred_disp: Tensor, target_disp: Tensor, mask: Tensor) -> dict[str, Tensor]:
        w = self.w
        ssi, p, t = ssi_loss(pred_disp, target_disp, mask)
        terms = {"ssi": ssi}
        total = w.ssi * ssi
        if w.gradient > 0:
            terms["gradient"] = gradient_matching_loss(p, t, mask, w.gradient_scales)
            total = total + w.gradient * terms["gradient"]
        if w.temporal > 0:
            terms["temporal"] = temporal_gradient_loss(pred_disp, target_disp, mask, w.temporal_threshold)
            total = total + w.temporal * terms["temporal"]
        terms["loss"] = total
        return terms
