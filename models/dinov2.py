"""DINOv2 vision transformers (ViT-S/B/L/G, patch 14, with or without registers).

Parameter names and shapes match the official `dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`
files, so they load strictly with `load_dinov2` (or `models.checkpoint_io.load_strict`).

Input convention: `DinoV2` expects images that are already ImageNet-normalised
(`imagenet_normalize` turns 0..255 RGB into that), with H and W multiples of the patch size.

Inserting layers between blocks (Chrono adapters, Tracktention) uses the public pieces:

    x = model.prepare_tokens(img)            # (B, 1 + R + N, C): [CLS, R registers, N patches]
    for i, blk in enumerate(model.blocks):
        x = blk(x)
        x = x + my_adapter[i](x)             # anything that keeps the token layout
    feats = model.norm(x)

or, equivalently, `model.get_intermediate_layers(img, n, block_hook=fn)` /
`model.forward_features(img, block_hook=fn)` with `fn(i, tokens) -> tokens` called after block i.
Gradient checkpointing lives inside each `Block`, so it also applies to hand-written loops.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from models.checkpoint_io import load_strict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BlockHook = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DinoV2Arch:
    embed_dim: int
    depth: int
    num_heads: int
    ffn: str  # "mlp" (GELU MLP) or "swiglu" (fused SwiGLU, ViT-G only)


ARCHS: dict[str, DinoV2Arch] = {
    "vits14": DinoV2Arch(384, 12, 6, "mlp"),
    "vitb14": DinoV2Arch(768, 12, 12, "mlp"),
    "vitl14": DinoV2Arch(1024, 24, 16, "mlp"),
    "vitg14": DinoV2Arch(1536, 40, 24, "swiglu"),
}


def imagenet_normalize(video_0_255: torch.Tensor) -> torch.Tensor:
    """Map RGB values in 0..255 (channels at dim -3, e.g. (B, T, 3, H, W)) to ImageNet-normalised floats."""
    if video_0_255.ndim < 3 or video_0_255.shape[-3] != 3:
        raise ValueError(f"expected RGB with channels at dim -3, got shape {tuple(video_0_255.shape)}")
    x = video_0_255.float() / 255.0
    mean = x.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


class PatchEmbed(nn.Module):
    """Non-overlapping patch x patch convolution -> (B, N, C) tokens in row-major grid order."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (with bias), run by SDPA."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """SwiGLU FFN with one fused input projection `w12` (halves: gate, value) and output `w3`."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        # The official "swiglufused" layer keeps the parameter count of a 4x MLP: 2/3 of it, rounded up to 8.
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class LayerScale(nn.Module):
    """Learned per-channel scale (`gamma`) on a residual branch."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: x += ls1(attn(norm1(x))); x += ls2(mlp(norm2(x)))."""

    def __init__(
        self, dim: int, num_heads: int, ffn: str, mlp_ratio: float = 4.0, layerscale_init: float = 1.0
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, layerscale_init)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        if ffn == "mlp":
            self.mlp: nn.Module = Mlp(dim, hidden)
        elif ffn == "swiglu":
            self.mlp = SwiGLUFFN(dim, hidden)
        else:
            raise ValueError(f"unknown ffn {ffn!r}; expected 'mlp' or 'swiglu'")
        self.ls2 = LayerScale(dim, layerscale_init)
        self.grad_checkpointing = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Checkpoint whenever gradients are recorded, also in eval mode: a frozen backbone
        # with trainable adapters between blocks still needs its activations for backward.
        if self.grad_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class DinoV2(nn.Module):
    """DINOv2 ViT with the official parameter layout.

    `arch` picks the published size; `embed_dim`, `depth`, `num_heads`, `img_size` and
    `patch_size` override it (tiny test models). `img_size` is the position-embedding grid
    the weights were trained at (518 -> 37x37 for the official files); other input sizes
    are handled by interpolating the position embedding exactly as the official code does:
    bicubic, with `scale_factor = (grid + interpolate_offset) / 37` when the offset is
    non-zero, else an explicit output size. Defaults follow the official hub models:
    offset 0.1 / no antialias without registers, offset 0.0 / antialias with registers.
    """

    def __init__(
        self,
        arch: str = "vits14",
        num_register_tokens: int = 0,
        *,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        img_size: int = 518,
        patch_size: int = 14,
        interpolate_offset: float | None = None,
        interpolate_antialias: bool | None = None,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown DINOv2 arch {arch!r}; expected one of {sorted(ARCHS)}")
        if num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {num_register_tokens}")
        spec = ARCHS[arch]
        self.arch = arch
        self.embed_dim = embed_dim if embed_dim is not None else spec.embed_dim
        self.n_blocks = depth if depth is not None else spec.depth
        self.num_heads = num_heads if num_heads is not None else spec.num_heads
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.num_prefix_tokens = 1 + num_register_tokens  # CLS + registers, before the patch tokens
        has_registers = num_register_tokens > 0
        self.interpolate_offset = (
            interpolate_offset if interpolate_offset is not None else (0.0 if has_registers else 0.1)
        )
        self.interpolate_antialias = interpolate_antialias if interpolate_antialias is not None else has_registers
        self.pos_grid = img_size // patch_size
        dim = self.embed_dim

        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pos_grid**2, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, dim)) if has_registers else None
        # Only used for masked-token training (iBOT); kept so the official files load strictly.
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = PatchEmbed(patch_size, 3, dim)
        self.blocks = nn.ModuleList(Block(dim, self.num_heads, spec.ffn) for _ in range(self.n_blocks))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.reset_parameters()
        self.set_grad_checkpointing(grad_checkpointing)

    def reset_parameters(self) -> None:
        """Official initialisation (matters only when training from scratch)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        for blk in self.blocks:
            blk.grad_checkpointing = enabled

    def interpolate_pos_encoding(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> torch.Tensor:
        """Position embedding (1, 1 + grid_h * grid_w, C) for a grid_h x grid_w patch grid."""
        m = self.pos_grid
        if grid_h == m and grid_w == m:
            return self.pos_embed  # the official code returns the stored tensor untouched here
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        patch_pos = patch_pos.reshape(1, m, m, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            # Historical DINO kludge kept for weight compatibility: the offset changes the
            # scale the bicubic kernel samples with, not just the output size.
            scale = ((grid_h + self.interpolate_offset) / m, (grid_w + self.interpolate_offset) / m)
            patch_pos = F.interpolate(
                patch_pos, scale_factor=scale, mode="bicubic", antialias=self.interpolate_antialias
            )
        else:
            patch_pos = F.interpolate(
                patch_pos, size=(grid_h, grid_w), mode="bicubic", antialias=self.interpolate_antialias
            )
        if patch_pos.shape[-2:] != (grid_h, grid_w):
            raise RuntimeError(
                f"position interpolation produced {tuple(patch_pos.shape[-2:])}, wanted {(grid_h, grid_w)}"
            )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat((cls_pos, patch_pos), dim=1).to(dtype)

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> tokens (B, 1 + R + N, C): [CLS, registers, patches].

        `masks` (B, N) bool replaces those patch embeddings by `mask_token` (before position).
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        tokens = self.patch_embed(x)
        if masks is not None:
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype).unsqueeze(0), tokens)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(h // p, w // p, tokens.dtype)
        if self.register_tokens is not None:
            # Registers carry no position embedding: they go in after it is added.
            regs = self.register_tokens.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat((tokens[:, :1], regs, tokens[:, 1:]), dim=1)
        return tokens

    def _run_blocks(
        self, x: torch.Tensor, take: set[int], block_hook: BlockHook | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        taken = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if block_hook is not None:
                x = block_hook(i, x)
            if i in take:
                taken.append(x)
        return x, taken

    def forward_features(
        self, x: torch.Tensor, masks: torch.Tensor | None = None, block_hook: BlockHook | None = None
    ) -> dict[str, torch.Tensor | None]:
        """All blocks, then the final norm; the dict has the official keys."""
        x, _ = self._run_blocks(self.prepare_tokens(x, masks), set(), block_hook)
        x_norm = self.norm(x)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : r + 1],
            "x_norm_patchtokens": x_norm[:, r + 1 :],
            "x_prenorm": x,
            "masks": masks,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised CLS token (B, C), as the official model without a head."""
        return self.forward_features(x)["x_norm_clstoken"]

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
        block_hook: BlockHook | None = None,
    ) -> tuple[torch.Tensor, ...] | tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Outputs of the last `n` blocks (int) or of the listed block indices, in block order.

        Patch tokens (B, N, C), or (B, C, H/p, W/p) with `reshape`; `norm` applies the final
        LayerNorm to each; with `return_class_token` each entry is (patches, cls (B, C)).
        Registers are dropped, as in the official code.
        """
        depth = len(self.blocks)
        indices = list(range(depth - n, depth)) if isinstance(n, int) else list(n)
        if not indices or len(set(indices)) != len(indices) or not all(0 <= i < depth for i in indices):
            raise ValueError(f"block indices {indices} must be distinct and in range for {depth} blocks")
        _, outputs = self._run_blocks(self.prepare_tokens(x), set(indices), block_hook)
        if norm:
            outputs = [self.norm(out) for out in outputs]
        class_tokens = [out[:, 0] for out in outputs]
        patches = [out[:, self.num_prefix_tokens :] for out in outputs]
        if reshape:
            b, _, h, w = x.shape
            p = self.patch_size
            patches = [out.reshape(b, h // p, w // p, -1).permute(0, 3, 1, 2).contiguous() for out in patches]
        if return_class_token:
            return tuple(zip(patches, class_tokens, strict=True))
        return tuple(patches)


def load_dinov2(
    path: str | os.PathLike, arch: str | None = None, num_register_tokens: int | None = None, **kwargs: Any
) -> DinoV2:
    """Build a DinoV2 and load an official `.pth` strictly (local file only).

    `arch` / `num_register_tokens` default to what the file name says (`dinov2_vitb14_reg4_...`).
    """
    name = os.path.basename(os.fspath(path))
    if arch is None:
        arch = next((a for a in ARCHS if a in name), None)
        if arch is None:
            raise ValueError(f"cannot infer the DINOv2 arch from {name!r}; pass arch=")
    if num_register_tokens is None:
        num_register_tokens = 4 if "_reg" in name else 0
    model = DinoV2(arch, num_register_tokens, **kwargs)
    load_strict(model, path, what=f"DINOv2 {arch} (registers={num_register_tokens})")
    return model


__all__ = [
    "ARCHS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Block",
    "BlockHook",
    "DinoV2",
    "imagenet_normalize",
    "load_dinov2",
]
