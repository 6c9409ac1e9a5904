"""Tracktention layer (Lai & Vedaldi, CVPR 2025): attend to a video along point tracks.

There is no official code. What the official architecture figure shows (verified): Attentional
Sampling (track-point queries -> image tokens, LayerNorm on Q and K, value = the projected image
tokens) -> Track Transformer of 2 x (temporal self-attention + feed-forward) -> Attentional
Splatting (grid-position queries -> updated track tokens). Taken from secondary sources
(unverified, configurable here): Gaussian distance bias with sigma = 1/2 in token units, attention
along each track only, sinusoidal time encoding, zero-initialised output projection inside a
residual F' = F + Tracktention(F), optional 2-D RoPE (base 100) on queries and keys.

Choices made here where the sources are silent (each is a constructor argument):
- Tokenise = Fourier features of the point in grid-normalised coordinates ([-1, 1] across the
  grid, so the tokeniser is independent of the grid size) -> Linear -> GELU; W_Q follows it.
- "Project" of image tokens = LayerNorm + Linear (C -> inner width): ViT residual streams carry
  large outlier channels, so they are normalised before the layer reads them.
- QK LayerNorm acts per head (over the head dimension), as in ViT-22B / timm ``qk_norm``.
- ``mask_invisible``: invisible track points are never attended to — neither as keys in the
  temporal attention nor as keys in splatting — so an occluded point can neither feed its track
  nor write the occluded object's feature onto the occluder. A track with no visible step attends
  over all its steps (finite, and it writes nothing); a frame with no visible track gets no update.

Coordinates. Tracks are (x, y) in pixels of the image of size (H, W) the features were computed
from, pixel centres at integers (DESIGN.md). A grid of h x w feature cells tiles that image, so
cell j spans x in [j*W/w - 0.5, (j+1)*W/w - 0.5] and its centre is at x = (j + 0.5) * W / w - 0.5;
inversely a pixel x sits at u = (x + 0.5) * w / W - 0.5 in token units (token centres at
integers). ViT with patch 14: patch j covers pixels 14j..14j+13, centre 14j + 6.5. Stride-s
ConvNet: cell j summarises pixels sj..sj+s-1, centre sj + (s-1)/2 (the align_corners=False
convention). Padded convolutions whose cell j is centred on pixel s*j instead are off by
(s-1)/(2s) < 0.5 token, below sigma.

Cost. Sampling and splatting are (tracks x tokens) attentions; with sigma = 1/2 token their
softmax is local, and by default (``attention="windowed"``) they are computed on local windows of
the grid, the same function to float32 rounding with memory bounded by tracks x window
(models/windowed_attention.py states and checks the truncation bound). ``attention="dense"``
computes every pair: the reference, and the only path that returns attention weights.

Extra tokens: a ViT's cls / register tokens come first in the token sequence; pass
``num_prefix_tokens`` and they are returned unchanged (the caller may equally split them off with
``x[:, :P]`` / ``x[:, P:]`` and concatenate them back).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.windowed_attention import grid_attends_points, layernorm_logit_bound, points_attend_grid, window_radius

ATTENTION_IMPLS = ("windowed", "dense")


def pixels_to_grid(points: Tensor, image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> Tensor:
    """Map (x, y) pixel coordinates (centres at integers) to token units (token centres at integers).

    u = (x + 0.5) * w / W - 0.5 and v = (y + 0.5) * h / H - 0.5; see the module docstring.
    """
    H, W = image_hw
    h, w = grid_hw
    if min(H, W, h, w) <= 0:
        raise ValueError(f"image_hw {tuple(image_hw)} and grid_hw {tuple(grid_hw)} must be positive")
    points = points.float()
    # Multiply by the integer grid size before dividing by the image size: exact for pixel centres of cells.
    u = (points[..., 0] + 0.5) * w / W - 0.5
    v = (points[..., 1] + 0.5) * h / H - 0.5
    return torch.stack([u, v], dim=-1)


def grid_to_pixels(grid_points: Tensor, image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> Tensor:
    """Inverse of :func:`pixels_to_grid`: token units -> pixels."""
    H, W = image_hw
    h, w = grid_hw
    x = (grid_points[..., 0] + 0.5) * W / w - 0.5
    y = (grid_points[..., 1] + 0.5) * H / h - 0.5
    return torch.stack([x, y], dim=-1)


def grid_positions(grid_hw: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """(h*w, 2) token centres (x=j, y=i) in token units, row-major like flattened patch tokens."""
    h, w = grid_hw
    ii, jj = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([jj.reshape(-1), ii.reshape(-1)], dim=-1)


def gaussian_bias(query_pos: Tensor, key_pos: Tensor, sigma: float) -> Tensor:
    """-||p_q - p_k||^2 / (2 sigma^2) for every query/key pair: (..., Q, 2), (..., K, 2) -> (..., Q, K).

    Symmetric in its arguments, so splatting's bias is the transpose of sampling's.
    """
    diff = query_pos.float().unsqueeze(-2) - key_pos.float().unsqueeze(-3)
    return -(diff * diff).sum(-1) / (2.0 * sigma * sigma)


def rope_2d(x: Tensor, pos: Tensor, base: float = 100.0) -> Tensor:
    """Axial 2-D rotary embedding: first half of the channels rotate with x, second half with y.

    x: (N, heads, L, d) with d % 4 == 0; pos: (N, L, 2) in token units. Dot products of rotated
    queries and keys depend only on the relative position of the two points.
    """
    d = x.shape[-1]
    n = d // 4
    freqs = base ** (-torch.arange(n, device=x.device, dtype=torch.float32) / n)
    pos = pos.float()
    angles = torch.cat([pos[..., 0:1] * freqs, pos[..., 1:2] * freqs], dim=-1).unsqueeze(1)  # (N, 1, L, d/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def sinusoidal_encoding(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    """(length, dim) transformer sine/cosine encoding of integer positions 0..length-1."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    enc = torch.zeros(length, dim, device=device)
    enc[:, 0::2] = torch.sin(position * div)
    enc[:, 1::2] = torch.cos(position * div)
    return enc


