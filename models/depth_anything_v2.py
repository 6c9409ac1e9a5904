"""Depth Anything V2: DINOv2 encoder (`pretrained.*`) + DPT head (`depth_head.*`).

Parameter names and shapes match the official `depth_anything_v2_vit{s,b,l,g}.pth` files,
which load strictly with `load_depth_anything_v2`. The output is ReLU'd relative
*disparity* (affine-invariant inverse depth), not depth.

Input: (B, 3, H, W) ImageNet-normalised (see `models.dinov2.imagenet_normalize`), H and W
multiples of 14. The network is split so that video models can work between encoder
blocks and reuse the head:

    feats = model.encode(x, block_hook=fn)   # fn(i, tokens) -> tokens after block i
    disp = model.decode(feats, H // 14, W // 14)

which equals `model(x)` when `fn` is the identity.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint_io import load_strict
from models.dinov2 import IMAGENET_MEAN, IMAGENET_STD, BlockHook, DinoV2


@dataclass(frozen=True)
class DepthAnythingV2Config:
    dinov2_arch: str
    features: int
    out_channels: tuple[int, int, int, int]
    layer_idx: tuple[int, int, int, int]  # 0-based encoder blocks tapped for the head


CONFIGS: dict[str, DepthAnythingV2Config] = {
    "vits": DepthAnythingV2Config("vits14", 64, (48, 96, 192, 384), (2, 5, 8, 11)),
    "vitb": DepthAnythingV2Config("vitb14", 128, (96, 192, 384, 768), (2, 5, 8, 11)),
    "vitl": DepthAnythingV2Config("vitl14", 256, (256, 512, 1024, 1024), (4, 11, 17, 23)),
    "vitg": DepthAnythingV2Config("vitg14", 384, (1536, 1536, 1536, 1536), (9, 19, 29, 39)),
}


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))), 3x3 convs with bias."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """Fuse a coarser path with a skip feature, refine, upsample (bilinear, align_corners=True), 1x1 conv."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)  # official (misspelt) names, kept for the keys
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """DPT decoder over four token maps; returns the pre-ReLU disparity (B, 1, ph * patch, pw * patch)."""

    def __init__(
        self,
        in_channels: int,
        features: int,
        out_channels: Sequence[int],
        use_clstoken: bool = False,
        patch_size: int = 14,
    ) -> None:
        super().__init__()
        c1, c2, c3, c4 = out_channels
        self.use_clstoken = use_clstoken
        self.patch_size = patch_size
        self.projects = nn.ModuleList(nn.Conv2d(in_channels, c, 1) for c in out_channels)
        # Token maps at strides 14/4, 14/2, 14, 28 relative to the image.
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c1, c1, kernel_size=4, stride=4),
                nn.ConvTranspose2d(c2, c2, kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c4, c4, kernel_size=3, stride=2, padding=1),
            ]
        )
        if use_clstoken:
            self.readout_projects = nn.ModuleList(
                nn.Sequential(nn.Linear(2 * in_channels, in_channels), nn.GELU()) for _ in out_channels
            )
        self.scratch = nn.Module()
        for i, c in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FeatureFusionBlock(features))
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        # Sequential indices (0 conv, 1 ReLU, 2 conv, 3 ReLU, 4 Identity) give the official keys.
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 1, 1), nn.ReLU(), nn.Identity()
        )

    def forward(
        self, features: Sequence[tuple[torch.Tensor, torch.Tensor]], patch_h: int, patch_w: int
    ) -> torch.Tensor:
        if len(features) != 4:
            raise ValueError(f"DPT head needs 4 (patch_tokens, cls_token) pairs, got {len(features)}")
        maps = []
        for i, (tokens, cls) in enumerate(features):
            if tokens.shape[1] != patch_h * patch_w:
                raise ValueError(f"tap {i} has {tokens.shape[1]} tokens, expected {patch_h}x{patch_w}")
            if self.use_clstoken:
                tokens = self.readout_projects[i](torch.cat((tokens, cls.unsqueeze(1).expand_as(tokens)), dim=-1))
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], patch_h, patch_w)
            maps.append(self.resize_layers[i](self.projects[i](x)))
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(m) for i, m in enumerate(maps, start=1))
        path = s.refinenet4(l4, size=l3.shape[2:])
        path = s.refinenet3(path, l3, size=l2.shape[2:])
        path = s.refinenet2(path, l2, size=l1.shape[2:])
        path = s.refinenet1(path, l1)
        out = s.output_conv1(path)
        size = (patch_h * self.patch_size, patch_w * self.patch_size)
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        return s.output_conv2(out)


