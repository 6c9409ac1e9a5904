"""DDColor (Kang et al., ICCV 2023): ConvNeXt encoder, pixel decoder, colour-query decoder, refine conv.

Parameter names and shapes match the released DDColor checkpoints (`ddcolor_paper`,
`ddcolor_modelscope`, `ddcolor_artistic`: ConvNeXt-L; `ddcolor_paper_tiny`: ConvNeXt-T; all
with 100 colour queries, 3 scales, 9 decoder layers, nf 512, spectral norm on the last
upsampler), which `load_ddcolor_checkpoint` loads strictly.

Network (all maps (B, C, h, w)):

    grey RGB in [0, 1] -> ImageNet normalisation (the `mean` / `std` buffers) -> x
    ConvNeXt -> stage maps f0..f3, strides 4, 8, 16, 32, each through its LayerNorm
    pixel decoder: u0 = up(f3, f2) (stride 16, nf), u1 = up(u0, f1) (8, nf),
                   u2 = up(u1, f0) (4, nf/2), pixels = 4x pixel shuffle of u2 (1, nf/2)
    colour decoder: Q learned queries attend to u0, u1, u2 in turn (9 layers), then each
                   query's embedding is dotted with every pixel -> (B, Q, H, W)
    refine: 1x1 conv on [queries maps, x] -> ab (B, 2, H, W), in Lab units

`forward` takes lightness and does the official inference preprocessing around `network`:
L (B, 1, H, W) in [0, 100] is resized to `input_size` x `input_size`, turned into a grey RGB
image with the Lab -> RGB formula DDColor's training used (a = b = 0), colourised, and the ab
map is resized back to (H, W) with nearest-neighbour interpolation, as the official pipeline
does. Differences to the official OpenCV pipeline (which resizes the colour image and converts
with cv2): we resize L instead of RGB and use the training-time Lab -> RGB constants; both are
small input-side effects, and parity is defined on the network input (`network`).

Colorizer contract (`models/colorizer.py`): `forward_features(l, hook)` calls `hook(i, map)` after
stage i and continues with what it returns. Stages 0..3 are the ConvNeXt stage outputs (the
returned map feeds both the decoder's skip of that stage and the later stages), stages 4..6
the pixel decoder's upsample-fuse blocks (it feeds the next block and the colour decoder).
All maps cover the whole frame, so tracks in input pixels map onto them directly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.checkpoint_io import CheckpointMismatchError, load_strict, read_state_dict
from models.convnext import ConvNeXt, StageHook
from models.dinov2 import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class EncoderSpec:
    depths: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]


ENCODERS: dict[str, EncoderSpec] = {
    "convnext-t": EncoderSpec((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext-l": EncoderSpec((3, 3, 27, 3), (192, 384, 768, 1536)),
}

# Keys of the 4-way classifier that early DDColor code had on its ConvNeXt; the released
# files still carry them, the released code no longer builds them (it loads with strict=False).
LEGACY_UNUSED_KEYS = ("encoder.arch.head_cls.weight", "encoder.arch.head_cls.bias")

# Lab -> XYZ -> linear sRGB constants of DDColor's training-time `tensor_lab2rgb`
# (D65 white, 2-degree observer).
_D65_WHITE = (0.95047, 1.0, 1.08883)
_RGB_FROM_XYZ = (
    (3.240481340, -1.53715152, -0.49853633),
    (-0.96925495, 1.875990000, 0.041555930),
    (0.055646640, -0.20404134, 1.057311070),
)


def grey_rgb_from_lightness(lightness: Tensor) -> Tensor:
    """L (B, 1, H, W) in [0, 100] -> the sRGB image of Lab (L, 0, 0), (B, 3, H, W) in [0, 1].

    With a = b = 0 the three XYZ components share f^-1((L + 16) / 116), so linear RGB is that
    value times M @ white (about 1 per channel, not exactly).
    """
    f = (lightness + 16.0) / 116.0
    t = torch.where(f > 0.2068966, f.pow(3), (f - 16.0 / 116.0) / 7.787)
    per_channel = [sum(m * w for m, w in zip(row, _D65_WHITE)) for row in _RGB_FROM_XYZ]
    linear = t * lightness.new_tensor(per_channel).view(1, 3, 1, 1)
    srgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(0.0031308).pow(1 / 2.4) - 0.055, 12.92 * linear)
    return srgb.clamp(0.0, 1.0)


def spectral_norm(conv: nn.Conv2d, power_iterations: int = 100) -> nn.Conv2d:
    """torch's spectral norm (keys weight_orig / weight_u / weight_v), with (u, v) iterated onto the
    initial weight's leading singular vectors, so a fresh model is normalised in eval mode too
    (torch starts from random vectors and refines them only in training-mode forwards). Random
    weights have a small gap between their top singular values, hence the many (matrix-vector) steps."""
    conv = nn.utils.spectral_norm(conv)
    if conv.weight_orig.is_meta:  # no values (layout-only construction)
        return conv
    with torch.no_grad():
        mat = conv.weight_orig.flatten(1)
        u = conv.weight_u
        for _ in range(power_iterations):
            v = F.normalize(mat.T @ u, dim=0)
            u = F.normalize(mat @ v, dim=0)
        conv.weight_u.copy_(u)
        conv.weight_v.copy_(v)
    return conv


def spectral_conv(in_ch: int, out_ch: int, kernel_size: int, bias: bool) -> nn.Conv2d:
    """Conv with spectral normalisation, Kaiming-normal init."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=(kernel_size - 1) // 2, bias=bias)
    nn.init.kaiming_normal_(conv.weight)
    if bias:
        nn.init.zeros_(conv.bias)
    return spectral_norm(conv)


