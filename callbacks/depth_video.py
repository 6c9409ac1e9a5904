"""Log input | predicted depth | ground-truth depth side by side as an mp4 on rank 0 (W&B when active).

Both depth maps are the validation protocol's: the prediction aligned per video (scale and shift
in disparity), ground truth as stored. They share one colour scale per clip, fixed by the
ground truth's valid range in inverse depth (near = bright), so flicker shows as colour change;
invalid ground-truth pixels are black.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from callbacks.media import ValidationVideoLogger

# Anchor colours of the 'magma' colour map (0 -> 1), interpolated linearly.
_MAGMA = torch.tensor([
    [0, 0, 4], [28, 16, 68], [79, 18, 123], [129, 37, 129], [181, 54, 122],
    [229, 80, 100], [251, 135, 97], [254, 194, 135], [252, 253, 191],
], dtype=torch.float32)


def colourise(values: torch.Tensor) -> torch.Tensor:
    """values in [0, 1] (any shape) -> uint8 RGB (..., 3) through the magma map."""
    x = values.clamp(0, 1) * (len(_MAGMA) - 1)
    lo = x.floor().long().clamp(max=len(_MAGMA) - 2)
    frac = (x - lo).unsqueeze(-1)
    return (_MAGMA[lo] * (1 - frac) + _MAGMA[lo + 1] * frac).round().to(torch.uint8)


def depth_panel(video: torch.Tensor, pred_depth: torch.Tensor, gt_depth: torch.Tensor, valid: torch.Tensor,
                min_size: int = 256) -> torch.Tensor:
    """video (T, 3, H, W) 0..255, depths (T, H, W), valid (T, H, W) -> uint8 (T, H', 3 W' + 8, 3)."""
    inv_gt = torch.where(valid, 1.0 / gt_depth.float().clamp(min=1e-6), torch.zeros_like(gt_depth.float()))
    lo = inv_gt[valid].min() if valid.any() else torch.tensor(0.0)
    hi = inv_gt[valid].max() if valid.any() else torch.tensor(1.0)
    span = (hi - lo).clamp(min=1e-6)
    pred = colourise((1.0 / pred_depth.float().clamp(min=1e-6) - lo) / span)
    gt = colourise((inv_gt - lo) / span)
    gt = torch.where(valid.unsqueeze(-1), gt, torch.zeros_like(gt))
    rgb = video.float().clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    T, H, W, _ = rgb.shape
    gap = torch.full((T, H, 4, 3), 255, dtype=torch.uint8)
    panel = torch.cat([rgb, gap, pred, gap, gt], dim=2)
    scale = max(1, -(-min_size // min(H, W)))
    if scale > 1:  # small frames are upscaled (nearest) to stay legible
        panel = F.interpolate(panel.permute(0, 3, 1, 2).float(), scale_factor=scale, mode="nearest")
        panel = panel.to(torch.uint8).permute(0, 2, 3, 1)
    return panel


class DepthVideoLogger(ValidationVideoLogger):
    """One validation clip (input | prediction | ground truth), as `val/depth_video`."""

    name = "depth"
    summaries = {"val/abs_rel": "min", "val/track_tae": "min", "val/tae": "min", "val/delta1": "max"}

    def render(self, media: dict[str, torch.Tensor]) -> torch.Tensor:
        return depth_panel(media["video"], media["pred_depth"], media["gt_depth"], media["valid"])
