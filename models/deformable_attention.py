"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch.

No compiled extension: sampling is ``F.grid_sample`` (bilinear, ``align_corners=False``,
zeros outside the map), the convention of the official CUDA kernel, so the same code runs
on CPU and GPU. Sampling locations are normalised to [0, 1] per level, (x, y) order, with
0 and 1 at the outer edges of the border pixels.

- :class:`MSDeformAttn`: the encoder's self-attention; per-head softmax over a learned
  projection of the query.
- :class:`KeyAwareMSDeformAttn`: TAPTRv2's decoder cross-attention. Attention logits are
  dot products of the query with *keys sampled at the same locations as the values*; it
  also returns the raw logits and raw offsets, which the attention-based position update
  consumes.

Shapes: ``memory`` (N, S, C) is the flattened concatenation of the levels (row-major per
level), ``spatial_shapes`` a list of (H_l, W_l), ``locations`` (N, Q, M, L, P, 2) with M
heads, L levels, P points per level and head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SpatialShapes = Sequence[tuple[int, int]]


def _check_shapes(memory: Tensor, spatial_shapes: SpatialShapes) -> None:
    total = sum(h * w for h, w in spatial_shapes)
    if memory.shape[1] != total:
        raise ValueError(
            f"memory has {memory.shape[1]} tokens but the spatial shapes {list(spatial_shapes)} need {total}"
        )


_SAMPLE_BUDGET = 1 << 24  # sampled values (floats) per level and query chunk: bounds peak memory


def _level_grids(maps: Tensor, spatial_shapes: SpatialShapes, locations: Tensor) -> tuple[list[Tensor], Tensor]:
    """Per level (N*M, D, H, W) images of the per-head maps (N, S, M, D), and the sampling grids
    (N, Q, M, L, P, 2) in grid_sample's [-1, 1] convention."""
    n, _, heads, dim = maps.shape
    levels = locations.shape[3]
    if levels != len(spatial_shapes):
        raise ValueError(f"locations have {levels} levels but {len(spatial_shapes)} spatial shapes were given")
    per_level = maps.split([h * w for h, w in spatial_shapes], dim=1)
    images = [lvl.flatten(2).transpose(1, 2).reshape(n * heads, dim, h, w)
              for lvl, (h, w) in zip(per_level, spatial_shapes)]
    return images, 2 * locations - 1


def _sample(image: Tensor, grids: Tensor, level: int) -> Tensor:
    """Bilinear samples of one level: image (N*M, D, H, W), grids (N, Q, M, L, P, 2) -> (N*M, D, Q, P)."""
    grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (N*M, Q, P, 2)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _query_chunks(n: int, heads: int, dim: int, queries: int, points: int) -> list[slice]:
    """Query ranges whose per-level samples (N*M, D, chunk, P) stay within the sampling budget."""
    size = max(1, _SAMPLE_BUDGET // max(1, n * heads * dim * points))
    return [slice(s, s + size) for s in range(0, queries, size)]


def ms_deform_attn(value: Tensor, spatial_shapes: SpatialShapes, locations: Tensor, weights: Tensor) -> Tensor:
    """Weighted sum of sampled values: value (N, S, M, D), weights (N, Q, M, L, P) -> (N, Q, M * D).

    Reduced one level (and one chunk of queries) at a time, so no (N, M, D, Q, L, P) tensor of
    samples is ever held: peak memory is one level's samples of one query chunk.
    """
    n, queries, heads, levels, points = weights.shape
    dim = value.shape[-1]
    images, grids = _level_grids(value, spatial_shapes, locations)
    w = weights.permute(0, 2, 1, 3, 4).reshape(n * heads, 1, queries, levels, points)
    chunks = []
    for part in _query_chunks(n, heads, dim, queries, points):
        out = None
        for level, image in enumerate(images):
            term = (_sample(image, grids[:, part], level) * w[:, :, part, level]).sum(-1)  # (N*M, D, q)
            out = term if out is None else out + term
        chunks.append(out)
    out = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=-1)
    return out.view(n, heads * dim, queries).transpose(1, 2).contiguous()


def _ring_offsets_init(linear: nn.Linear, heads: int, levels: int, points: int) -> None:
    """Deformable DETR's offset init: zero weights, bias = head direction on a square ring, point k at radius k + 1."""
    nn.init.zeros_(linear.weight)
    thetas = torch.arange(heads, dtype=torch.float32) * (2.0 * math.pi / heads)
    ring = torch.stack([thetas.cos(), thetas.sin()], -1)
    ring = ring / ring.abs().max(-1, keepdim=True)[0]
    bias = ring.view(heads, 1, 1, 2).repeat(1, levels, points, 1)
    bias = bias * torch.arange(1, points + 1, dtype=torch.float32).view(1, 1, points, 1)
    with torch.no_grad():
        linear.bias.copy_(bias.flatten())


