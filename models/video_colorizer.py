"""Video colorization: an image colorizer + Tracktention layers after chosen stages of it.

The image colorizer (``self.image``) follows the contract in ``models/colorizer.py``: it maps
L to ab frame by frame and calls a hook on the feature map after each stage. The wrapper runs
all B*T frames of the clips through it and, after every configured stage, lets a Tracktention
layer attend along the clip's point tracks on that feature map (ConvNet integration: the
(N, C, h, w) map is read as h*w tokens, ``Tracktention.forward_map``) and add its update. The
output projections start at zero, so at initialisation the video model equals the image model
frame by frame, bit for bit, and fine-tuning starts from the image model.

Tracks are (x, y) in pixels of the L frames, pixel centres at integers (DESIGN.md).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from models.checkpoint_io import CheckpointMismatchError, list_keys, load_strict, read_state_dict
from models.tracktention import TracktentionLayerConfig, TracktentionSet


@dataclass(frozen=True)
class ColorizerArch:
    """Where a backbone lives: ``module.cls(module.config(...))``; ``reader`` (a function of that
    module, or None for ``read_state_dict``) reads its official weight files into a state dict."""

    module: str
    cls: str
    config: str
    reader: Optional[str] = None


# Backbone name -> its ColorizerArch. Imported on use, so an architecture's code loads only
# when it is chosen.
COLORIZER_ARCHS: dict[str, ColorizerArch] = {
    "convnet": ColorizerArch("models.colorizer", "ConvColorizer", "ConvColorizerConfig"),
    "ddcolor": ColorizerArch("models.ddcolor", "DDColor", "DDColorConfig", reader="read_ddcolor_state_dict"),
}


def _arch(arch: str) -> tuple[ColorizerArch, Any]:
    if arch not in COLORIZER_ARCHS:
        raise ValueError(f"unknown colorizer arch {arch!r}; choose one of {sorted(COLORIZER_ARCHS)}")
    spec = COLORIZER_ARCHS[arch]
    return spec, importlib.import_module(spec.module)


def colorizer_classes(arch: str) -> tuple[type[nn.Module], type]:
    """(colorizer class, config dataclass) of a backbone name."""
    spec, module = _arch(arch)
    return getattr(module, spec.cls), getattr(module, spec.config)


def weights_reader(arch: str) -> Callable[[str | os.PathLike], dict[str, Tensor]]:
    """The function reading a weight file of ``arch`` (official container formats unwrapped)."""
    spec, module = _arch(arch)
    return read_state_dict if spec.reader is None else getattr(module, spec.reader)


def build_image_colorizer(arch: str, config: Any) -> nn.Module:
    """The image colorizer of ``arch`` built from its config dataclass instance."""
    cls, cfg_cls = colorizer_classes(arch)
    if not isinstance(config, cfg_cls):
        raise TypeError(f"arch {arch!r} needs a {cfg_cls.__name__}, got {type(config).__name__}")
    model = cls(config)
    if not hasattr(model, "stage_channels") or not hasattr(model, "forward_features"):
        raise TypeError(f"{cls.__name__} does not implement the colorizer contract (models/colorizer.py)")
    return model


@dataclass
class ColorTracktentionConfig(TracktentionLayerConfig):
    """Tracktention layers of the video colorizer: after which colorizer stages, and how wide."""

    enabled: bool = True
    stages: Optional[list[int]] = None  # stage indices of the colorizer contract; required when enabled
    inner_dim: Optional[int] = None  # track-token width; None = each stage's own width


class VideoColorizer(nn.Module):
    """Image colorizer turned into a video model by Tracktention; L clips -> ab clips."""

    def __init__(self, image: nn.Module, tracktention: ColorTracktentionConfig | None = None) -> None:
        super().__init__()
        self.image = image
        t = tracktention or ColorTracktentionConfig(enabled=False)
        self.tracktention: TracktentionSet | None = None
        if t.enabled:
            channels = list(image.stage_channels)
            if not t.stages:
                raise ValueError(f"tracktention.stages must list colorizer stages (0..{len(channels) - 1}) "
                                 "when Tracktention is enabled")
            if any(not 0 <= s < len(channels) for s in t.stages):
                raise ValueError(f"tracktention.stages {list(t.stages)} out of range for a colorizer with "
                                 f"{len(channels)} stages (channels {channels})")
            self.tracktention = TracktentionSet(
                [channels[s] for s in t.stages], list(t.stages), inner_dim=t.inner_dim, **t.layer_kwargs())

    def load_image_weights(self, path: str | os.PathLike,
                           reader: Callable[[str | os.PathLike], dict[str, Tensor]] = read_state_dict) -> None:
        """Load the image colorizer strictly from its own weights (e.g. an official file in this
        colorizer's key layout, read by ``reader``: see ``weights_reader``) or from a checkpoint of
        this family (``model.image.*``); keys of a later stage's ``model.tracktention.*`` layers are
        ignored, any other key is an error."""
        state = reader(path)
        for prefix in ("model.image.", "image."):
            if any(k.startswith(prefix) for k in state):
                layers = prefix[: -len("image.")] + "tracktention."
                extra = [k for k in state if not k.startswith(prefix) and not k.startswith(layers)]
                if extra:
                    raise CheckpointMismatchError(f"{path}: {len(extra)} unexpected keys outside {prefix!r}:\n"
                                                  + list_keys(extra))
                state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                break
        load_strict(self.image, state, what=f"image colorizer weights from {path}")

    @staticmethod
    def _check_l(l: Tensor) -> None:
        if l.dim() != 5 or l.shape[2] != 1:
            raise ValueError(f"L must be (B, T, 1, H, W), got {tuple(l.shape)}")

    def forward(self, l: Tensor, tracks: Tensor | None = None, visible: Tensor | None = None) -> Tensor:
        """l (B, T, 1, H, W) in [0, 100]; tracks (B, T, M, 2) pixels; visible (B, T, M) bool (None =
        all visible). Returns ab (B, T, 2, H, W). Without Tracktention layers, frame by frame."""
        self._check_l(l)
        B, T, _, H, W = l.shape
        if self.tracktention is None:
            return self.forward_image(l)
        if tracks is None:
            raise ValueError("this model has Tracktention layers: pass tracks (B, T, M, 2)")
        if tracks.shape[:2] != (B, T):
            raise ValueError(f"tracks {tuple(tracks.shape)} do not match the clips' (B, T) = {(B, T)}")
        layers = self.tracktention

        def hook(stage: int, features: Tensor) -> Tensor:
            # forward_map hands back a transposed view; convolutions on another memory layout may pick
            # other kernels and round differently, so restore the exact strides the colorizer produced
            # (NCHW for the ConvNet, channels-last for DDColor's ConvNeXt).
            out = layers.forward_map(stage, features, tracks, (H, W), visible)
            return torch.empty_like(features).copy_(out)

        ab = self.image.forward_features(l.flatten(0, 1), hook)
        return ab.view(B, T, 2, H, W)

    def forward_image(self, l: Tensor) -> Tensor:
        """The image colorizer alone, frame by frame (the Tracktention-free baseline)."""
        self._check_l(l)
        B, T, _, H, W = l.shape
        return self.image(l.flatten(0, 1)).view(B, T, 2, H, W)


__all__ = [
    "COLORIZER_ARCHS",
    "ColorTracktentionConfig",
    "ColorizerArch",
    "VideoColorizer",
    "build_image_colorizer",
    "colorizer_classes",
    "weights_reader",
]