class FourierTokenizer(nn.Module):
    """Tokenise a point: [p, sin(2^k pi p), cos(2^k pi p)] of grid-normalised p -> Linear -> GELU."""

    def __init__(self, dim: int, num_freqs: int = 8) -> None:
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(num_freqs, dtype=torch.float32), persistent=False)
        self.linear = nn.Linear(2 + 4 * num_freqs, dim)

    def forward(self, pos: Tensor, grid_hw: tuple[int, int]) -> Tensor:
        h, w = grid_hw
        size = torch.tensor([w, h], device=pos.device, dtype=torch.float32)
        p = (pos.float() + 0.5) / size * 2.0 - 1.0  # grid edges at -1 and 1
        angles = (p.unsqueeze(-1) * self.freqs).flatten(-2)
        feats = torch.cat([p, angles.sin(), angles.cos()], dim=-1)
        return F.gelu(self.linear(feats.to(self.linear.weight.dtype)))


class PositionQueryAttention(nn.Module):
    """Multi-head cross-attention whose queries are tokenised positions and whose keys/values are content.

    query = LN(W_Q(tokenise(p_query))), key = LN(W_K(project(content))), value = project(content),
    logits = q.k / sqrt(d) + gaussian_bias(p_query, p_content). Used for sampling (queries = track
    points, content = image tokens) and for splatting (queries = grid cells, content = track tokens).
    """

    def __init__(
        self,
        content_dim: int,
        dim: int,
        num_heads: int,
        sigma: float,
        num_freqs: int,
        rope: bool,
        rope_base: float,
        project_norm: bool,
        frame_chunk: int | None,
        grid_queries: bool,
        attention: str,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.grid_queries = grid_queries  # splatting (grid-cell queries) vs sampling (grid keys)
        self.attention = attention
        self.head_dim = dim // num_heads
        self.sigma = sigma
        self.rope = rope
        self.rope_base = rope_base
        self.frame_chunk = frame_chunk
        self.tokenise = FourierTokenizer(dim, num_freqs)
        self.q = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(self.head_dim)
        self.project = nn.Sequential(nn.LayerNorm(content_dim), nn.Linear(content_dim, dim)) if project_norm \
            else nn.Linear(content_dim, dim)
        self.k = nn.Linear(dim, dim)
        self.k_norm = nn.LayerNorm(self.head_dim)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim))  # (N, L, heads, d), token-major

    def _attend(
        self,
        query_pos: Tensor,
        content: Tensor,
        content_pos: Tensor,
        key_valid: Tensor | None,
        grid_hw: tuple[int, int],
        return_weights: bool,
    ) -> tuple[Tensor, Tensor | None]:
        value = self.project(content)
        # A position shared by all frames (the grid) is tokenised once and broadcast.
        q = self.q_norm(self._heads(self.q(self.tokenise(query_pos, grid_hw))))
        k = self.k_norm(self._heads(self.k(value)))
        v = self._heads(value)
        if self.rope:
            q = rope_2d(q.transpose(1, 2), query_pos, self.rope_base).transpose(1, 2)
            k = rope_2d(k.transpose(1, 2), content_pos, self.rope_base).transpose(1, 2)
        q, k = q.to(v.dtype), k.to(v.dtype)  # LayerNorm runs in float32 under autocast
        if self.attention == "windowed" and not return_weights:
            return self._attend_windowed(q, k, v, query_pos, content_pos, key_valid, grid_hw), None
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (N, heads, L, d)
        q = q.expand(content.shape[0], -1, -1, -1)
        bias = gaussian_bias(query_pos, content_pos, self.sigma)  # (N, Q, K), float32
        if key_valid is not None:
            bias = bias.masked_fill(~key_valid[:, None, :], float("-inf"))
        bias = bias.unsqueeze(1).to(q.dtype)  # broadcast over heads
        if return_weights:
            weights = torch.softmax(q @ k.transpose(-1, -2) * self.head_dim ** -0.5 + bias, dim=-1)
            out = weights @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return out.transpose(1, 2).flatten(-2), weights

    def _attend_windowed(
        self, q: Tensor, k: Tensor, v: Tensor, query_pos: Tensor, content_pos: Tensor, key_valid: Tensor | None,
        grid_hw: tuple[int, int],
    ) -> Tensor:
        """The same function on local windows (models/windowed_attention.py); (N, L, heads, d) in."""
        bound = layernorm_logit_bound(self.q_norm, self.k_norm)
        radius = window_radius(bound, self.sigma)
        if self.grid_queries:
            out, _ = grid_attends_points(q, k, v, content_pos, key_valid, grid_hw, self.sigma, radius, bound)
        else:
            out = points_attend_grid(q, k, v, query_pos, grid_hw, self.sigma, radius)
        return out.flatten(-2)

    def forward(
        self,
        query_pos: Tensor,
        content: Tensor,
        content_pos: Tensor,
        grid_hw: tuple[int, int],
        key_valid: Tensor | None = None,
        return_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """query_pos (N or 1, Q, 2), content (N, K, C), content_pos (N or 1, K, 2) in token units;
        key_valid (N, K) bool with at least one True per row. Returns (N, Q, dim) and, if asked,
        the attention weights (N, heads, Q, K)."""
        n = content.shape[0]
        chunk = self.frame_chunk or n
        outs, weights = [], []
        for s in range(0, n, chunk):
            sl = slice(s, s + chunk)
            o, w = self._attend(
                query_pos if query_pos.shape[0] == 1 else query_pos[sl],
                content[sl],
                content_pos if content_pos.shape[0] == 1 else content_pos[sl],
                None if key_valid is None else key_valid[sl],
                grid_hw,
                return_weights,
            )
            outs.append(o)
            weights.append(w)
        return torch.cat(outs), (torch.cat(weights) if return_weights else None)


class TemporalBlock(nn.Module):
    """Pre-norm transformer block whose attention runs along time only: x (S, T, D), S = tracks."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, key_valid: Tensor | None = None) -> Tensor:
        S, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(S, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        mask = None if key_valid is None else key_valid[:, None, None, :]  # True = may be attended to
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(a.transpose(1, 2).reshape(S, T, D))
        return x + self.mlp(self.norm2(x))


class TrackTransformer(nn.Module):
    """Per-track temporal transformer: sinusoidal time encoding, pre-norm blocks, final LayerNorm.

    Tracks never attend to each other: the (B, T, M, D) tokens become B*M independent sequences.
    """

    def __init__(self, dim: int, num_heads: int, num_layers: int = 2, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TemporalBlock(dim, num_heads, mlp_ratio) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, visible: Tensor | None = None) -> Tensor:
        """tokens (B, T, M, D); visible (B, T, M) bool or None (no masking) -> (B, T, M, D)."""
        B, T, M, D = tokens.shape
        x = tokens.permute(0, 2, 1, 3).reshape(B * M, T, D)
        x = x + sinusoidal_encoding(T, D, tokens.device).to(x.dtype)
        key_valid = None
        if visible is not None:
            key_valid = visible.permute(0, 2, 1).reshape(B * M, T)
            # A track with no visible step attends over all its steps rather than over nothing (NaN).
            key_valid = key_valid | ~key_valid.any(dim=1, keepdim=True)
        for block in self.blocks:
            x = block(x, key_valid)
        return self.norm(x).view(B, M, T, D).permute(0, 2, 1, 3)


class Tracktention(nn.Module):
    """Tracktention layer: F' = F + W_out(splat(track_transformer(sample(F, tracks)))), W_out = 0 at init.

    Args:
        dim: feature width C of the tokens / maps the layer is applied to.
        num_heads: heads of the sampling, temporal and splatting attentions.
        inner_dim: width of track tokens (default C); image tokens are projected C -> inner_dim
            and the output inner_dim -> C.
        sigma: std of the Gaussian distance bias, in token units.
        track_transformer_layers: temporal blocks per layer.
        mask_invisible: invisible points are never attended to (see the module docstring).
        mlp_ratio: FFN expansion of the temporal blocks.
        num_freqs: Fourier frequencies of the position tokeniser.
        rope: also rotate sampling/splatting queries and keys by their 2-D positions.
        rope_base: RoPE frequency base (100 per the unverified paper note).
        frame_chunk: frames per sampling/splatting attention call (None = all at once); bounds
            the memory of the dense attention, which holds (tracks x tokens) weights per frame.
        attention: how sampling and splatting are computed, both the same function:
            "windowed" (default) on local windows of the grid, exact to float32 rounding, memory
            and time proportional to tracks x window (models/windowed_attention.py); "dense" over
            every (track, token) pair, the reference (and the only one that returns weights).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        inner_dim: int | None = None,
        sigma: float = 0.5,
        track_transformer_layers: int = 2,
        mask_invisible: bool = True,
        mlp_ratio: float = 4.0,
        num_freqs: int = 8,
        rope: bool = False,
        rope_base: float = 100.0,
        frame_chunk: int | None = None,
        attention: str = "windowed",
    ) -> None:
        super().__init__()
        inner_dim = dim if inner_dim is None else inner_dim
        if attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {attention!r}")
        if inner_dim % num_heads or (inner_dim // num_heads) % 2:
            raise ValueError(f"inner_dim {inner_dim} must be divisible by num_heads {num_heads} with an even head width")
        if rope and (inner_dim // num_heads) % 4:
            raise ValueError(f"rope needs a head width divisible by 4, got {inner_dim // num_heads}")
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        if frame_chunk is not None and frame_chunk < 1:
            raise ValueError(f"frame_chunk must be >= 1 or None, got {frame_chunk}")
        self.dim = dim
        self.inner_dim = inner_dim
        self.mask_invisible = mask_invisible
        attn_kw = dict(num_heads=num_heads, sigma=sigma, num_freqs=num_freqs, rope=rope, rope_base=rope_base,
                       frame_chunk=frame_chunk, attention=attention)
        self.sampling = PositionQueryAttention(dim, inner_dim, project_norm=True, grid_queries=False, **attn_kw)
        self.track_transformer = TrackTransformer(inner_dim, num_heads, track_transformer_layers, mlp_ratio)
        # Track tokens leave the transformer LayerNorm-ed, so splatting's Project needs no norm.
        self.splatting = PositionQueryAttention(inner_dim, inner_dim, project_norm=False, grid_queries=True, **attn_kw)
        self.out_proj = nn.Linear(inner_dim, dim)
        nn.init.zeros_(self.out_proj.weight)  # the layer starts as the identity: fine-tuning starts from the image model
        nn.init.zeros_(self.out_proj.bias)

    def sample(
        self, features: Tensor, points: Tensor, grid_hw: tuple[int, int], return_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Attentional sampling. features (N, h*w, C), points (N, M, 2) in token units ->
        track tokens (N, M, inner_dim) and, if asked, weights (N, heads, M, h*w)."""
        grid = grid_positions(grid_hw, features.device)[None]
        return self.sampling(points, features, grid, grid_hw, return_weights=return_weights)

    def splat(
        self,
        track_tokens: Tensor,
        points: Tensor,
        grid_hw: tuple[int, int],
        visible: Tensor | None = None,
        return_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attentional splatting + W_out. track_tokens (N, M, inner_dim), points (N, M, 2) in token
        units, visible (N, M) bool or None (all used) -> update (N, h*w, C) and, if asked, weights
        (N, heads, h*w, M). Frames with no usable track get a zero update."""
        grid = grid_positions(grid_hw, track_tokens.device)[None]
        frame_ok = None
        if visible is not None:
            frame_ok = visible.any(dim=1)
            visible = visible | ~frame_ok[:, None]  # keep softmax rows finite; zeroed below
        out, weights = self.splatting(grid, track_tokens, points, grid_hw, key_valid=visible,
                                      return_weights=return_weights)
        update = self.out_proj(out)
        if frame_ok is not None:
            update = update * frame_ok[:, None, None].to(update.dtype)
        return update, weights

    def forward(
        self,
        tokens: Tensor,
        tracks: Tensor,
        grid_hw: tuple[int, int],
        image_hw: tuple[int, int],
        visible: Tensor | None = None,
        num_prefix_tokens: int = 0,
    ) -> Tensor:
        """tokens (B, T, P + h*w, C) or (B*T, P + h*w, C) with P = num_prefix_tokens leading extra
        tokens (cls, registers) passed through unchanged; tracks (B, T, M, 2) in pixels of the
        (H, W) = image_hw image; visible (B, T, M) bool. Returns tokens of the input's shape."""
        if tracks.dim() != 4 or tracks.shape[-1] != 2:
            raise ValueError(f"tracks must be (B, T, M, 2), got {tuple(tracks.shape)}")
        B, T, M, _ = tracks.shape
        h, w = grid_hw
        if tokens.dim() == 3:
            if tokens.shape[0] != B * T:
                raise ValueError(f"tokens (B*T, N, C) has {tokens.shape[0]} rows but tracks give B*T = {B * T}")
            flat = tokens
        elif tokens.dim() == 4 and tokens.shape[:2] == (B, T):
            flat = tokens.flatten(0, 1)
        else:
            raise ValueError(f"tokens must be (B, T, N, C) or (B*T, N, C) matching tracks {tuple(tracks.shape)}, "
                             f"got {tuple(tokens.shape)}")
        if flat.shape[-1] != self.dim:
            raise ValueError(f"tokens have width {flat.shape[-1]}, layer built for dim {self.dim}")
        if flat.shape[1] != num_prefix_tokens + h * w:
            raise ValueError(f"tokens have {flat.shape[1]} per frame, expected num_prefix_tokens {num_prefix_tokens}"
                             f" + h*w {h}*{w} = {num_prefix_tokens + h * w}")
        if visible is not None and (visible.shape != (B, T, M) or visible.dtype != torch.bool):
            raise ValueError(f"visible must be a bool tensor (B, T, M) = {(B, T, M)}, "
                             f"got {visible.dtype} {tuple(visible.shape)}")
        mask = visible if self.mask_invisible else None
        prefix, feats = flat[:, :num_prefix_tokens], flat[:, num_prefix_tokens:]
        points = pixels_to_grid(tracks, image_hw, grid_hw).flatten(0, 1)  # (B*T, M, 2)
        track_tokens, _ = self.sample(feats, points, grid_hw)
        track_tokens = self.track_transformer(track_tokens.view(B, T, M, -1), mask).flatten(0, 1)
        update, _ = self.splat(track_tokens, points, grid_hw, None if mask is None else mask.flatten(0, 1))
        out = torch.cat([prefix, feats + update.to(feats.dtype)], dim=1)
        return out.view(tokens.shape)

    def forward_map(
        self, features: Tensor, tracks: Tensor, image_hw: tuple[int, int], visible: Tensor | None = None
    ) -> Tensor:
        """ConvNet maps: features (B, T, C, h, w) or (B*T, C, h, w) -> same shape."""
        h, w = features.shape[-2:]
        tokens = features.flatten(-2).transpose(-1, -2)  # (..., h*w, C)
        out = self.forward(tokens, tracks, (h, w), image_hw, visible)
        return out.transpose(-1, -2).unflatten(-1, (h, w))


def set_attention(module: nn.Module, attention: str) -> None:
    """Switch every Tracktention layer inside ``module`` to the ``attention`` implementation (same weights)."""
    if attention not in ATTENTION_IMPLS:
        raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {attention!r}")
    for m in module.modules():
        if isinstance(m, PositionQueryAttention):
            m.attention = attention


@dataclass
class TracktentionLayerConfig:
    """Hyper-parameters every Tracktention layer of a video model shares (configs extend it with placement)."""

    num_heads: int = 8
    sigma: float = 0.5
    track_transformer_layers: int = 2
    mask_invisible: bool = True
    rope: bool = False
    frame_chunk: Optional[int] = None
    attention: str = "windowed"  # "windowed" | "dense": the same function (see Tracktention)

    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`Tracktention` (and :class:`TracktentionSet`)."""
        return dict(num_heads=self.num_heads, sigma=self.sigma, track_transformer_layers=self.track_transformer_layers,
                    mask_invisible=self.mask_invisible, rope=self.rope, frame_chunk=self.frame_chunk,
                    attention=self.attention)


class TracktentionSet(nn.Module):
    """Tracktention layers placed after chosen blocks of a backbone; blocks without one are the identity.

    ``dim`` is one width for all layers or one per entry of ``block_indices`` (ConvNet stages differ).
    Call ``tset(i, tokens, ...)`` after block i. (Not named ``apply``: that would shadow nn.Module.apply.)
    State-dict keys are ``layers.<block index>.*``.
    """

    def __init__(self, dim: int | Sequence[int], block_indices: Sequence[int], **kwargs) -> None:
        super().__init__()
        indices = [int(i) for i in block_indices]
        if len(set(indices)) != len(indices) or any(i < 0 for i in indices):
            raise ValueError(f"block_indices must be distinct non-negative ints, got {list(block_indices)}")
        dims = [dim] * len(indices) if isinstance(dim, int) else list(dim)
        if len(dims) != len(indices):
            raise ValueError(f"got {len(dims)} widths for {len(indices)} block indices")
        self.layers = nn.ModuleDict({str(i): Tracktention(d, **kwargs) for i, d in zip(indices, dims)})

    @property
    def block_indices(self) -> list[int]:
        return [int(k) for k in self.layers]

    def __contains__(self, block_index: int) -> bool:
        return str(block_index) in self.layers

    def forward(
        self,
        block_index: int,
        tokens: Tensor,
        tracks: Tensor,
        grid_hw: tuple[int, int],
        image_hw: tuple[int, int],
        visible: Tensor | None = None,
        num_prefix_tokens: int = 0,
    ) -> Tensor:
        """Apply the layer placed after block ``block_index``, or return ``tokens`` as is."""
        if str(block_index) not in self.layers:
            return tokens
        return self.layers[str(block_index)](tokens, tracks, grid_hw, image_hw, visible, num_prefix_tokens)

    def forward_map(
        self, block_index: int, features: Tensor, tracks: Tensor, image_hw: tuple[int, int],
        visible: Tensor | None = None,
    ) -> Tensor:
        """ConvNet variant of :meth:`forward` on (B, T, C, h, w) or (B*T, C, h, w) maps."""
        if str(block_index) not in self.layers:
            return features
        return self.layers[str(block_index)].forward_map(features, tracks, image_hw, visible)
