"""ConvNeXt with a LayerNorm on every stage output, the encoder layout DDColor uses.

Parameter names match DDColor's `encoder.arch.*` keys (downsample_layers, stages, norm0..norm3,
norm), so the encoder loads from a released DDColor checkpoint; ImageNet ConvNeXt weights
are never needed. Compared with the classification ConvNeXt there is no head, and each stage
output is also passed through its own channel LayerNorm `norm<i>`: those normalised maps are
the features DDColor's decoder reads, while the un-normalised stage output continues into the
next downsampling layer.

`norm` (the pooled-feature LayerNorm of the classifier) is kept only so the checkpoint layout
matches: DDColor computes it and discards the result, so it never affects an output here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

# stage_hook(stage_index, stage_output (B, C, h, w)) -> replacement map of the same shape.
StageHook = Callable[[int, Tensor], Tensor]


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dimension of a (B, C, H, W) map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """x + gamma * pwconv2(GELU(pwconv1(LN(dwconv7x7(x))))), the MLP as Linear layers on channels-last."""

    def __init__(self, dim: int, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.grad_checkpointing = False

    def _forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class ConvNeXt(nn.Module):
    """ConvNeXt trunk returning the four LayerNorm'd stage maps (strides 4, 8, 16, 32).

    Defaults are ConvNeXt-T; DDColor-L uses depths (3, 3, 27, 3), dims (192, 384, 768, 1536).
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        in_channels: int = 3,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"ConvNeXt needs 4 depths and 4 dims, got {list(depths)} and {list(dims)}")
        self.depths = tuple(int(d) for d in depths)
        self.dims = tuple(int(d) for d in dims)
        # Index 0 is the stem (4x4 patchify conv, then LN); 1..3 halve the resolution (LN, then 2x2 conv).
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_channels, dims[0], kernel_size=4, stride=4), ChannelLayerNorm(dims[0]))]
        )
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(ChannelLayerNorm(dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
            )
        self.stages = nn.ModuleList(nn.Sequential(*(ConvNeXtBlock(d) for _ in range(n))) for n, d in zip(depths, dims))
        for i, d in enumerate(dims):
            self.add_module(f"norm{i}", ChannelLayerNorm(d))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)  # checkpoint layout only (see the module docstring)
        self.apply(_init_weights)
        self.set_grad_checkpointing(grad_checkpointing)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        for stage in self.stages:
            for block in stage:
                block.grad_checkpointing = enabled

    def stage_norm(self, index: int) -> ChannelLayerNorm:
        return getattr(self, f"norm{index}")

    def forward(self, x: Tensor, stage_hook: StageHook | None = None) -> list[Tensor]:
        """(B, C_in, H, W) -> [norm_i(stage_i output)] for i = 0..3, at strides 4, 8, 16, 32.

        `stage_hook(i, x)` replaces stage i's output before it is normalised and before it
        enters the next stage, so a change made there reaches both the tapped map and every
        later stage.
        """
        if x.dim() != 4:
            raise ValueError(f"expected a (B, C, H, W) image batch, got shape {tuple(x.shape)}")
        features = []
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
            if stage_hook is not None:
                hooked = stage_hook(i, x)
                if hooked.shape != x.shape:
                    raise ValueError(f"stage_hook changed stage {i}'s shape {tuple(x.shape)} to {tuple(hooked.shape)}")
                x = hooked
            features.append(self.stage_norm(i)(x))
        return features


def _init_weights(module: nn.Module) -> None:
    # ConvNeXt's from-scratch initialisation: truncated normal (std 0.02) weights, zero biases.
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
        nn.init.zeros_(module.bias)


__all__ = ["ChannelLayerNorm", "ConvNeXt", "ConvNeXtBlock", "StageHook"]
