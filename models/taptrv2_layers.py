"""Building blocks of TAPTRv2: positional encodings, encoder layer, decoder layer with APU.

Parameter names follow the official TAPTRv2 checkpoint (IDEA-Research/TAPTR, branch v2),
which is why some modules are ``nn.Sequential`` with ReLUs between indexed Linears.
Decoder tensors are batch-first: (B * W, N, C) with B * W the frames of a window and N
the points.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.deformable_attention import KeyAwareMSDeformAttn, MSDeformAttn, SpatialShapes

SINE_FEATS = 128  # per coordinate in the query sine embedding, independent of d_model (as the checkpoint)


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    """log(x / (1 - x)) with both terms floored at eps after clamping x to [0, 1] (the reference's helper)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _frequencies(num_feats: int, temperature: float, like: Tensor) -> Tensor:
    # built in float32 like the reference, then cast: float64 runs see the same frequencies
    k = torch.arange(num_feats, dtype=torch.float32, device=like.device)
    return (temperature ** (2 * (k // 2) / num_feats)).to(like.dtype)


def _interleave_sin_cos(x: Tensor) -> Tensor:
    return torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), dim=-1).flatten(-2)


def sine_embed_position(pos: Tensor, temperature: float = 10.0) -> Tensor:
    """Sine embedding of normalised coordinates (..., 2 or 4) as (x, y[, w, h]).

    Output (..., 128 * k) ordered y, x[, w, h], 128 features each.
    """
    if pos.shape[-1] not in (2, 4):
        raise ValueError(f"positions must have 2 or 4 coordinates, got {pos.shape[-1]}")
    freqs = _frequencies(SINE_FEATS, temperature, pos)
    embeds = [_interleave_sin_cos(pos[..., i, None] * (2 * math.pi) / freqs) for i in range(pos.shape[-1])]
    embeds[0], embeds[1] = embeds[1], embeds[0]
    return torch.cat(embeds, dim=-1)


def sine_position_map(height: int, width: int, channels: int, temperature: float, like: Tensor) -> Tensor:
    """Normalised 2-D sine encoding of a feature map (DETR's PositionEmbeddingSine): (1, channels, H, W).

    Rows/columns 1..H are scaled to (0, 2 pi]; y features first. Computed in float32 as the reference.
    """
    half = channels // 2
    ys = torch.arange(1, height + 1, dtype=torch.float32, device=like.device) / (height + 1e-6) * (2 * math.pi)
    xs = torch.arange(1, width + 1, dtype=torch.float32, device=like.device) / (width + 1e-6) * (2 * math.pi)
    freqs = _frequencies(half, temperature, ys)
    pos_y = _interleave_sin_cos(ys[:, None] / freqs)[:, None, :].expand(height, width, half)
    pos_x = _interleave_sin_cos(xs[:, None] / freqs)[None, :, :].expand(height, width, half)
    return torch.cat([pos_y, pos_x], dim=-1).permute(2, 0, 1)[None].to(like.dtype)


class MLP(nn.Module):
    """Linear layers with ReLU between them (keys ``layers.{i}``)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def relu_mlp(*dims: int, final_relu: bool = False) -> nn.Sequential:
    """nn.Sequential(Linear, ReLU, Linear, ...): the checkpoint's indexed-Sequential MLPs."""
    modules: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        modules.append(nn.Linear(a, b))
        if i < len(dims) - 2 or final_relu:
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def grouped_self_attention(attn: nn.MultiheadAttention, qk: Tensor, value: Tensor, groups: Tensor) -> Tensor:
    """``attn(qk, qk, value)`` (sequence-first (L, B, E)) where a token attends only to tokens of its
    own group, groups (B, L) bool.

    The same function as ``attn`` with the (B * heads, L, L) mask ``groups_i != groups_j``, without
    holding that mask: two passes whose key masks (B, 1, 1, L) keep one group each, merged per query
    (one unmasked pass when no batch element holds both groups).
    """
    mixed = groups.any(1) & ~groups.all(1)
    if not bool(mixed.any()):
        return attn(qk, qk, value, need_weights=False)[0]
    L, B, E = qk.shape
    heads = attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

    def split(x: Tensor) -> Tensor:  # (L, B, E) -> (B, heads, L, E / heads)
        return x.view(L, B, heads, E // heads).permute(1, 2, 0, 3)

    q, k, v = split(F.linear(qk, w_q, b_q)), split(F.linear(qk, w_k, b_k)), split(F.linear(value, w_v, b_v))
    out = None
    for keep in (groups, ~groups):
        keys = keep | ~keep.any(1, keepdim=True)  # an empty group keeps every key (its queries are unused)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :])
        out = o if out is None else torch.where(groups[:, None, :, None], out, o)
    out = out.permute(2, 0, 1, 3).reshape(L * B, E)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias).view(L, B, E)


class EncoderLayer(nn.Module):
    """Deformable self-attention over all levels + FFN, post-norm."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: Tensor, pos: Tensor, reference_xy: Tensor, spatial_shapes: SpatialShapes) -> Tensor:
        src = self.norm1(src + self.self_attn(src + pos, reference_xy, src, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src), inplace=True)))


class Encoder(nn.Module):
    def __init__(self, num_layers: int, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, d_ffn, n_levels, n_heads, n_points) for _ in range(num_layers)
        )

    @staticmethod
    def reference_points(spatial_shapes: SpatialShapes, like: Tensor) -> Tensor:
        """Cell centres of every level, normalised: (1, S, L, 2), the same point repeated for each level."""
        centres = []
        for h, w in spatial_shapes:
            ys = torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=like.device) / h
            xs = torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=like.device) / w
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            centres.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], -1))
        points = torch.cat(centres, 0).to(like.dtype)
        return points[None, :, None, :].expand(1, -1, len(spatial_shapes), 2)

    def forward(self, src: Tensor, pos: Tensor, spatial_shapes: SpatialShapes) -> Tensor:
        reference_xy = self.reference_points(spatial_shapes, src).expand(src.shape[0], -1, -1, -1)
        for layer in self.layers:
            src = layer(src, pos, reference_xy, spatial_shapes)
        return src


class DecoderLayer(nn.Module):
    """Cross-attention with attention-based position update (APU), temporal SA, spatial SA, FFN.

    Every sub-layer is residual + post-LayerNorm.
    """

    def __init__(
        self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int, pe_temperature: float
    ) -> None:
        super().__init__()
        self.pe_temperature = pe_temperature
        self.cross_attn = KeyAwareMSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.temp_self_attn = nn.MultiheadAttention(d_model, n_heads)
        self.norm_temp = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.update_pos_embed_head = MLP(4 * SINE_FEATS, d_model, d_model, 2)
        num_samples = n_heads * n_levels * n_points
        # APU "disentangler": its own weights over the raw logits, separate from the content softmax
        self.caupdate_weight_normalizer = relu_mlp(num_samples, d_model, d_model, final_relu=True)
        self.caupdate_weight_regressor = nn.Sequential(nn.Linear(d_model, num_samples))

    def position_update(self, logits: Tensor, offsets: Tensor, spatial_shapes: SpatialShapes) -> Tensor:
        """APU step Δxy (..., 2): one softmax over all heads, levels and points of the disentangled logits,
        weighting the sampling offsets normalised by their level's (W, H)."""
        normaliser = offsets.new_tensor([(w, h) for h, w in spatial_shapes])
        steps = (offsets / normaliser[:, None, :]).flatten(-4, -2)  # ..., M*L*P, 2
        weights = self.caupdate_weight_regressor(self.caupdate_weight_normalizer(logits)).softmax(-1)
        return (weights[..., None] * steps).sum(-2)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference: Tensor,
        update_mask: Tensor,
        memory: Tensor,
        spatial_shapes: SpatialShapes,
        temporal_mask: Tensor,
        tracked: Tensor,
        window: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """tgt/query_pos (B*W, N, C); reference (B*W, N, 4) boxes in [0, 1]; update_mask (B*W, N, 1) float;
        tracked (B*W, N) bool: in spatial self-attention, points tracked and points not yet tracked
        in a frame do not attend to each other.

        Returns (content, reference after APU (frames with update_mask 0 unchanged), masked Δxy).
        """
        levels = len(spatial_shapes)
        reference_xy = reference[:, :, None, :2].expand(-1, -1, levels, 2)
        attended, logits, offsets = self.cross_attn(tgt + query_pos, reference_xy, memory, spatial_shapes)
        tgt = self.norm1(tgt + attended)
        moved_xy = inverse_sigmoid(reference[..., :2] + self.position_update(logits, offsets, spatial_shapes)).sigmoid()
        moved = torch.cat([moved_xy, reference[..., 2:]], dim=-1)
        delta_xy = update_mask * (moved_xy - reference[..., :2])
        reference = moved * update_mask + reference * (1 - update_mask)
        query_pos = self.update_pos_embed_head(sine_embed_position(reference, self.pe_temperature))

        # temporal self-attention: each point attends over the window's frames
        frames, points, channels = tgt.shape
        batch = frames // window

        def per_point(x: Tensor) -> Tensor:  # (B*W, N, C) -> (W, B*N, C)
            return x.view(batch, window, points, channels).permute(1, 0, 2, 3).flatten(1, 2)

        t, q = per_point(tgt), per_point(tgt + query_pos)
        t = self.norm_temp(t + self.temp_self_attn(q, q, t, attn_mask=temporal_mask, need_weights=False)[0])
        tgt = t.view(window, batch, points, channels).permute(1, 0, 2, 3).flatten(0, 1)

        # spatial self-attention: points of one frame attend to each other
        s, q = tgt.transpose(0, 1), (tgt + query_pos).transpose(0, 1)
        s = self.norm2(s + grouped_self_attention(self.self_attn, q, s, tracked))
        tgt = s.transpose(0, 1)

        tgt = self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt), inplace=True)))
        return tgt, reference, delta_xy
