"""Log input | predicted depth | ground-truth depth side by side as an mp4 on rank 0 (W&B when active).

Both depth maps are the validation protocol's: the prediction aligned per video (scale and shift
in disparity), ground truth as stored. They share one colour scale per clip, fixed by the
ground truth's valid range in inverse depth (near = bright), so flicker shows as colour change;
invalid ground-truth pixels are black.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger

from callbacks.video_io import write_mp4

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


class DepthVideoLogger(L.Callback):
    """After validation, write one clip (input | prediction | ground truth) to `<run_dir>/media/`."""

    def __init__(self, every_n_validations: int = 1, fps: float = 8.0) -> None:
        self.every = max(1, every_n_validations)
        self.fps = fps
        self.count = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and isinstance(trainer.logger, WandbLogger):
            experiment = trainer.logger.experiment
            if hasattr(experiment, "define_metric"):
                for key in ("val/abs_rel", "val/track_tae", "val/tae"):
                    experiment.define_metric(key, summary="min")
                experiment.define_metric("val/delta1", summary="max")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        media = getattr(pl_module, "media", None)
        if not trainer.is_global_zero or media is None or trainer.sanity_checking:
            return
        self.count += 1
        if (self.count - 1) % self.every:
            return
        path = Path(trainer.default_root_dir) / "media" / f"depth_step{trainer.global_step:07d}.mp4"
        write_mp4(path, depth_panel(media["video"], media["pred_depth"], media["gt_depth"], media["valid"]), self.fps)
        if isinstance(trainer.logger, WandbLogger):
            import wandb

            trainer.logger.experiment.log({"val/depth_video": wandb.Video(str(path), format="mp4"),
                                           "trainer/global_step": trainer.global_step})
