"""Video depth: Depth Anything V2 + Tracktention layers after chosen encoder blocks.

The image model (``self.image``, a :class:`DepthAnythingV2` with the official key layout) runs
every frame through its DINOv2 encoder; after each configured block a Tracktention layer
attends along the point tracks of the clip and adds its (zero-initialised) update to the patch
tokens, leaving the CLS token untouched. The DPT head then decodes every frame. At
initialisation every Tracktention layer is the identity, so the video model's output equals
the image model's frame by frame, bit for bit.

Default placement and width (the paper leaves both open): one layer after each of the four
encoder blocks the DPT head taps ([2, 5, 8, 11] for ViT-S/B, [4, 11, 17, 23] for ViT-L), so
every feature scale the head reads has been mixed along time, while the layer count stays at
four whatever the depth of the encoder. Track tokens are narrower than the encoder (256 wide
for ViT-S, 384 for ViT-B/L, 8 heads): the per-track transformer costs O(tracks x width^2) per
frame, and at 576 tracks on a 37 x 37 token grid full width would add ~25 % FLOPs to ViT-S;
at these widths ViT-B gains ~20 M parameters, in line with the paper's ~17 M
(``tools/bench_video_depth.py`` measures parameters and latency).

Tracks are (x, y) in pixels of the video given to :meth:`VideoDepthAnything.forward`. When
``input_size`` is set, frames are resized like the official ``image2tensor`` (shorter side to
``input_size``, multiple of 14) and tracks are mapped into that resolution (pixel centres at
integers); the disparity is resized back to the input size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from models.checkpoint_io import CheckpointMismatchError, list_keys, load_strict, read_state_dict
from models.depth_anything_v2 import DepthAnythingV2, network_input_size
from models.dinov2 import imagenet_normalize
from models.tracktention import TracktentionLayerConfig, TracktentionSet

# Track-token width per encoder (see the module docstring); 8 heads everywhere.
DEFAULT_INNER_DIM = {"vits": 256, "vitb": 384, "vitl": 384, "vitg": 512}


@dataclass
class TracktentionConfig(TracktentionLayerConfig):
    """Where and how wide the Tracktention layers are; `blocks` None = the DPT tap blocks."""

    enabled: bool = True
    blocks: Optional[list[int]] = None
    inner_dim: Optional[int] = None  # None -> DEFAULT_INNER_DIM[encoder] (capped at the encoder width)


@dataclass
class VideoDepthConfig:
    """Image model (official size + tiny-model overrides) and its Tracktention layers."""

    encoder: str = "vits"
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    features: Optional[int] = None
    out_channels: Optional[list[int]] = None
    layer_idx: Optional[list[int]] = None
    img_size: int = 518  # DINOv2 position-embedding grid the weights were trained at (518 = official)
    input_size: Optional[int] = None  # None: frames must already be multiples of 14
    grad_checkpointing: bool = False
    # From-scratch models only: start the output conv's bias here so the final ReLU is not dead
    # at initialisation (official weights overwrite it).
    head_bias_init: Optional[float] = None
    tracktention: TracktentionConfig = field(default_factory=TracktentionConfig)


def resize_points(points: Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Tensor:
    """Map (x, y) pixel coordinates between two resolutions of the same image (centres at integers)."""
    scale = points.new_tensor([dst_hw[1] / src_hw[1], dst_hw[0] / src_hw[0]])
    return (points + 0.5) * scale - 0.5


class VideoDepthAnything(nn.Module):
    """Depth Anything V2 turned into a video model by Tracktention; outputs relative disparity."""

    def __init__(self, config: VideoDepthConfig | None = None) -> None:
        super().__init__()
        cfg = config or VideoDepthConfig()
        self.config = cfg
        self.image = DepthAnythingV2(
            cfg.encoder, embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, features=cfg.features,
            out_channels=cfg.out_channels, layer_idx=cfg.layer_idx, img_size=cfg.img_size,
            grad_checkpointing=cfg.grad_checkpointing)
        if cfg.head_bias_init is not None:
            nn.init.constant_(self.image.depth_head.scratch.output_conv2[2].bias, cfg.head_bias_init)
        t = cfg.tracktention
        self.tracktention: TracktentionSet | None = None
        if t.enabled:
            width = self.image.pretrained.embed_dim
            blocks = list(t.blocks) if t.blocks is not None else list(self.image.layer_idx)
            if any(not 0 <= b < len(self.image.pretrained.blocks) for b in blocks):
                raise ValueError(f"tracktention.blocks {blocks} out of range for "
                                 f"{len(self.image.pretrained.blocks)} encoder blocks")
            inner = t.inner_dim if t.inner_dim is not None else min(DEFAULT_INNER_DIM[cfg.encoder], width)
            self.tracktention = TracktentionSet(
                width, blocks, inner_dim=inner, **t.layer_kwargs())

    @property
    def patch_size(self) -> int:
        return self.image.patch_size

    def load_image_weights(self, path: str | os.PathLike) -> None:
        """Load the image model strictly from an official DA-V2 ``.pth`` or from a checkpoint of this
        family (Lightning ``.ckpt`` of a stage-1 run, keys ``model.image.*``); other keys are ignored
        only when they belong to ``model.tracktention.*`` (a later stage's layers)."""
        state = read_state_dict(path)
        for prefix in ("model.image.", "image."):
            if any(k.startswith(prefix) for k in state):
                extra = [k for k in state if not k.startswith(prefix) and not k.startswith(prefix[:-6] + "tracktention.")]
                if extra:
                    raise CheckpointMismatchError(f"{path}: {len(extra)} unexpected keys outside {prefix!r}:\n"
                                                  + list_keys(extra))
                state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                break
        load_strict(self.image, state, what=f"Depth Anything V2 weights from {path}")

    def _network_input(self, video: Tensor, tracks: Tensor | None, input_size: int | None = None
                       ) -> tuple[Tensor, Tensor | None]:
        B, T, _, H, W = video.shape
        x = imagenet_normalize(video).flatten(0, 1)
        size = self.config.input_size if input_size is None else input_size
        if size is None:
            if H % self.patch_size or W % self.patch_size:
                raise ValueError(f"frames {H}x{W} are not multiples of {self.patch_size}; "
                                 "set model input_size to resize them")
            return x, tracks
        hw = network_input_size(H, W, size, self.patch_size)
        if hw != (H, W):
            x = F.interpolate(x, size=hw, mode="bicubic", align_corners=False)
            tracks = None if tracks is None else resize_points(tracks, (H, W), hw)
        return x, tracks

    def forward(self, video: Tensor, tracks: Tensor | None = None, visible: Tensor | None = None,
                input_size: int | None = None) -> Tensor:
        """video (B, T, 3, H, W) RGB 0..255; tracks (B, T, M, 2) pixels of `video`; visible (B, T, M)
        bool (None = all visible); `input_size` overrides ``config.input_size`` for this call (the
        benchmark's per-video inference size). Returns relative disparity (B, T, 1, H, W).

        Without Tracktention layers (or without tracks) every frame is predicted on its own.
        """
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be (B, T, 3, H, W), got {tuple(video.shape)}")
        B, T, _, H, W = video.shape
        if self.tracktention is not None and tracks is None:
            raise ValueError("this model has Tracktention layers: pass tracks (B, T, M, 2)")
        x, net_tracks = self._network_input(video, tracks, input_size)
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        hook = None
        if self.tracktention is not None:
            layers = self.tracktention
            prefix = self.image.pretrained.num_prefix_tokens
            image_hw = tuple(x.shape[-2:])

            def hook(i: int, tokens: Tensor) -> Tensor:
                return layers(i, tokens, net_tracks, (h, w), image_hw, visible, prefix)

        disp = self.image.decode(self.image.encode(x, hook), h, w).view(B, T, 1, *x.shape[-2:])
        if disp.shape[-2:] != (H, W):
            disp = F.interpolate(disp.flatten(0, 1), size=(H, W), mode="bilinear", align_corners=True).view(B, T, 1, H, W)
        return disp

    def forward_image(self, video: Tensor) -> Tensor:
        """The underlying image model applied frame by frame (the Tracktention-free baseline)."""
        x, _ = self._network_input(video, None)
        B, T, _, H, W = video.shape
        disp = self.image(x).view(B, T, 1, *x.shape[-2:])
        if disp.shape[-2:] != (H, W):
            disp = F.interpolate(disp.flatten(0, 1), size=(H, W), mode="bilinear", align_corners=True).view(B, T, 1, H, W)
        return disp


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


__all__ = [
    "DEFAULT_INNER_DIM",
    "TracktentionConfig",
    "VideoDepthAnything",
    "VideoDepthConfig",
    "count_parameters",
    "resize_points",
]