def icnr_(weight: Tensor, scale: int) -> None:
    """ICNR init: the scale^2 conv outputs that the pixel shuffle spreads over one output channel
    start equal, so the upsampler initially behaves like nearest upsampling (no checkerboard)."""
    out_ch = weight.shape[0]
    base = nn.init.kaiming_normal_(weight.new_empty(out_ch // scale**2, *weight.shape[1:]))
    with torch.no_grad():
        weight.copy_(base.repeat_interleave(scale**2, dim=0))


class PixelShuffleUpsample(nn.Module):
    """1x1 conv (spectral norm) [+ BN] -> ReLU -> pixel shuffle by `scale` -> 2x2 blur (replicate pad)."""

    def __init__(self, in_ch: int, out_ch: int, scale: int, batch_norm: bool) -> None:
        super().__init__()
        conv = nn.Conv2d(in_ch, out_ch * scale**2, 1, bias=not batch_norm)
        icnr_(conv.weight, scale)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        layers: list[nn.Module] = [spectral_norm(conv)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch * scale**2))
        self.conv = nn.Sequential(*layers)  # keys conv.0 (conv), conv.1 (BN)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        x = F.pixel_shuffle(F.relu(self.conv(x)), self.scale)
        # The blur removes the remaining checkerboard: each pixel averages itself with its
        # up / left neighbours (edges replicated).
        return F.avg_pool2d(F.pad(x, (1, 0, 1, 0), mode="replicate"), 2, stride=1)


class UpsampleFuseBlock(nn.Module):
    """Upsample the coarser map 2x, concatenate with the batch-normed skip map, ReLU, 3x3 conv, ReLU, BN."""

    def __init__(self, up_in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.shuf = PixelShuffleUpsample(up_in_ch, out_ch, scale=2, batch_norm=True)
        self.bn = nn.BatchNorm2d(skip_ch)
        nn.init.constant_(self.bn.bias, 1e-3)
        # Sequential indices 0 conv, 1 ReLU, 2 BN give the official keys conv.0 / conv.2.
        self.conv = nn.Sequential(
            spectral_conv(out_ch + skip_ch, out_ch, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(out_ch)
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        up = self.shuf(x)
        if up.shape[-2:] != skip.shape[-2:]:
            raise ValueError(f"upsampled map {tuple(up.shape[-2:])} does not match skip map {tuple(skip.shape[-2:])}")
        return self.conv(F.relu(torch.cat([up, self.bn(skip)], dim=1)))


def sine_position_embedding(height: int, width: int, dim: int, device: torch.device) -> Tensor:
    """DETR sine embedding of a (height, width) grid, coordinates normalised to (0, 2 pi]: (dim, h, w).

    The first dim/2 channels encode y, the rest x; within each half sin and cos alternate.
    """
    half = dim // 2
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + 1e-6) * (2 * math.pi)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + 1e-6) * (2 * math.pi)
    freq = 10000.0 ** (2 * (torch.arange(half, dtype=torch.float32, device=device) // 2) / half)

    def encode(coords: Tensor) -> Tensor:  # (n,) -> (n, half)
        angles = coords[:, None] / freq
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=-1).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, half)
    pos_x = encode(x)[None, :, :].expand(height, width, half)
    return torch.cat([pos_y, pos_x], dim=-1).permute(2, 0, 1)


class CrossAttentionLayer(nn.Module):
    """Post-norm: q = LN(q + MHA(q + q_pos, mem + mem_pos, mem))."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        _xavier_matrices(self)

    def forward(self, queries: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor) -> Tensor:
        out = self.multihead_attn(queries + query_pos, memory + memory_pos, memory, need_weights=False)[0]
        return self.norm(queries + out)


class SelfAttentionLayer(nn.Module):
    """Post-norm: q = LN(q + MHA(q + q_pos, q + q_pos, q))."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        _xavier_matrices(self)

    def forward(self, queries: Tensor, query_pos: Tensor) -> Tensor:
        qk = queries + query_pos
        return self.norm(queries + self.self_attn(qk, qk, queries, need_weights=False)[0])


class FFNLayer(nn.Module):
    """Post-norm: q = LN(q + linear2(ReLU(linear1(q))))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)
        _xavier_matrices(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


def _xavier_matrices(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        widths = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MultiScaleColorDecoder(nn.Module):
    """Colour queries refined by cross-attention to three decoder scales in turn (coarse to fine),
    then self-attention and an FFN per layer; their embeddings dotted with the pixel map give
    one channel per query."""

    NUM_SCALES = 3

    def __init__(
        self,
        in_channels: Sequence[int],
        pixel_channels: int,
        num_queries: int = 100,
        hidden_dim: int = 256,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        num_layers: int = 9,
    ) -> None:
        super().__init__()
        if len(in_channels) != self.NUM_SCALES:
            raise ValueError(f"the colour decoder reads {self.NUM_SCALES} scales, got in_channels {list(in_channels)}")
        self.hidden_dim = hidden_dim
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.NUM_SCALES, hidden_dim)
        self.input_proj = nn.ModuleList(nn.Conv2d(c, hidden_dim, 1) for c in in_channels)
        for proj in self.input_proj:
            nn.init.kaiming_uniform_(proj.weight, a=1)
            nn.init.zeros_(proj.bias)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, num_heads) for _ in range(num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, num_heads) for _ in range(num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(hidden_dim, dim_feedforward) for _ in range(num_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.color_embed = MLP(hidden_dim, hidden_dim, pixel_channels, 3)

    def forward(self, scales: Sequence[Tensor], pixels: Tensor) -> Tensor:
        """scales: three (B, C_i, h_i, w_i) maps; pixels (B, pixel_channels, H, W) -> (B, Q, H, W)."""
        if len(scales) != self.NUM_SCALES:
            raise ValueError(f"expected {self.NUM_SCALES} scale maps, got {len(scales)}")
        memories, positions = [], []
        for i, feat in enumerate(scales):
            h, w = feat.shape[-2:]
            positions.append(sine_position_embedding(h, w, self.hidden_dim, feat.device).flatten(1).T[None])
            memory = self.input_proj[i](feat).flatten(2) + self.level_embed.weight[i][None, :, None]
            memories.append(memory.transpose(1, 2))  # (B, h*w, hidden)
        batch = pixels.shape[0]
        query_pos = self.query_embed.weight[None].expand(batch, -1, -1)
        queries = self.query_feat.weight[None].expand(batch, -1, -1)
        for i, (cross, self_attn, ffn) in enumerate(
            zip(self.transformer_cross_attention_layers, self.transformer_self_attention_layers,
                self.transformer_ffn_layers)
        ):
            level = i % self.NUM_SCALES
            queries = cross(queries, query_pos, memories[level], positions[level].to(memories[level].dtype))
            queries = ffn(self_attn(queries, query_pos))
        color_embed = self.color_embed(self.decoder_norm(queries))  # (B, Q, pixel_channels)
        return torch.einsum("bqc,bchw->bqhw", color_embed, pixels)


class DDColorDecoder(nn.Module):
    """Pixel decoder (three upsample-fuse blocks + 4x pixel shuffle) and the colour-query decoder."""

    def __init__(
        self,
        encoder_dims: Sequence[int],
        nf: int = 512,
        num_queries: int = 100,
        hidden_dim: int = 256,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        num_layers: int = 9,
    ) -> None:
        super().__init__()
        d0, d1, d2, d3 = encoder_dims
        self.layers = nn.Sequential(
            UpsampleFuseBlock(d3, d2, nf), UpsampleFuseBlock(nf, d1, nf), UpsampleFuseBlock(nf, d0, nf // 2)
        )
        self.last_shuf = PixelShuffleUpsample(nf // 2, nf // 2, scale=4, batch_norm=False)
        self.color_decoder = MultiScaleColorDecoder(
            [nf, nf, nf // 2], nf // 2, num_queries, hidden_dim, num_heads, dim_feedforward, num_layers
        )

    @property
    def block_channels(self) -> list[int]:
        return [block.conv[0].out_channels for block in self.layers]

    def forward(self, features: Sequence[Tensor], hook: StageHook | None = None, first_stage: int = 0) -> Tensor:
        """Four encoder maps (strides 4..32) -> query maps (B, Q, 4 h0, 4 w0).

        `hook(first_stage + k, map)` replaces the output of upsample-fuse block k (strides 16, 8,
        4) before the next block and the colour decoder read it.
        """
        f0, f1, f2, f3 = features
        x, outs = f3, []
        for k, (block, skip) in enumerate(zip(self.layers, (f2, f1, f0))):
            x = block(x, skip)
            if hook is not None:
                x = _checked_hook(hook, first_stage + k, x)
            outs.append(x)
        return self.color_decoder(outs, self.last_shuf(x))


def _checked_hook(hook: StageHook, stage: int, x: Tensor) -> Tensor:
    out = hook(stage, x)
    if out.shape != x.shape:
        raise ValueError(f"stage hook changed stage {stage}'s shape {tuple(x.shape)} to {tuple(out.shape)}")
    return out


@dataclass
class DDColorConfig:
    """DDColor architecture; the defaults are the released DDColor-L (`encoder: convnext-t` for DDColor-T).

    `depths`, `dims` and the decoder widths only shrink the model for tests (None = the encoder's).
    `input_size`: the square resolution the network runs at (official inference 512; None runs
    at the input resolution, which must then be a multiple of 32).
    `update_norm_statistics`: False (default, for fine-tuning a released model) keeps every
    BatchNorm on its running statistics and every spectral norm on its stored (u, v) in train
    mode too, so training starts from exactly the function the model computes in eval mode.
    True is the official from-scratch behaviour: batch statistics, and one power iteration per
    forward that updates (u, v).
    """

    encoder: str = "convnext-l"
    depths: Optional[list[int]] = None
    dims: Optional[list[int]] = None
    nf: int = 512
    num_queries: int = 100
    hidden_dim: int = 256
    num_heads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 9
    input_size: Optional[int] = 512
    update_norm_statistics: bool = False
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown DDColor encoder {self.encoder!r}; expected one of {sorted(ENCODERS)}")
        if self.input_size is not None and (self.input_size <= 0 or self.input_size % DDColor.STRIDE):
            raise ValueError(
                f"input_size must be a positive multiple of {DDColor.STRIDE} or None, got {self.input_size}"
            )


class DDColor(nn.Module):
    """DDColor image colouriser: lightness (B, 1, H, W) in [0, 100] -> ab (B, 2, H, W) in Lab units.

    Implements the colorizer contract of `models/colorizer.py`: stages 0..3 are the ConvNeXt
    stages (strides 4..32 of the network input, widths `dims`), stages 4..6 the pixel decoder's
    upsample-fuse blocks (strides 16, 8, 4; widths nf, nf, nf / 2).
    """

    STRIDE = 32  # the encoder downsamples 32x and the decoder must meet each skip map exactly
    NUM_ENCODER_STAGES = 4

    def __init__(self, config: DDColorConfig | None = None) -> None:
        super().__init__()
        cfg = config or DDColorConfig()
        spec = ENCODERS[cfg.encoder]
        self.config = cfg
        self.encoder = nn.Module()  # the container gives the official `encoder.arch.*` keys
        self.encoder.arch = ConvNeXt(
            cfg.depths if cfg.depths is not None else spec.depths,
            cfg.dims if cfg.dims is not None else spec.dims,
            grad_checkpointing=cfg.grad_checkpointing,
        )
        self.decoder = DDColorDecoder(
            self.encoder.arch.dims, cfg.nf, cfg.num_queries, cfg.hidden_dim, cfg.num_heads, cfg.dim_feedforward,
            cfg.dec_layers,
        )
        # Doubly nested, as the official code builds it: keys refine_net.0.0.*
        self.refine_net = nn.Sequential(nn.Sequential(spectral_conv(cfg.num_queries + 3, 2, 1, bias=True)))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.stage_channels: list[int] = list(self.encoder.arch.dims) + self.decoder.block_channels

    def train(self, mode: bool = True) -> DDColor:
        super().train(mode)
        if mode and not self.config.update_norm_statistics:
            for module in self.modules():
                # Spectral norm runs its power iteration only when its conv is in training mode.
                if isinstance(module, nn.BatchNorm2d) or hasattr(module, "weight_orig"):
                    module.eval()
        return self

    def normalize(self, rgb: Tensor) -> Tensor:
        """RGB in [0, 1] -> ImageNet-normalised network input."""
        return (rgb - self.mean) / self.std

    def encode(self, x: Tensor, hook: StageHook | None = None) -> list[Tensor]:
        """Normalised input (B, 3, h, w) -> four LayerNorm'd stage maps (strides 4, 8, 16, 32).

        `hook(i, map)` replaces stage i's output (B, C_i, h / 2^(i+2), w / 2^(i+2)); see
        `ConvNeXt.forward`.
        """
        h, w = x.shape[-2:]
        if h % self.STRIDE or w % self.STRIDE:
            raise ValueError(f"network input {h}x{w} must be a multiple of {self.STRIDE} on both sides")
        return self.encoder.arch(x, hook)

    def decode(self, features: Sequence[Tensor], x: Tensor, hook: StageHook | None = None) -> Tensor:
        """Stage maps + the normalised input (B, 3, h, w) -> ab (B, 2, h, w); `hook` sees stages 4..6."""
        if len(features) != self.NUM_ENCODER_STAGES:
            raise ValueError(f"decode needs the {self.NUM_ENCODER_STAGES} encoder stage maps, got {len(features)}")
        queries = self.decoder(features, hook, first_stage=self.NUM_ENCODER_STAGES)
        return self.refine_net(torch.cat([queries, x], dim=1))

    def network(self, rgb: Tensor, hook: StageHook | None = None) -> Tensor:
        """The official `DDColor.forward`: grey RGB (B, 3, h, w) in [0, 1], h and w multiples of 32 -> ab."""
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"expected an RGB batch (B, 3, h, w), got shape {tuple(rgb.shape)}")
        x = self.normalize(rgb)
        return self.decode(self.encode(x, hook), x, hook)

    def preprocess(self, lightness: Tensor) -> Tensor:
        """L (B, 1, H, W) in [0, 100] -> grey RGB network input (B, 3, s, s), s = input_size."""
        if lightness.dim() != 4 or lightness.shape[1] != 1:
            raise ValueError(f"expected lightness (B, 1, H, W), got shape {tuple(lightness.shape)}")
        if not lightness.is_floating_point():
            raise ValueError(f"expected float lightness in [0, 100], got {lightness.dtype}")
        size = self.config.input_size
        if size is not None and tuple(lightness.shape[-2:]) != (size, size):
            # cv2.resize's INTER_LINEAR in the official pipeline: half-pixel centres, no antialias.
            lightness = F.interpolate(lightness, size=(size, size), mode="bilinear", align_corners=False)
        return grey_rgb_from_lightness(lightness)

    def forward_features(self, lightness: Tensor, hook: StageHook | None = None) -> Tensor:
        """L (B, 1, H, W) in [0, 100] -> ab (B, 2, H, W) in Lab units, `hook` after stages 0..6."""
        ab = self.network(self.preprocess(lightness), hook)
        if ab.shape[-2:] != lightness.shape[-2:]:
            ab = F.interpolate(ab, size=lightness.shape[-2:], mode="nearest")  # the official resize back
        return ab

    def forward(self, lightness: Tensor) -> Tensor:
        return self.forward_features(lightness, None)


def encoder_from_state_dict(state_dict: Mapping[str, Tensor]) -> str:
    """Which ENCODERS entry a DDColor state dict was saved from (by its stage widths and depths)."""
    try:
        dims = tuple(state_dict[f"encoder.arch.stages.{i}.0.gamma"].shape[0] for i in range(4))
    except KeyError as err:
        raise CheckpointMismatchError(f"not a DDColor state dict: no ConvNeXt stage parameter {err}") from None
    depths = tuple(
        len({k.split(".")[4] for k in state_dict if k.startswith(f"encoder.arch.stages.{i}.")}) for i in range(4)
    )
    for name, spec in ENCODERS.items():
        if spec.dims == dims and spec.depths == depths:
            return name
    raise CheckpointMismatchError(f"unknown DDColor encoder: stage dims {dims}, depths {depths}")


def read_ddcolor_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """A DDColor checkpoint's state dict: plain, or the official `{'params': ...}` (the EMA copy
    `params_ema` of training snapshots is not used, as in the official loader), without
    LEGACY_UNUSED_KEYS."""
    state_dict = read_state_dict(path, wrapper_keys=("params", "state_dict", "model"))
    return {k: v for k, v in state_dict.items() if k not in LEGACY_UNUSED_KEYS}


def load_ddcolor_checkpoint(path: str | os.PathLike, **overrides: Any) -> DDColor:
    """Build a DDColor matching a released checkpoint and load it strictly (local file only).

    The encoder variant is read from the tensors unless `overrides` names one; other
    `overrides` are DDColorConfig fields (e.g. `input_size=256`). Anything missing, unexpected
    or mis-shaped (besides LEGACY_UNUSED_KEYS) raises CheckpointMismatchError naming every key.
    """
    state_dict = read_ddcolor_state_dict(path)
    if "encoder" not in overrides:
        overrides["encoder"] = encoder_from_state_dict(state_dict)
    model = DDColor(DDColorConfig(**overrides))
    load_strict(model, state_dict, what=f"DDColor {overrides['encoder']} checkpoint {os.fspath(path)}")
    return model


__all__ = [
    "DDColor",
    "DDColorConfig",
    "DDColorDecoder",
    "ENCODERS",
    "LEGACY_UNUSED_KEYS",
    "MultiScaleColorDecoder",
    "encoder_from_state_dict",
    "grey_rgb_from_lightness",
    "load_ddcolor_checkpoint",
    "read_ddcolor_state_dict",
]
