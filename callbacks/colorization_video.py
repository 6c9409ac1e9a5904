"""Log grey input | predicted colours | ground truth side by side as an mp4 on rank 0 (W&B when active)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from callbacks.media import ValidationVideoLogger


def side_by_side(panels: list[torch.Tensor], min_size: int = 256) -> torch.Tensor:
    """RGB clips (T, 3, H, W) 0..255 -> uint8 (T, H', n W' + gaps, 3), white 4 px gaps; small frames
    are upscaled (nearest) to at least ``min_size`` on the short side to stay legible."""
    frames = [p.float().clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1) for p in panels]
    T, H, W, _ = frames[0].shape
    if any(f.shape != frames[0].shape for f in frames):
        raise ValueError(f"panels must share one (T, 3, H, W) shape, got {[tuple(p.shape) for p in panels]}")
    gap = torch.full((T, H, 4, 3), 255, dtype=torch.uint8)
    row = [frames[0]]
    for f in frames[1:]:
        row += [gap, f]
    panel = torch.cat(row, dim=2)
    scale = max(1, -(-min_size // min(H, W)))
    if scale > 1:
        panel = F.interpolate(panel.permute(0, 3, 1, 2).float(), scale_factor=scale, mode="nearest")
        panel = panel.to(torch.uint8).permute(0, 2, 3, 1)
    return panel


class ColorizationVideoLogger(ValidationVideoLogger):
    """One validation clip (grey input | prediction | ground truth), as `val/colorization_video`."""

    name = "colorization"
    summaries = {"val/cdc": "min", "val/psnr": "max", "val/ssim": "max"}

    def render(self, media: dict[str, torch.Tensor]) -> torch.Tensor:
        return side_by_side([media["grey"], media["pred"], media["gt"]])