class DepthAnythingV2(nn.Module):
    """Depth Anything V2 relative-disparity model.

    `encoder` is "vits" | "vitb" | "vitl" | "vitg"; keyword overrides build tiny test
    models (`embed_dim`, `depth`, `num_heads`, `img_size` go to the DinoV2 encoder).
    """

    def __init__(
        self,
        encoder: str = "vits",
        *,
        features: int | None = None,
        out_channels: Sequence[int] | None = None,
        layer_idx: Sequence[int] | None = None,
        use_clstoken: bool = False,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        img_size: int = 518,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if encoder not in CONFIGS:
            raise ValueError(f"unknown encoder {encoder!r}; expected one of {sorted(CONFIGS)}")
        cfg = CONFIGS[encoder]
        self.encoder = encoder
        self.layer_idx = tuple(layer_idx if layer_idx is not None else cfg.layer_idx)
        if len(self.layer_idx) != 4:
            raise ValueError(f"layer_idx needs 4 block indices, got {self.layer_idx}")
        # Offset 0.1 without antialias: the DINOv2 construction Depth Anything V2 was trained with.
        self.pretrained = DinoV2(
            cfg.dinov2_arch,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            img_size=img_size,
            interpolate_offset=0.1,
            interpolate_antialias=False,
            grad_checkpointing=grad_checkpointing,
        )
        self.patch_size = self.pretrained.patch_size
        self.depth_head = DPTHead(
            self.pretrained.embed_dim,
            features if features is not None else cfg.features,
            tuple(out_channels if out_channels is not None else cfg.out_channels),
            use_clstoken=use_clstoken,
            patch_size=self.patch_size,
        )

    def encode(self, x: torch.Tensor, block_hook: BlockHook | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Four (patch_tokens (B, N, C), cls_token (B, C)) taps, each through the encoder's final norm.

        `block_hook(i, tokens) -> tokens` runs after encoder block i (tokens are [CLS, patches]),
        before that block's output is tapped, so the head sees the hooked features.
        """
        return list(
            self.pretrained.get_intermediate_layers(x, self.layer_idx, return_class_token=True, block_hook=block_hook)
        )

    def decode(self, features: Sequence[tuple[torch.Tensor, torch.Tensor]], patch_h: int, patch_w: int) -> torch.Tensor:
        """Head on the four taps -> disparity (B, patch_h * 14, patch_w * 14), ReLU'd."""
        return F.relu(self.depth_head(features, patch_h, patch_w)).squeeze(1)

    def forward(self, x: torch.Tensor, block_hook: BlockHook | None = None) -> torch.Tensor:
        """(B, 3, H, W) ImageNet-normalised, H and W multiples of 14 -> relative disparity (B, H, W)."""
        p = self.patch_size
        return self.decode(self.encode(x, block_hook), x.shape[-2] // p, x.shape[-1] // p)

    @torch.no_grad()
    def infer_image(self, image: np.ndarray | torch.Tensor, input_size: int = 518) -> torch.Tensor:
        """Disparity (H, W) for one RGB uint8 image (H, W, 3), as the official `infer_image`.

        Resized with `preprocess_image`, predicted, then resized back bilinearly (align_corners=True).
        """
        param = next(self.parameters())
        x = preprocess_image(image, input_size).to(device=param.device, dtype=param.dtype)
        disp = self.forward(x)
        h, w = image.shape[:2]
        return F.interpolate(disp[:, None], size=(h, w), mode="bilinear", align_corners=True)[0, 0]


def _round_to_multiple(value: float, multiple: int, min_val: int) -> int:
    # Mirrors the official Resize: round half to even (numpy), bumped up when below min_val.
    y = int(np.round(value / multiple) * multiple)
    if y < min_val:
        y = int(np.ceil(value / multiple) * multiple)
    return y


def network_input_size(height: int, width: int, input_size: int = 518, multiple: int = 14) -> tuple[int, int]:
    """Official 'lower_bound' resize target: keep aspect, both sides >= input_size, multiples of 14."""
    scale = max(input_size / height, input_size / width)
    return (
        _round_to_multiple(scale * height, multiple, input_size),
        _round_to_multiple(scale * width, multiple, input_size),
    )


def preprocess_image(image: np.ndarray | torch.Tensor, input_size: int = 518) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> network input (1, 3, h, w), the official `image2tensor` without cv2.

    Differences to the official path, which are about the resize only: the official code
    takes BGR (cv2.imread) and converts it, we take RGB; it resizes the [0, 1] float64 image
    with cv2.INTER_CUBIC, we use torch bicubic (same a = -0.75 kernel, half-pixel centres,
    no antialias, replicated borders) in float32. They are not bit-identical: on random-noise
    images the largest difference measured against OpenCV was 9e-4 in normalised units (about
    0.05 grey levels; tools/parity_depth_anything_v2.py prints it). Parity of the network
    itself is defined on the same input tensor.
    """
    img = torch.as_tensor(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {tuple(img.shape)}")
    if img.dtype != torch.uint8:
        raise ValueError(f"expected uint8 values 0..255, got {img.dtype}")
    h, w = img.shape[:2]
    x = img.permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=network_input_size(h, w, input_size), mode="bicubic", align_corners=False)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def load_depth_anything_v2(path: str | os.PathLike, encoder: str | None = None, **kwargs: Any) -> DepthAnythingV2:
    """Build a DepthAnythingV2 and load an official `.pth` strictly (local file only).

    `encoder` defaults to what the file name says (`depth_anything_v2_vitb.pth` -> "vitb").
    """
    name = os.path.basename(os.fspath(path))
    if encoder is None:
        encoder = next((e for e in CONFIGS if e in name), None)
        if encoder is None:
            raise ValueError(f"cannot infer the encoder from {name!r}; pass encoder=")
    model = DepthAnythingV2(encoder, **kwargs)
    load_strict(model, path, what=f"Depth Anything V2 {encoder}")
    return model


__all__ = [
    "CONFIGS",
    "DPTHead",
    "DepthAnythingV2",
    "load_depth_anything_v2",
    "network_input_size",
    "preprocess_image",
]
