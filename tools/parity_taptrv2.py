"""Compare tracklight's TaptrV2 with the official TAPTRv2 code on identical weights.

    python tools/parity_taptrv2.py --reference-repo /path/to/TAPTR   # branch v2 checkout
        [--weights taptrv2.pth] [--size 256 --frames 14 --points 24 --dtype float32] [--tiny]

Builds the official TAPTR model (config/TAPTRv2.py, optionally shrunk with --tiny) and
ours, gives both the same weights (portable pseudo-random ones, or an official checkpoint
with --weights), runs them on the same synthetic clip and prints max |ours - ref| and
max |ours - ref| / max |ref| for:
  eval   the reference's inference path: last-layer tracks and visibility logits
  train  the training path (window-update dropout off): every layer's tracks, APU-only
         tracks and visibility logits, as the reference criterion receives them, and
         the gradient of a random-weighted sum of them with respect to every parameter
         (always on float64 copies of both models: deformable sampling makes gradients
         jump where a sampling point crosses a pixel edge, so float32 rounding alone can
         move them by more than the tolerance)
The reference runs at batch size 1 on a square input, the setting it was written for.
All differences must stay within 1e-4 of the largest reference value.

The reference imports torchvision, timm and a compiled CUDA extension at module level.
Missing ones are replaced by stand-ins: torchvision's ResNet-50 by our models/resnet.py
(so without torchvision the backbones are not compared independently), and the encoder's
CUDA op by the reference's own pure-PyTorch ``ms_deform_attn_core_pytorch``.

It also writes the test fixtures:
    --write-layout tests/data/taptrv2_state_dict_layout.json   official keys and shapes
    --write-golden tests/data/taptrv2_tiny_golden.json         reference outputs, tiny model, float64
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import math
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint_io import load_strict
from models.resnet import ResNet
from models.taptrv2 import TaptrV2, TaptrV2Config, load_taptrv2_checkpoint
from tools.parity_dinov2 import deterministic_tensor, reference_commit

TARGET = 1e-4
TINY = {
    "d_model": 32, "nheads": 2, "enc_layers": 1, "dec_layers": 2, "dim_feedforward": 64,
    "backbone_depths": (1, 1, 1, 1), "backbone_width": 8, "model_resolution": (64, 64),
}
# golden clip: 14 frames -> windows [0, 7], [4, 11], [6, 13] (the last one shifted back)
GOLDEN = {
    "frames": 14, "size": 64,
    "queries": [[0, 10.5, 20.25], [3, 40.0, 33.5], [6, 60.0, 2.0], [9, 31.0, 50.0], [13, 5.0, 62.0]],
}
REFERENCE_PACKAGES = ("models", "util")  # top-level names the reference shares with this repo


# --------------------------------------------------------------------------------------
# importing the reference

_STAND_IN_RESNET: dict[str, Any] = {}  # depths / width the torchvision stand-in builds (set per reference model)


def _missing(module: str) -> bool:
    return module not in sys.modules and importlib.util.find_spec(module) is None


def _install_stand_ins() -> None:
    """Import-time stand-ins for torchvision / timm / the CUDA extension when they are missing."""
    if _missing("torchvision"):
        tv = types.ModuleType("torchvision")
        tv.__version__, tv._is_tracing = "0.15.0", lambda: False
        models, utils = types.ModuleType("torchvision.models"), types.ModuleType("torchvision.models._utils")
        ops, boxes = types.ModuleType("torchvision.ops"), types.ModuleType("torchvision.ops.boxes")
        models.resnet50 = lambda **_: ResNet(_STAND_IN_RESNET["depths"], _STAND_IN_RESNET["width"])
        utils.IntermediateLayerGetter = _IntermediateLayerGetter
        boxes.nms = boxes.box_area = None  # imported by the detection code paths, never called here
        tv.models, models._utils, tv.ops, ops.boxes = models, utils, ops, boxes
        sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models._utils": utils,
                            "torchvision.ops": ops, "torchvision.ops.boxes": boxes})
    if _missing("timm"):  # swin / convnext backbones, unused
        layers = types.ModuleType("timm.models.layers")
        layers.DropPath = layers.to_2tuple = layers.trunc_normal_ = None
        sys.modules.update({"timm": types.ModuleType("timm"), "timm.models": types.ModuleType("timm.models"),
                            "timm.models.layers": layers})
    if _missing("MultiScaleDeformableAttention"):
        sys.modules["MultiScaleDeformableAttention"] = types.ModuleType("MultiScaleDeformableAttention")


class _IntermediateLayerGetter(nn.ModuleDict):
    """torchvision's IntermediateLayerGetter: children up to the last returned one, outputs by new name."""

    def __init__(self, model: nn.Module, return_layers: dict[str, str]) -> None:
        layers, remaining = OrderedDict(), dict(return_layers)
        for name, child in model.named_children():
            layers[name] = child
            remaining.pop(name, None)
            if not remaining:
                break
        super().__init__(layers)
        self.return_layers = dict(return_layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


@contextlib.contextmanager
def _reference_on_path(repo: Path) -> Iterator[None]:
    """Import the reference's `models` / `util` packages without clobbering ours."""
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in REFERENCE_PACKAGES}
    sys.path.insert(0, str(repo))
    try:
        yield
    finally:
        sys.path.remove(str(repo))
        for k in [k for k in sys.modules if k.split(".")[0] in REFERENCE_PACKAGES]:
            del sys.modules[k]
        sys.modules.update(ours)


