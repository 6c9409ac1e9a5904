"""Sampling, embedding and query-drawing operations shared by point trackers.

Every function here uses the tracklight point convention: (x, y) in pixels of the
sampled map, pixel centres at integer coordinates (``align_corners=True``), and
out-of-range points read the nearest border value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def bilinear_sample(fmap: Tensor, xy: Tensor) -> Tensor:
    """Sample ``fmap`` (B, C, H, W) at points ``xy`` (B, *P, 2) -> (B, C, *P)."""
    B, C, H, W = fmap.shape
    scale = xy.new_tensor([2.0 / max(W - 1, 1), 2.0 / max(H - 1, 1)])
    grid = (xy * scale - 1).reshape(B, -1, 1, 2)
    out = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.view(B, C, *xy.shape[1:-1])


def sample_at_frames(fmaps: Tensor, frames: Tensor, xy: Tensor) -> Tensor:
    """Sample a video feature map at one frame per point.

    fmaps (B, T, C, H, W); frames (B, N) integer frame of each point; xy (B, N, P, 2)
    -> (B, N, P, C). Bilinear in space with border clamping; the frame is indexed
    exactly, so no interpolation between neighbouring frames can leak in.
    """
    B, T, C, H, W = fmaps.shape
    x = xy[..., 0].clamp(0, W - 1)
    y = xy[..., 1].clamp(0, H - 1)
    x0f, y0f = x.floor(), y.floor()
    wx, wy = (x - x0f).unsqueeze(-1), (y - y0f).unsqueeze(-1)
    x0, y0 = x0f.long(), y0f.long()
    x1, y1 = (x0 + 1).clamp(max=W - 1), (y0 + 1).clamp(max=H - 1)
    flat = fmaps.flatten(3)  # (B, T, C, H*W)
    b = torch.arange(B, device=fmaps.device).view(B, 1, 1)
    t = frames.long().unsqueeze(-1)

    def corner(yy: Tensor, xx: Tensor) -> Tensor:
        # advanced indices around a slice put the indexed dims first: (B, N, P, C)
        return flat[b, t, :, yy * W + xx]

    top = corner(y0, x0) * (1 - wx) + corner(y0, x1) * wx
    bottom = corner(y1, x0) * (1 - wx) + corner(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def patch_offsets(radius: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """(P, 2) offsets of a (2r+1)^2 square patch, x-major.

    The first patch axis walks x and the second walks y. CoTracker's correlation MLP
    weights were trained with this (transposed-looking) order, so it must be kept.
    """
    r = torch.arange(-radius, radius + 1, device=device, dtype=dtype or torch.get_default_dtype())
    dx, dy = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([dx, dy], dim=-1).reshape(-1, 2)


def fourier_encode(x: Tensor, num_freqs: int) -> Tensor:
    """[x, sin(2^k x), cos(2^k x)] for k < num_freqs, frequency-major: D -> D * (1 + 2 * num_freqs)."""
    freqs = 2.0 ** torch.arange(num_freqs, device=x.device, dtype=x.dtype)
    xb = (x.unsqueeze(-2) * freqs.unsqueeze(-1)).flatten(-2)
    # cos is taken as sin(. + pi/2) so the rounding matches the published model exactly
    return torch.cat([x, torch.sin(xb), torch.sin(xb + 0.5 * math.pi)], dim=-1)


def sincos_embedding_1d(dim: int, length: int) -> Tensor:
    """(1, length, dim) sin-cos embedding of positions 0..length-1 (first half sin, second cos)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)[None].float()


def points_on_grid(size: int, extent: tuple[float, float], center: tuple[float, float] | None = None,
                   device: torch.device | None = None) -> Tensor:
    """(1, size*size, 2) xy points of a regular grid over ``extent`` = (H, W), row-major.

    Placement follows CoTracker's ``get_points_on_a_grid``: a margin of W/64 on every
    side (W also for the vertical margin), ``center`` = (cy, cx) defaulting to the middle.
    """
    H, W = extent
    if size == 1:
        return torch.tensor([[[W / 2, H / 2]]], device=device)
    cy, cx = (H / 2, W / 2) if center is None else center
    margin = W / 64
    ys = torch.linspace(margin - H / 2 + cy, H / 2 + cy - margin, size, device=device)
    xs = torch.linspace(margin - W / 2 + cx, W / 2 + cx - margin, size, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).reshape(1, -1, 2)


def reverse_queries(queries: Tensor, num_frames: int) -> Tensor:
    """Queries (B, N, 3) as (t, x, y) for the time-reversed clip: frame t becomes T - 1 - t."""
    return torch.cat([(num_frames - 1 - queries[..., :1].round()), queries[..., 1:]], dim=-1)


def before_query_frame(queries: Tensor, num_frames: int) -> Tensor:
    """(B, T, N) bool: True at the frames before each query's frame (what a forward tracker cannot see)."""
    frames = torch.arange(num_frames, device=queries.device).view(1, num_frames, 1)
    return frames < queries[..., 0].round().long().unsqueeze(1)


def random_space_time_queries(batch: int, num_frames: int, hw: tuple[int, int], num: int,
                              generator: torch.Generator | None = None, device: torch.device | None = None) -> Tensor:
    """(B, num, 3) queries (t, x, y): frame uniform over the clip, point uniform over the frame (pixels)."""
    H, W = hw
    # Drawn on the generator's device (CPU by default) so a seeded CPU generator also serves GPU runs.
    u = torch.rand(batch, num, 3, generator=generator, device=generator.device if generator is not None else device)
    t = (u[..., 0] * num_frames).floor().clamp(max=num_frames - 1)
    return torch.stack([t, u[..., 1] * (W - 1), u[..., 2] * (H - 1)], dim=-1).to(device)
