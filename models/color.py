"""sRGB <-> CIE Lab (D65, 2 degree observer) on tensors, in the units the colorization family uses.

RGB is 0..255 (DESIGN.md video convention); Lab has L in [0, 100] and a, b in Lab units
(about -128..127). The conversion is kornia's, which follows the same formulas and constants as
``skimage.color.rgb2lab`` / ``lab2rgb`` (sRGB gamma with the 0.04045 threshold, the
0.412453... XYZ matrix, D65 white (0.95047, 1, 1.08883), the 0.008856 / 7.787 linear segment);
``tests/test_color.py`` pins it to known values. ``lab_to_rgb`` clips to the sRGB gamut like
skimage: an (L, a, b) outside it has no exact RGB.

The grey input of a colorizer is the L channel of the frames; ``grey_rgb`` shows it as an image.
"""

from __future__ import annotations

import kornia.color
import torch
from torch import Tensor


def _check_channels(x: Tensor, what: str) -> None:
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"{what} must be (..., 3, H, W), got {tuple(x.shape)}")


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """(..., 3, H, W) RGB 0..255 -> (..., 3, H, W) Lab (L 0..100), float32 at least (also under autocast)."""
    _check_channels(rgb, "rgb")
    # Never in bf16 under autocast: its colour matrices would put L off by ~0.6 and ab by
    # ~2.5 Lab units (measured on random colours).
    with torch.autocast(rgb.device.type, enabled=False):
        return kornia.color.rgb_to_lab(rgb.to(torch.promote_types(rgb.dtype, torch.float32)) / 255.0)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """(..., 3, H, W) Lab -> (..., 3, H, W) RGB 0..255, clipped to the sRGB gamut, float32 at least
    (also under autocast)."""
    _check_channels(lab, "lab")
    with torch.autocast(lab.device.type, enabled=False):
        return kornia.color.lab_to_rgb(lab.to(torch.promote_types(lab.dtype, torch.float32)), clip=True) * 255.0


def luminance(rgb: Tensor) -> Tensor:
    """The L channel (..., 1, H, W), 0..100, of RGB 0..255 frames: a colorizer's input."""
    return rgb_to_lab(rgb)[..., :1, :, :]


def l_ab_to_rgb(l: Tensor, ab: Tensor) -> Tensor:
    """Recombine L (..., 1, H, W) and ab (..., 2, H, W) into RGB 0..255."""
    if l.shape[-3] != 1 or ab.shape[-3] != 2 or l.shape[:-3] + l.shape[-2:] != ab.shape[:-3] + ab.shape[-2:]:
        raise ValueError(f"need L (..., 1, H, W) and ab (..., 2, H, W) of the same size, got "
                         f"{tuple(l.shape)} and {tuple(ab.shape)}")
    return lab_to_rgb(torch.cat([l, ab.to(l.dtype)], dim=-3))


def grey_rgb(l: Tensor) -> Tensor:
    """L (..., 1, H, W) shown as a neutral grey RGB image 0..255 (a = b = 0)."""
    return l_ab_to_rgb(l, torch.zeros_like(l).expand(*l.shape[:-3], 2, *l.shape[-2:]))


__all__ = ["grey_rgb", "l_ab_to_rgb", "lab_to_rgb", "luminance", "rgb_to_lab"]