def _reference_args(repo: Path, cfg: TaptrV2Config) -> argparse.Namespace:
    values: dict[str, Any] = {}
    exec(compile((repo / "config" / "TAPTRv2.py").read_text(), "TAPTRv2.py", "exec"), values)  # plain assignments
    values = {k: v for k, v in values.items() if not k.startswith("__")}
    values.update(
        device="cpu", use_torchvision_pretrain=False,  # never download ImageNet weights
        hidden_dim=cfg.d_model, nheads=cfg.nheads, enc_layers=cfg.enc_layers, dec_layers=cfg.dec_layers,
        dim_feedforward=cfg.dim_feedforward, enc_n_points=cfg.enc_points, dec_n_points=cfg.dec_points,
        sliding_window_size=cfg.window_len, sliding_window_stride=cfg.window_stride,
    )
    return argparse.Namespace(**values)


def build_reference(repo: Path, cfg: TaptrV2Config) -> nn.Module:
    """The official TAPTR model for `cfg` (4 levels), CUDA op replaced by the reference's PyTorch version."""
    if not (repo / "models" / "dino" / "taptr.py").is_file():
        raise SystemExit(f"{repo} is not a TAPTR checkout (models/dino/taptr.py not found; use branch v2)")
    if cfg.num_levels != 4 or cfg.norm_groups != 32:
        raise SystemExit("the reference builds 4 levels with GroupNorm(32, d_model)")
    _STAND_IN_RESNET.update(depths=cfg.backbone_depths, width=cfg.backbone_width)
    _install_stand_ins()
    with _reference_on_path(repo), contextlib.redirect_stdout(None):
        from models.dino import taptr
        from models.dino.ops.functions.ms_deform_attn_func import ms_deform_attn_core_pytorch
        from models.dino.ops.modules import ms_deform_attn

        class PytorchMSDeformAttnFunction:
            @staticmethod
            def apply(value, shapes, level_start_index, locations, weights, im2col_step):  # noqa: ANN001, ANN205
                return ms_deform_attn_core_pytorch(value, shapes, locations, weights)

        ms_deform_attn.MSDeformAttnFunction = PytorchMSDeformAttnFunction
        build_backbone = taptr.build_backbone

        def backbone_with_true_channels(args):  # noqa: ANN001, ANN202
            # the reference hard-codes ResNet-50 channels; small test ResNets have fewer
            joiner = build_backbone(args)
            joiner.num_channels = [joiner[0].body[f"layer{i}"][-1].conv3.out_channels for i in range(1, 5)]
            return joiner

        taptr.build_backbone = backbone_with_true_channels
        try:
            model, _, _ = taptr.build_taptr(_reference_args(repo, cfg))
        finally:
            taptr.build_backbone = build_backbone
    return model


# --------------------------------------------------------------------------------------
# weights and inputs

def _canonical(name: str) -> str:
    """The decoder's box / class heads are the top-level ones (shared modules): one value for both keys."""
    for head in ("bbox_embed.", "class_embed."):
        if name.startswith("transformer.decoder." + head):
            return name[len("transformer.decoder."):]
    return name


