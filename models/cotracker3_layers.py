"""Building blocks of CoTracker3: the RAFT-style feature CNN and the update transformer.

Attribute names follow the official checkpoint layout (including the misspelled
``virual_tracks``) so that published ``.pth`` files load strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ResidualBlock(nn.Module):
    """Two 3x3 convs with instance norm; a strided 1x1 projection when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.norm1 = nn.InstanceNorm2d(out_ch)
        self.norm2 = nn.InstanceNorm2d(out_ch)
        # `downsample.0` is the checkpoint name of the projection conv
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride), nn.InstanceNorm2d(out_ch))
            if stride != 1 else None
        )

    def forward(self, x: Tensor) -> Tensor:
        # in-place ReLUs on fresh norm outputs: full-resolution maps, so allocations dominate on CPU
        y = F.relu(self.norm1(self.conv1(x)), inplace=True)
        y = F.relu(self.norm2(self.conv2(y)), inplace=True)
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu(x + y, inplace=True)


class FeatureEncoder(nn.Module):
    """Per-frame CNN: four residual stages fused at 1/``stride`` resolution -> ``dim`` channels."""

    def __init__(self, dim: int = 128, stride: int = 4) -> None:
        super().__init__()
        self.stride = stride
        widths = (dim // 2, dim // 4 * 3, dim, dim)
        self.norm1 = nn.InstanceNorm2d(widths[0])
        self.norm2 = nn.InstanceNorm2d(dim * 2)
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3)
        stages, in_ch = [], widths[0]
        for width, stage_stride in zip(widths, (1, 2, 2, 2)):
            stages.append(nn.Sequential(ResidualBlock(in_ch, width, stage_stride), ResidualBlock(width, width, 1)))
            in_ch = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.conv2 = nn.Conv2d(sum(widths), dim * 2, 3, padding=1)
        self.conv3 = nn.Conv2d(dim * 2, dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, dim, H / stride, W / stride)."""
        size = (x.shape[-2] // self.stride, x.shape[-1] // self.stride)
        x = F.relu(self.norm1(self.conv1(x)), inplace=True)
        feats = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            feats.append(F.interpolate(x, size, mode="bilinear", align_corners=True))
        x = F.relu(self.norm2(self.conv2(torch.cat(feats, dim=1))), inplace=True)
        return self.conv3(x)


class Mlp(nn.Module):
    """Linear -> activation -> Linear."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, approximate: str = "none") -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head attention with a fused key/value projection (``to_kv``)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.heads = num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        B, L, D = x.shape
        h, d = self.heads, D // self.heads
        q = self.to_q(x).view(B, L, h, d).transpose(1, 2)
        k, v = self.to_kv(context).view(B, context.shape[1], 2, h, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(B, L, D))


class SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block (non-affine LayerNorms, tanh-GELU MLP)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim, approximate="tanh")

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(nn.Module):
    """Like SelfAttentionBlock, attending to a context normalised by an affine LayerNorm."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm_context = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim, approximate="tanh")

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.cross_attn(self.norm1(x), self.norm_context(context))
        return x + self.mlp(self.norm2(x))


class UpdateTransformer(nn.Module):
    """Alternating time attention and virtual-track space attention over (track, frame) tokens.

    Space attention runs after every ``time_depth // space_depth``-th time block: the
    virtual tracks read from the points, talk among themselves, and the points read back,
    so the per-frame cost is O(N * num_virtual) instead of O(N^2).
    """

    def __init__(self, input_dim: int, hidden_size: int, num_heads: int, time_depth: int, space_depth: int,
                 num_virtual_tracks: int, mlp_ratio: float) -> None:
        super().__init__()
        if space_depth < 1 or time_depth % space_depth:
            raise ValueError(f"time_depth ({time_depth}) must be a positive multiple of space_depth ({space_depth})")
        self.num_virtual_tracks = num_virtual_tracks
        self.space_every = time_depth // space_depth
        # misspelled on purpose: the official checkpoints use this key
        self.virual_tracks = nn.Parameter(torch.randn(1, num_virtual_tracks, 1, hidden_size))
        self.input_transform = nn.Linear(input_dim, hidden_size)
        self.flow_head = nn.Linear(hidden_size, 2)
        self.vis_conf_head = nn.Linear(hidden_size, 2)
        self.time_blocks = nn.ModuleList(
            SelfAttentionBlock(hidden_size, num_heads, mlp_ratio) for _ in range(time_depth))
        self.space_virtual_blocks = nn.ModuleList(
            SelfAttentionBlock(hidden_size, num_heads, mlp_ratio) for _ in range(space_depth))
        self.space_point2virtual_blocks = nn.ModuleList(
            CrossAttentionBlock(hidden_size, num_heads, mlp_ratio) for _ in range(space_depth))
        self.space_virtual2point_blocks = nn.ModuleList(
            CrossAttentionBlock(hidden_size, num_heads, mlp_ratio) for _ in range(space_depth))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # near-zero heads: the first updates barely move the initial estimate
        nn.init.trunc_normal_(self.flow_head.weight, std=0.001)
        nn.init.trunc_normal_(self.vis_conf_head.weight, std=0.001)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, S, input_dim) -> (delta xy (B, N, S, 2), delta vis/conf logits (B, N, S, 2))."""
        tokens = self.input_transform(x)
        B, N, S, D = tokens.shape
        tokens = torch.cat([tokens, self.virual_tracks.expand(B, -1, S, -1)], dim=1)
        M = tokens.shape[1]
        for i, time_block in enumerate(self.time_blocks):
            tokens = time_block(tokens.reshape(B * M, S, D)).view(B, M, S, D)
            if i % self.space_every:
                continue
            j = i // self.space_every
            space = tokens.transpose(1, 2).reshape(B * S, M, D)
            points, virtual = space[:, :N], space[:, N:]
            virtual = self.space_virtual2point_blocks[j](virtual, points)
            virtual = self.space_virtual_blocks[j](virtual)
            points = self.space_point2virtual_blocks[j](points, virtual)
            tokens = torch.cat([points, virtual], dim=1).view(B, S, M, D).transpose(1, 2)
        tokens = tokens[:, :N]
        return self.flow_head(tokens), self.vis_conf_head(tokens)
