"""Chrono (Kim et al., CVPR 2025): frozen DINOv2 with temporal adapters, tracked by correlation.

Follows cvlab-kaist/Chrono at 153b2f2 (`models/locotrack_model.py`, `models/utils.py`); see
`shared/reference/chrono.md`. Where the paper and the code differ, this follows the code:
11 adapters (after blocks 0..depth-2, none after the last block) and a soft-argmax disk of
5 *grid cells* (20 px at 256), not 5 pixels.

Pipeline for a video (B, T, 3, H, W) in 0..255:
1. ImageNet normalisation, bilinear resize (align_corners=False) to (g * patch)^2, 896^2 for the
   published g = 64, patch 14.
2. DINOv2 blocks; after block i < depth - 1, `adapter[i]` reads the patch tokens of the whole
   clip as (B, C, T, g, g) and its output is added to them (prefix tokens get + 0).
3. The last block's output through the final LayerNorm, L2-normalised: features (B, T, g, g, C).
4. Per query: the feature at the query point and frame (trilinear, border padding), correlated
   with every cell of every frame; softmax(20 * corr) over the g * g cells; argmax; mean of the
   cell centres weighted by the softmax inside a disk of radius 5 cells around the argmax,
   renormalised; on the query frame the query point itself.
5. Occlusion and expected-distance logits: Linear(3, 2) on the detached [mean, max, min] of the
   raw correlation over the cells. Occluded iff 1 - (1 - sigmoid(occ)) (1 - sigmoid(expd)) > 0.5.

Coordinates: inputs and outputs follow DESIGN.md (pixels of the given video, centres at integers).
The reference works in raster coordinates (centres at i + 0.5) scaled by size ratios; the
conversions here are the same maps written in our convention.

Parameter names match the released Lightning checkpoints after stripping their `model.` prefix
(`dino.*` in the official DINOv2 layout, `adapter.{i}.*`, `occ_linear.*`); `load_chrono_checkpoint`
does that strictly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.checkpoint_io import load_strict, read_state_dict
from models.dinov2 import DinoV2, imagenet_normalize


@dataclass
class ChronoConfig:
    """Network hyper-parameters; defaults are the published Chrono ViT-B/14 (`config/dino.ini`)."""

    backbone: str = "vitb14"  # DINOv2 arch: vits14 | vitb14 | vitl14 | vitg14
    num_register_tokens: int = 0
    # Overrides of the DINOv2 arch, for tiny test models only.
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    patch_size: int = 14
    backbone_img_size: int = 518  # position-embedding grid the DINOv2 weights were trained at
    feature_grid: int = 64  # tokens per side; the input is resized to feature_grid * patch_size
    adapter_channels: int = 128
    adapter_heads: int = 4
    adapter_window: int = 13  # frames; each frame attends to |dt| <= window // 2
    softmax_temperature: float = 20.0
    soft_argmax_radius: float = 5.0  # grid cells (strict <)
    query_chunk_size: int = 256
    grad_checkpointing: bool = False  # recompute DINOv2 blocks in backward

    def __post_init__(self) -> None:
        if self.feature_grid % 4:
            raise ValueError(f"feature_grid must be a multiple of 4 (stride-4 adapter pooling), "
                             f"got {self.feature_grid}")
        if self.adapter_channels % self.adapter_heads:
            raise ValueError(
                f"adapter_channels {self.adapter_channels} is not divisible by adapter_heads {self.adapter_heads}")
        if self.adapter_window < 1 or self.adapter_window % 2 == 0:
            raise ValueError(f"adapter_window must be a positive odd number of frames, got {self.adapter_window}")
        if self.query_chunk_size < 1:
            raise ValueError(f"query_chunk_size must be >= 1, got {self.query_chunk_size}")


def local_band_mask(num_frames: int, window: int, device: torch.device | None = None) -> Tensor:
    """(T, T) bool: frame q may attend frame k iff |q - k| <= window // 2.

    Same as xformers' LocalAttentionFromBottomRightMask(window // 2, window // 2) used by the
    reference on square (self-attention) shapes; no padding, so clip-end frames see fewer keys.
    """
    idx = torch.arange(num_frames, device=device)
    return (idx[:, None] - idx[None, :]).abs() <= window // 2


class LocalTemporalAttention(nn.Module):
    """Multi-head self-attention over time within a band, no positional encoding."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x (S, T, dim): S independent sequences of T frames."""
        s, t, c = x.shape
        q, k, v = self.qkv(x).reshape(s, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        mask = local_band_mask(t, self.window, x.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # default scale 1/sqrt(head_dim)
        return self.proj(out.transpose(1, 2).reshape(s, t, c))


class TemporalAdapter(nn.Module):
    """Chrono's adapter; attribute names are the released checkpoint's.

    GroupNorm(1, C) over the whole clip -> 3x3 conv C->c, ReLU -> 4x4/4 conv, ReLU ->
    x + LocalTemporalAttention(LayerNorm(x)) per low-res cell -> 4x4/4 transposed conv, ReLU ->
    3x3 conv c->C, zero-initialised so the adapter starts as the zero map.
    """

    def __init__(self, dim: int, channels: int = 128, num_heads: int = 4, window: int = 13) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, dim)
        self.conv1 = nn.Conv2d(dim, channels, kernel_size=3, padding=1)
        self.conv_pool = nn.Conv2d(channels, channels, kernel_size=4, stride=4)
        self.norm2 = nn.LayerNorm(channels)
        self.attn_temp = LocalTemporalAttention(channels, num_heads, window)
        self.conv_upsample = nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=4)
        self.conv2 = nn.Conv2d(channels, dim, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, T, h, w) -> (B, C, T, h, w); h and w multiples of 4."""
        b, c, t, h, w = x.shape
        # One group over (C, T, h, w): statistics of the whole clip, as in the reference.
        # contiguous(): CPU GroupNorm backward segfaults (torch 2.13) on a channels-last view
        # whose input needs no gradient, i.e. the first adapter of a frozen backbone.
        x = self.norm(x.contiguous()).transpose(1, 2).reshape(b * t, c, h, w)
        x = F.relu(self.conv_pool(F.relu(self.conv1(x))))
        ch, hp, wp = x.shape[1:]
        seq = x.reshape(b, t, ch, hp * wp).permute(0, 3, 1, 2).reshape(b * hp * wp, t, ch)
        seq = seq + self.attn_temp(self.norm2(seq))  # pre-LN, residual taken before the norm
        x = seq.reshape(b, hp * wp, t, ch).permute(0, 2, 3, 1).reshape(b * t, ch, hp, wp)
        x = self.conv2(F.relu(self.conv_upsample(x)))
        return x.reshape(b, t, c, h, w).transpose(1, 2)


def local_soft_argmax(probs: Tensor, radius: float) -> Tensor:
    """(..., h, w) probabilities -> (..., 2) (x, y) in grid units, cell centres at j + 0.5.

    The softmax weights of the cells whose centres lie strictly within `radius` of the argmax
    cell's centre, renormalised; weights elsewhere (a second peak) are ignored.
    """
    h, w = probs.shape[-2:]
    peak = probs.flatten(-2).argmax(-1)
    xs = torch.arange(w, device=probs.device, dtype=probs.dtype) + 0.5
    ys = torch.arange(h, device=probs.device, dtype=probs.dtype) + 0.5
    px = (peak % w).to(probs.dtype) + 0.5
    py = torch.div(peak, w, rounding_mode="floor").to(probs.dtype) + 0.5
    dist2 = (xs - px[..., None, None]) ** 2 + (ys[:, None] - py[..., None, None]) ** 2
    weights = probs * (dist2 < radius**2)
    total = weights.sum((-2, -1)).clamp_min(1e-12)
    x = (weights.sum(-2) * xs).sum(-1) / total
    y = (weights.sum(-1) * ys).sum(-1) / total
    return torch.stack([x, y], dim=-1)


def occluded_from_logits(occlusion: Tensor, expected_dist: Tensor) -> Tensor:
    """The TAPIR rule: occluded iff 1 - (1 - sigmoid(occ)) (1 - sigmoid(expd)) > 0.5."""
    return 1 - (1 - torch.sigmoid(occlusion)) * (1 - torch.sigmoid(expected_dist)) > 0.5


@dataclass
class ChronoOutput:
    tracks: Tensor  # (B, T, N, 2) pixels of the input video
    occlusion_logits: Tensor  # (B, T, N), higher = occluded
    expected_dist_logits: Tensor  # (B, T, N), higher = likely far from the truth

    @property
    def visible(self) -> Tensor:
        return ~occluded_from_logits(self.occlusion_logits, self.expected_dist_logits)


class Chrono(nn.Module):
    """DINOv2 + temporal adapters + correlation / local soft-argmax head."""

    def __init__(self, config: ChronoConfig | None = None, backbone: DinoV2 | None = None,
                 freeze_backbone: bool = True) -> None:
        super().__init__()
        self.config = config = config or ChronoConfig()
        if backbone is None:
            backbone = DinoV2(config.backbone, config.num_register_tokens, embed_dim=config.embed_dim,
                              depth=config.depth, num_heads=config.num_heads, img_size=config.backbone_img_size,
                              patch_size=config.patch_size)
        if backbone.patch_size != config.patch_size:
            raise ValueError(f"backbone patch size {backbone.patch_size} != config.patch_size {config.patch_size}")
        backbone.set_grad_checkpointing(config.grad_checkpointing)
        self.dino = backbone
        dim = backbone.embed_dim
        self.adapter = nn.ModuleList(
            TemporalAdapter(dim, config.adapter_channels, config.adapter_heads, config.adapter_window)
            for _ in range(len(backbone.blocks) - 1)
        )
        self.occ_linear = nn.Linear(3, 2)
        self.backbone_frozen = freeze_backbone
        if freeze_backbone:
            self.dino.requires_grad_(False)

    def train(self, mode: bool = True) -> Chrono:
        super().train(mode)
        if self.backbone_frozen:
            self.dino.eval()  # a frozen backbone never switches to training behaviour
        return self

    # ------------------------------------------------------------------ features
    def features(self, video: Tensor) -> Tensor:
        """(B, T, 3, H, W) in 0..255 -> L2-normalised features (B, T, g, g, C)."""
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be (B, T, 3, H, W), got {tuple(video.shape)}")
        b, t = video.shape[:2]
        g = self.config.feature_grid
        size = g * self.config.patch_size
        frames = imagenet_normalize(video).flatten(0, 1)
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
        prefix = self.dino.num_prefix_tokens
        last = len(self.adapter)

        def add_adapter(i: int, tokens: Tensor) -> Tensor:
            if i >= last:
                return tokens
            patches = tokens[:, prefix:].reshape(b, t, g, g, -1).permute(0, 4, 1, 2, 3)
            delta = self.adapter[i](patches).permute(0, 2, 3, 4, 1).reshape(b * t, g * g, -1)
            # Prefix tokens get exactly + 0, as the reference's concatenated zeros.
            return tokens + F.pad(delta, (0, 0, prefix, 0)).to(tokens.dtype)

        feats = self.dino.get_intermediate_layers(frames, n=1, block_hook=add_adapter)[0]
        feats = feats.reshape(b, t, g, g, -1)
        return feats / torch.sqrt(torch.clamp_min((feats * feats).sum(-1, keepdim=True), 1e-6))

    # ------------------------------------------------------------------ tracking
    @staticmethod
    def _check_queries(queries: Tensor, batch: int, num_frames: int) -> None:
        if queries.ndim != 3 or queries.shape[0] != batch or queries.shape[2] != 3:
            raise ValueError(f"queries must be (B={batch}, N, 3) as (t, x, y), got {tuple(queries.shape)}")
        t = queries[..., 0]
        if not torch.isfinite(queries).all() or (t < 0).any() or (t > num_frames - 1).any():
            raise ValueError(f"query frames must be finite and within [0, {num_frames - 1}]")

    def query_features(self, feats: Tensor, queries: Tensor, hw: tuple[int, int]) -> Tensor:
        """Trilinear sample (align_corners=False, border) at the query points -> (B, N, C)."""
        b, t, gh, gw, c = feats.shape
        h, w = hw
        # Pixel (x, y) -> grid_sample's [-1, 1]: raster (x + 0.5) / W; frame t -> (t + 0.5) / T.
        norm = torch.stack([
            2 * (queries[..., 1] + 0.5) / w - 1,
            2 * (queries[..., 2] + 0.5) / h - 1,
            2 * (queries[..., 0] + 0.5) / t - 1,
        ], dim=-1).to(feats.dtype)
        volume = feats.permute(0, 4, 1, 2, 3)  # (B, C, T, g, g)
        out = F.grid_sample(volume, norm[:, :, None, None, :], mode="bilinear", padding_mode="border",
                            align_corners=False)
        return out.reshape(b, c, -1).transpose(1, 2)

    def track_chunk(self, feats: Tensor, query_feats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Features (B, T, g, g, C), query features (B, n, C) -> grid xy (B, n, T, 2), occ and expd (B, n, T)."""
        # Float32 even under autocast: bf16 rounds the correlation of unit features to steps of 2^-8,
        # i.e. 0.08 logit steps at temperature 20 and ties that move the argmax by whole cells.
        with torch.autocast(feats.device.type, enabled=False):
            corr = torch.einsum("bnc,bthwc->bnthw", query_feats.float(), feats.float())
            b, n, t, gh, gw = corr.shape
            probs = F.softmax(corr.reshape(b, n, t, gh * gw) * self.config.softmax_temperature, dim=-1)
            grid_xy = local_soft_argmax(probs.reshape(b, n, t, gh, gw), self.config.soft_argmax_radius)
            stats = torch.stack([corr.mean((-2, -1)), corr.amax((-2, -1)), corr.amin((-2, -1))], dim=-1)
            logits = self.occ_linear(stats.detach())
        return grid_xy, logits[..., 0], logits[..., 1]

    def forward(self, video: Tensor, queries: Tensor) -> ChronoOutput:
        """Track queries (B, N, 3) = (t, x, y) pixels through video (B, T, 3, H, W) in 0..255."""
        b, t, _, h, w = video.shape
        self._check_queries(queries, b, t)
        feats = self.features(video)
        queries = queries.float()  # coordinates stay float32 even when features are half precision
        query_feats = self.query_features(feats, queries, (h, w))
        chunks = [self.track_chunk(feats, query_feats[:, i:i + self.config.query_chunk_size])
                  for i in range(0, queries.shape[1], self.config.query_chunk_size)]
        grid_xy, occ, expd = (torch.cat(parts, dim=1) for parts in zip(*chunks, strict=True))
        # Grid raster units -> pixels of the input video (centres at integers).
        gh, gw = feats.shape[2:4]
        scale = grid_xy.new_tensor([w / gw, h / gh])
        tracks = (grid_xy * scale - 0.5).transpose(1, 2)  # (B, T, N, 2)
        frames = torch.arange(t, device=video.device).view(1, t, 1)
        on_query_frame = (torch.round(queries[..., 0]).unsqueeze(1) == frames).unsqueeze(-1)
        tracks = torch.where(on_query_frame, queries[:, None, :, 1:], tracks.float())
        return ChronoOutput(tracks, occ.transpose(1, 2), expd.transpose(1, 2))

    # ------------------------------------------------------------------ weights
    def adapter_parameter_count(self) -> int:
        """Trainable parameters Chrono adds to DINOv2 (adapters + occlusion head)."""
        return sum(p.numel() for p in self.adapter.parameters()) + sum(p.numel() for p in self.occ_linear.parameters())

    def load_chrono_checkpoint(self, source: str | os.PathLike | Mapping[str, Tensor]) -> None:
        """Load a released Chrono Lightning `.ckpt` (or a bare state_dict) strictly.

        The released LightningModule holds the network as `self.model`, so its keys are
        `model.dino.*`, `model.adapter.{i}.*`, `model.occ_linear.*`; the prefix is removed.
        """
        state = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else dict(source)
        if any(k.startswith("model.") for k in state):
            state = {k.removeprefix("model."): v for k, v in state.items()}
        load_strict(self, state, what=f"Chrono checkpoint {source if isinstance(source, (str, os.PathLike)) else ''}")


__all__ = [
    "Chrono",
    "ChronoConfig",
    "ChronoOutput",
    "LocalTemporalAttention",
    "TemporalAdapter",
    "local_band_mask",
    "local_soft_argmax",
    "occluded_from_logits",
]