def random_state_dict(shapes: Mapping[str, torch.Size | tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Portable pseudo-random weights (integer hashing): fan-in scaled matrices, norms and variances near 1."""
    names = sorted({_canonical(k) for k in shapes})
    values = {}
    for salt, name in enumerate(names):
        shape = tuple(shapes[name])
        u = deterministic_tensor(shape, salt).double()
        if len(shape) >= 2:
            values[name] = u * (2 * math.sqrt(3) / math.sqrt(math.prod(shape[1:])))
        elif name.endswith(("running_var", "norm1.weight", "norm2.weight", "norm3.weight", "norm_temp.weight")) or (
            name.endswith(".weight") and (".bn" in name or "downsample.1" in name or name.startswith("input_proj"))
        ):
            values[name] = 1.0 + 0.4 * u
        else:
            values[name] = 0.4 * u
    return {k: values[_canonical(k)].clone() for k in shapes}


def synthetic_clip(frames: int, size: int, points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random texture moving around (1, T, 3, size, size) in 0..255 and random queries (1, N, 3)."""
    g = torch.Generator().manual_seed(seed)
    texture = torch.rand(1, 3, size // 8 + 4, size // 8 + 4, generator=g)
    texture = nn.functional.interpolate(texture, (2 * size, 2 * size), mode="bilinear", align_corners=True) * 255
    shifts = [(round(size / 4 * (1 + math.sin(t / 5))), round(size / 4 * (1 + math.cos(t / 7)))) for t in range(frames)]
    video = torch.stack([texture[0, :, y:y + size, x:x + size] for y, x in shifts])[None]
    t = torch.randint(0, frames, (1, points, 1), generator=g).float()
    xy = torch.rand(1, points, 2, generator=g) * (size - 1)
    return video, torch.cat([t, xy], dim=-1)


def golden_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Formula video (1, 14, 3, 64, 64) float64 in 0..255 and five queries at frames 0..13."""
    n, s = GOLDEN["frames"], GOLDEN["size"]
    t, c, y, x = torch.meshgrid(*(torch.arange(k, dtype=torch.float64) for k in (n, 3, s, s)), indexing="ij")
    video = 127.5 + 127.5 * torch.sin(0.3 * (x - 0.7 * t) + 0.2 * (y + 0.3 * t) + c) * torch.cos(0.05 * x * y / s + c)
    return video[None], torch.tensor([GOLDEN["queries"]], dtype=torch.float64)


def reference_inputs(video: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """The reference's input: ImageNet-normalised frames and per-video targets built from the queries."""
    _, frames, _, height, width = video.shape
    mean = video.new_tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1)
    std = video.new_tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1)
    samples = (video / 255 - mean) / std
    targets = []
    for q in queries:
        start = q[:, 0].round().long()
        xy = q[:, 1:] / video.new_tensor([width - 1, height - 1])
        box = torch.cat([xy, torch.full_like(xy, 0.5)], -1)[:, None].expand(-1, frames, 4).clone()
        targets.append({
            "pt_tracking_mask": torch.arange(frames)[None] >= start[:, None],
            "pt_boxes": box,
            "pt_labels": torch.ones(q.shape[0], frames, dtype=torch.long),  # visible (occluded + 1) at the query
        })
    return samples, targets


def reference_eval(model: nn.Module, video: torch.Tensor, queries: torch.Tensor) -> dict[str, torch.Tensor]:
    model.eval()
    samples, targets = reference_inputs(video, queries)
    with torch.no_grad():
        out = model(samples, targets)[0]["full_seq_output"]
    size = video.new_tensor([video.shape[-1] - 1, video.shape[-2] - 1])
    return {"tracks": out["pred_boxes"][..., :2] * size, "vis_logits": out["pred_logits"]}


def reference_train(model: nn.Module, video: torch.Tensor, queries: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-layer outputs of the training path, reshaped to (L, B, T, N, .) pixels."""
    model.train()
    model.dropout_window_update.p = 0.0
    samples, targets = reference_inputs(video, queries)
    outputs = model(samples, targets)[0]
    batch, frames = video.shape[:2]
    size = video.new_tensor([video.shape[-1] - 1, video.shape[-2] - 1])

    def layers(out: dict, key: str) -> torch.Tensor:
        stacked = torch.stack([aux[key] for aux in out.get("aux_outputs", [])] + [out[key]])
        return stacked.view(stacked.shape[0], batch, frames, *stacked.shape[2:])

    return {
        "layer_tracks": layers(outputs["full_seq_output"], "pred_boxes")[..., :2] * size,
        "layer_apu_tracks": layers(outputs["full_seq_output_ca"], "pred_boxes")[..., :2] * size,
        "layer_vis_logits": layers(outputs["full_seq_output"], "pred_logits"),
    }


# --------------------------------------------------------------------------------------
# comparisons

def _diff(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    if ours.shape != ref.shape:
        raise AssertionError(f"shape mismatch: ours {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
    err = (ours.double() - ref.double()).abs().max().item()
    return err, err / max(ref.double().abs().max().item(), 1e-12)


def _report(name: str, ours: torch.Tensor, ref: torch.Tensor, results: list[float]) -> None:
    err, rel = _diff(ours, ref)
    results.append(rel)
    print(f"  {name:34s} max abs {err:.3e}  max rel {rel:.3e}")


def _weighted_sum(outputs: Mapping[str, torch.Tensor], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for key in sorted(outputs):
        weights = torch.randn(outputs[key].shape, generator=g, dtype=torch.float64).to(outputs[key].dtype)
        total = total + (outputs[key] * weights).sum()
    return total


def _reference_gradients(reference: nn.Module, video: torch.Tensor, queries: torch.Tensor, seed: int):
    """Training-path outputs and parameter gradients of the reference (keys under one name per shared head)."""
    reference.zero_grad()
    outputs = reference_train(reference, video, queries)
    _weighted_sum(outputs, seed).backward()
    # shared heads are named after whichever owner registers first: compare under one name
    grads = {_canonical(k): p.grad.clone() for k, p in reference.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in outputs.items()}, grads


def _our_gradients(ours: TaptrV2, video: torch.Tensor, queries: torch.Tensor, seed: int, keys):
    ours.train()
    ours.window_update_dropout.p = 0.0
    ours.zero_grad()
    try:
        out = ours(video, queries)
        outputs = {k: getattr(out, k) for k in keys}
        _weighted_sum(outputs, seed).backward()
    finally:
        ours.window_update_dropout.p = ours.cfg.window_update_dropout
    missing = [n for n, p in ours.named_parameters() if p.grad is None]
    if missing:
        raise AssertionError(f"no gradient for {missing}")
    grads = {_canonical(n): p.grad.clone() for n, p in ours.named_parameters()}
    return {k: v.detach() for k, v in outputs.items()}, grads


def _cancelled_by_norm(name: str, cfg: TaptrV2Config) -> bool:
    """Input-projection conv biases have an exactly zero gradient when GroupNorm has one channel per group."""
    return cfg.norm_groups == cfg.d_model and name.startswith("input_proj.") and name.endswith(".0.bias")


def _worst_gradient(
    grads: dict[str, torch.Tensor], target: dict[str, torch.Tensor], cfg: TaptrV2Config
) -> tuple[float, str]:
    worst, worst_name = 0.0, ""
    for name, grad in grads.items():
        if name not in target:
            raise AssertionError(f"the reference has no gradient for {name}")
        if _cancelled_by_norm(name, cfg):
            continue
        rel = _diff(grad, target[name])[1]
        if rel > worst:
            worst, worst_name = rel, name
    return worst, worst_name


def compare(reference: nn.Module, ours: TaptrV2, video: torch.Tensor, queries: torch.Tensor, seed: int) -> bool:
    """Print the differences; return whether every one is within tolerance."""
    results: list[float] = []
    ref = reference_eval(reference, video, queries)
    ours.eval()
    with torch.no_grad():
        mine = ours(video, queries)
    print("eval (inference path)")
    _report("tracks", mine.tracks, ref["tracks"], results)
    _report("vis_logits", mine.vis_logits, ref["vis_logits"], results)
    flips = (mine.visible != (ref["vis_logits"][..., 1].sigmoid() > 0.5)).sum().item()
    print(f"  {'visible flags differing':34s} {flips} of {mine.visible.numel()}")

    print("train (window-update dropout off)")
    ref, ref_grads = _reference_gradients(reference, video, queries, seed)
    mine, grads = _our_gradients(ours, video, queries, seed, ref)
    for key in ref:
        _report(key, mine[key], ref[key], results)
    if video.dtype != torch.float64:
        # Gradients of deformable attention jump where a sampling point crosses a pixel edge, so
        # float32 rounding moves them arbitrarily far: compare float64 copies (same weights).
        torch.set_default_dtype(torch.float64)
        try:
            args = (video.double(), queries.double(), seed)
            _, ref_grads = _reference_gradients(copy.deepcopy(reference).double(), *args)
            _, grads = _our_gradients(copy.deepcopy(ours).double(), *args, ref)
        finally:
            torch.set_default_dtype(video.dtype)
    worst, worst_name = _worst_gradient(grads, ref_grads, ours.cfg)
    results.append(worst)
    print(f"  {'parameter gradients (float64)':34s} max rel {worst:.3e}  ({worst_name})")
    if any(_cancelled_by_norm(n, ours.cfg) for n in grads):
        print("  (input_proj conv biases skipped: GroupNorm with one channel per group cancels them, true gradient 0)")
    return max(results) <= TARGET


def build_pair(repo: Path, cfg: TaptrV2Config, weights: Path | None, dtype: torch.dtype) -> tuple[nn.Module, TaptrV2]:
    # cast first: the reference creates its offset biases in float32 whatever the default dtype
    reference, ours = build_reference(repo, cfg).to(dtype), TaptrV2(cfg).to(dtype)
    if weights is not None:
        load_taptrv2_checkpoint(ours, weights)
    else:
        load_strict(ours, random_state_dict({k: v.shape for k, v in ours.state_dict().items()}))
    load_strict(reference, ours.state_dict(), what="our weights into the reference")
    return reference, ours


# --------------------------------------------------------------------------------------
# fixtures

def write_layout(repo: Path, out: Path) -> None:
    """Official key -> shape of the full-size model (built on the meta device)."""
    with torch.device("meta"):
        model = build_reference(repo, TaptrV2Config())
    keys = {k: "x".join(map(str, v.shape)) for k, v in model.state_dict().items()}
    source = f"IDEA-Research/TAPTR {reference_commit(repo)}, models.dino.taptr.build_taptr(config/TAPTRv2.py)"
    out.write_text(json.dumps({"source": source, "keys": keys}, indent=1) + "\n")
    print(f"wrote {out} ({len(keys)} keys)")


def write_golden(repo: Path, out: Path) -> None:
    """Reference outputs of the TINY model on portable weights and the formula clip, float64."""
    torch.set_default_dtype(torch.float64)  # the reference builds some tensors with the default dtype
    cfg = TaptrV2Config(**TINY)
    reference, _ = build_pair(repo, cfg, None, torch.float64)
    video, queries = golden_inputs()
    outputs = reference_eval(reference, video, queries)
    outputs |= {k: v.detach() for k, v in reference_train(reference, video, queries).items()}
    golden = {
        "source": f"IDEA-Research/TAPTR {reference_commit(repo)} (tools/parity_taptrv2.py --write-golden)",
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()},
        "clip": GOLDEN,
        "outputs": {k: v.tolist() for k, v in outputs.items()},
    }
    out.write_text(json.dumps(golden) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-repo", type=Path, required=True, help="IDEA-Research/TAPTR checkout, branch v2")
    parser.add_argument("--weights", type=Path, help="official checkpoint (taptrv2.pth) instead of random weights")
    parser.add_argument("--tiny", action="store_true", help="the small test configuration, not the official sizes")
    parser.add_argument("--size", type=int, default=256, help="square input size (the model runs at this resolution)")
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--points", type=int, default=24)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-layout", type=Path, help="write the official key/shape layout JSON and exit")
    parser.add_argument("--write-golden", type=Path, help="write reference outputs of the tiny model and exit")
    args = parser.parse_args()
    repo = args.reference_repo.resolve()
    if args.write_layout or args.write_golden:
        if args.write_layout:
            write_layout(repo, args.write_layout)
        if args.write_golden:
            write_golden(repo, args.write_golden)
        return
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)
    cfg = TaptrV2Config(**{**(TINY if args.tiny else {}), "model_resolution": (args.size, args.size)})
    reference, ours = build_pair(repo, cfg, args.weights, dtype)
    video, queries = synthetic_clip(args.frames, args.size, args.points, args.seed)
    video, queries = video.to(dtype), queries.to(dtype)
    weights = f"weights {args.weights}" if args.weights else "pseudo-random weights"
    print(f"{'tiny' if args.tiny else 'official-size'} model, {weights}, "
          f"clip 1x{args.frames}x3x{args.size}x{args.size}, {args.points} points, {args.dtype}")
    passed = compare(reference, ours, video, queries, args.seed)
    print("all within tolerance: OK" if passed else "FAIL")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