def _locations(reference_xy: Tensor, offsets: Tensor, spatial_shapes: SpatialShapes) -> Tensor:
    """reference (N, Q, L, 2) in [0, 1] + offsets (N, Q, M, L, P, 2) in pixels of each level."""
    normaliser = offsets.new_tensor([(w, h) for h, w in spatial_shapes])  # (L, 2) as (x, y)
    return reference_xy[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with learned per-head softmax weights (encoder self-attention)."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR init: ring offsets, uniform attention (zero logits), xavier projections."""
        _ring_offsets_init(self.sampling_offsets, self.n_heads, self.n_levels, self.n_points)
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: Tensor, reference_xy: Tensor, memory: Tensor, spatial_shapes: SpatialShapes) -> Tensor:
        """query (N, Q, C), reference_xy (N, Q, L, 2) in [0, 1], memory (N, S, C) -> (N, Q, C)."""
        _check_shapes(memory, spatial_shapes)
        n, q, _ = query.shape
        m, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(memory).view(n, memory.shape[1], m, self.d_model // m)
        offsets = self.sampling_offsets(query).view(n, q, m, levels, points, 2)
        weights = self.attention_weights(query).view(n, q, m, levels * points).softmax(-1)
        locations = _locations(reference_xy, offsets, spatial_shapes)
        out = ms_deform_attn(value, spatial_shapes, locations, weights.view(n, q, m, levels, points))
        return self.output_proj(out)


class KeyAwareMSDeformAttn(nn.Module):
    """Deformable cross-attention whose weights come from query-key dot products at the sampled points.

    ``forward`` returns (output (N, Q, C), logits (N, Q, M * L * P), offsets (N, Q, M, L, P, 2)):
    the logits are q_h . k_h / sqrt(D) before any softmax, ordered head-major, then level,
    then point; the offsets are the raw predictions in pixels of each level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.value_proj = nn.Linear(d_model, d_model)
        self.key_proj = nn.Linear(d_model, d_model)
        self.query_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        _ring_offsets_init(self.sampling_offsets, n_heads, n_levels, n_points)
        for proj in (self.value_proj, self.query_proj, self.key_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self, query: Tensor, reference_xy: Tensor, memory: Tensor, spatial_shapes: SpatialShapes
    ) -> tuple[Tensor, Tensor, Tensor]:
        """query (N, Q, C), reference_xy (N, Q, L, 2) in [0, 1], memory (N, S, C)."""
        _check_shapes(memory, spatial_shapes)
        n, q, _ = query.shape
        m, levels, points = self.n_heads, self.n_levels, self.n_points
        d = self.d_model // m
        offsets = self.sampling_offsets(query).view(n, q, m, levels, points, 2)
        locations = _locations(reference_xy, offsets, spatial_shapes)
        key_images, grids = _level_grids(self.key_proj(memory).view(n, -1, m, d), spatial_shapes, locations)
        value_images, _ = _level_grids(self.value_proj(memory).view(n, -1, m, d), spatial_shapes, locations)
        q_heads = self.query_proj(query).view(n, q, m, d).transpose(1, 2).reshape(n * m, q, 1, d)
        # Keys and values share the sampling locations. Both are reduced one level (and one chunk of
        # queries) at a time: the logits first (they need every level before the softmax), then the
        # values, so no (N, M, D, Q, L * P) tensor of samples is ever held.
        chunks_out, chunks_logits = [], []
        for part in _query_chunks(n, m, d, q, points):
            qh = q_heads[:, part]  # (N*M, q, 1, D)
            logits = torch.cat([torch.matmul(qh, _sample(image, grids[:, part], level).permute(0, 2, 1, 3))
                                for level, image in enumerate(key_images)], dim=-1) / math.sqrt(d)  # (N*M, q, 1, LP)
            weights = logits.softmax(-1).view(n * m, -1, levels, points)
            out = None
            for level, image in enumerate(value_images):
                term = (_sample(image, grids[:, part], level) * weights[:, None, :, level]).sum(-1)  # (N*M, D, q)
                out = term if out is None else out + term
            chunks_out.append(out)
            chunks_logits.append(logits)
        out = torch.cat(chunks_out, dim=-1).view(n, m * d, q).transpose(1, 2)  # (N, Q, M*D)
        logits = torch.cat(chunks_logits, dim=1).view(n, m, q, levels * points)
        return self.output_proj(out), logits.transpose(1, 2).flatten(2), offsets
