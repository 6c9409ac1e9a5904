"""Image colorizers for the colorization family: the backbone contract and a from-scratch ConvNet.

Colorizer contract (every backbone the video wrapper accepts, ``models/video_colorizer.py``)
---------------------------------------------------------------------------------------------
An image colorizer is an ``nn.Module`` with::

    stage_channels: list[int]
        Channels C_i of the feature map after stage i, for i = 0 .. len(stage_channels) - 1,
        numbered in execution order (encoder stages first, then decoder stages). The video
        wrapper builds one Tracktention layer of width C_i for each configured stage i.

    forward_features(l: Tensor, hook: StageHook | None = None) -> Tensor
        l (N, 1, H, W) float, the L channel in [0, 100] (any normalisation is internal);
        returns ab (N, 2, H, W) in Lab units at the input resolution. After stage i computes
        its feature map f_i (N, C_i, h_i, w_i), the colorizer continues with ``hook(i, f_i)``
        instead of f_i when a hook is given — everywhere f_i is used later (next stage, skip
        connections, heads). The hook returns a tensor of the same shape; it is called once
        per stage, in increasing i. ``hook=None`` must give exactly the same result as a hook
        returning its input.

    forward(l: Tensor) -> Tensor
        ``forward_features(l, None)``.

Geometry: f_i must cover the whole input frame, cell j of w_i spanning x in
[j W / w_i - 0.5, (j + 1) W / w_i - 0.5] in input pixels (pixel centres at integers), as
``models/tracktention.py`` assumes; a colorizer that resizes its input internally still
satisfies this as long as the resize is of the whole frame. The batch dimension N is B*T:
the wrapper passes the clips' frames video after video (``l.flatten(0, 1)`` of (B, T, ...)).

Construction and registration: the class is built as ``cls(config)`` from a config dataclass
(its fields are the YAML section ``model.<arch>``) and is listed in
``models/video_colorizer.py`` ``COLORIZER_ARCHS`` as (module, class, config class, optional
reader), the reader being a function ``(path) -> state_dict`` for the architecture's official
weight files (default ``checkpoint_io.read_state_dict``). The video wrapper's
``load_image_weights`` loads that state dict strictly into the colorizer (keys as in
``colorizer.state_dict()``), or the ``model.image.*`` part of a checkpoint of this family.

The ConvNet colorizer
---------------------
A UNet in Lab: a stride-1 stem, encoder stages that halve the resolution (stride-2 conv + residual
blocks), decoder stages that double it (bilinear upsampling + conv, concatenation with the encoder
skip of that resolution, residual blocks) and a zero-initialised 1x1 conv to ab. Blocks are
conv3x3-GroupNorm-GELU-conv3x3-GroupNorm + identity. With ``widths`` of length S the stages are
encoder 0..S-1 (stride 2^i) and decoder S..2S-2 (stage S + k at stride 2^(S-2-k)). It has no
pretrained weights and trains from scratch (``colorization_tiny_synthetic_stage1``). Frame sizes
divisible by 2^(S-1) keep every feature cell exactly on the pixel grid above; other sizes are
approximately aligned (stride-2 convs round the size up).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

StageHook = Callable[[int, Tensor], Tensor]


@dataclass
class ConvColorizerConfig:
    """Widths and residual-block counts per encoder stage (the decoder mirrors them)."""

    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    depths: list[int] = field(default_factory=lambda: [1, 1, 2, 2])
    groups: int = 8  # GroupNorm groups (each width must be divisible)
    output_scale: float = 100.0  # ab = output_scale * head output: the head works at O(1) while ab spans about +-100

    def __post_init__(self) -> None:
        if not self.widths or len(self.widths) != len(self.depths):
            raise ValueError(f"widths {self.widths} and depths {self.depths} must be non-empty and of equal length")
        if any(w % self.groups for w in self.widths):
            raise ValueError(f"every width in {self.widths} must be divisible by groups={self.groups}")
        if any(d < 0 for d in self.depths):
            raise ValueError(f"depths must be >= 0, got {self.depths}")


class ResBlock(nn.Module):
    def __init__(self, dim: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(groups, dim), nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(groups, dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x + self.body(x))


def _conv_norm(cin: int, cout: int, groups: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(groups, cout), nn.GELU())


class EncoderStage(nn.Module):
    def __init__(self, cin: int, cout: int, depth: int, groups: int, stride: int) -> None:
        super().__init__()
        self.entry = _conv_norm(cin, cout, groups, stride)
        self.blocks = nn.Sequential(*(ResBlock(cout, groups) for _ in range(depth)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.entry(x))


class DecoderStage(nn.Module):
    """Upsample to the skip's size, reduce, concatenate the skip, fuse, residual blocks."""

    def __init__(self, cin: int, cskip: int, depth: int, groups: int) -> None:
        super().__init__()
        self.up = _conv_norm(cin, cskip, groups)
        self.fuse = _conv_norm(2 * cskip, cskip, groups)
        self.blocks = nn.Sequential(*(ResBlock(cskip, groups) for _ in range(depth)))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False))
        return self.blocks(self.fuse(torch.cat([x, skip], dim=1)))


class ConvColorizer(nn.Module):
    """UNet colorizer L (N, 1, H, W) in [0, 100] -> ab (N, 2, H, W); implements the colorizer contract."""

    def __init__(self, config: ConvColorizerConfig | None = None) -> None:
        super().__init__()
        cfg = config or ConvColorizerConfig()
        self.config = cfg
        w, d, g = list(cfg.widths), list(cfg.depths), cfg.groups
        self.encoder = nn.ModuleList(
            EncoderStage(1 if i == 0 else w[i - 1], w[i], d[i], g, stride=1 if i == 0 else 2) for i in range(len(w)))
        self.decoder = nn.ModuleList(
            DecoderStage(w[i + 1], w[i], d[i], g) for i in reversed(range(len(w) - 1)))
        self.head = nn.Conv2d(w[0], 2, 1)
        nn.init.zeros_(self.head.weight)  # an untrained colorizer predicts grey (ab = 0), the safest guess
        nn.init.zeros_(self.head.bias)
        self.stage_channels: list[int] = w + w[-2::-1]

    def forward_features(self, l: Tensor, hook: StageHook | None = None) -> Tensor:
        if l.dim() != 4 or l.shape[1] != 1:
            raise ValueError(f"L must be (N, 1, H, W), got {tuple(l.shape)}")
        x = l / 50.0 - 1.0
        stage = 0
        skips: list[Tensor] = []
        for enc in self.encoder:
            x = enc(x)
            if hook is not None:
                x = hook(stage, x)
            skips.append(x)
            stage += 1
        for dec, skip in zip(self.decoder, reversed(skips[:-1])):
            x = dec(x, skip)
            if hook is not None:
                x = hook(stage, x)
            stage += 1
        return self.head(x) * self.config.output_scale

    def forward(self, l: Tensor) -> Tensor:
        return self.forward_features(l, None)


__all__ = ["ConvColorizer", "ConvColorizerConfig", "StageHook"]
