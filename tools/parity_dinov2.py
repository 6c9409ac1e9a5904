"""Numerical parity of models/dinov2.py against the official facebookresearch/dinov2 code.

Builds the official hub model (pretrained=False, the hub's constructor arguments) and
ours, loads identical weights (portable pseudo-random ones from `deterministic_weights`,
or an official file with --weights), feeds the same input at a non-518 size so position
interpolation runs, and prints max |ours - ref| / max |ref| per output.

    python tools/parity_dinov2.py --reference-repo /tmp/ref/dinov2
    python tools/parity_dinov2.py --reference-repo /tmp/ref/dinov2 --variants vitb14 \\
        --weights dinov2_vitb14_pretrain.pth

It also writes the test fixtures (official key layout; reference outputs of tiny models):

    python tools/parity_dinov2.py --reference-repo /tmp/ref/dinov2 \\
        --write-layout tests/data/dinov2_state_dict_layout.json \\
        --write-golden tests/data/dinov2_tiny_golden.json
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import subprocess
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from models.checkpoint_io import load_strict, read_state_dict
from models.dinov2 import DinoV2

VARIANTS = ("vits14", "vits14_reg", "vitb14", "vitb14_reg", "vitl14", "vitl14_reg", "vitg14", "vitg14_reg")

# Tiny models for the golden fixture: every code path of the official variants (MLP and
# SwiGLU FFN, offset-0.1 scale-factor interpolation, registers with antialiased resizing).
TINY_CASES: dict[str, dict[str, Any]] = {
    "tiny_mlp": {"arch": "vits14", "num_register_tokens": 0, "ffn_layer": "mlp", "offset": 0.1, "antialias": False},
    "tiny_mlp_reg4": {"arch": "vits14", "num_register_tokens": 4, "ffn_layer": "mlp", "offset": 0.0, "antialias": True},
    "tiny_swiglu": {
        "arch": "vitg14",
        "num_register_tokens": 0,
        "ffn_layer": "swiglufused",
        "offset": 0.1,
        "antialias": False,
    },
}
TINY_DIMS = {"embed_dim": 32, "depth": 4, "num_heads": 2, "img_size": 84}  # 6x6 position grid
TINY_INPUT = (2, 3, 56, 98)  # 4x7 patches: shrinks one axis and grows the other


def deterministic_tensor(shape: tuple[int, ...], salt: int) -> torch.Tensor:
    """Uniform-ish values in [-0.5, 0.5) from integer hashing: identical on every platform and torch version."""
    idx = torch.arange(math.prod(shape), dtype=torch.int64)
    h = (idx * 2654435761 + salt * 40503 + 12345) % 2**32
    h = (h ^ (h >> 13)) * 1274126177 % 2**32
    return (h.double() / 2**32 - 0.5).float().reshape(shape)


def deterministic_weights(shapes: Mapping[str, torch.Size | tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Pseudo-random weights for a key -> shape layout: fan-in scaled matrices, norms and LayerScale near 1."""
    out = {}
    for salt, name in enumerate(sorted(shapes)):
        shape = tuple(shapes[name])
        u = deterministic_tensor(shape, salt)
        if name.endswith(".weight") and len(shape) >= 2:
            u = u * (2 * math.sqrt(3) / math.sqrt(math.prod(shape[1:])))  # std 1/sqrt(fan_in)
        elif name.endswith(("gamma", "norm.weight", "norm1.weight", "norm2.weight")):
            u = 1.0 + 0.4 * u
        else:  # biases, position embedding, cls / register / mask tokens
            u = 0.4 * u
        out[name] = u
    return out


def deterministic_input(shape: tuple[int, ...]) -> torch.Tensor:
    """Image-like input (roughly unit scale, like ImageNet-normalised pixels)."""
    return 3.0 * deterministic_tensor(shape, salt=7919)


def relative_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| normalised by max |ref| (elementwise ratios blow up near zero)."""
    if ours.shape != ref.shape:
        raise AssertionError(f"shape mismatch: ours {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
    return ((ours.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12)).item()


def summarize(t: torch.Tensor, n: int = 64) -> dict[str, Any]:
    """Shape, max |t| and an evenly strided sample of values: enough to pin an output in a small fixture."""
    flat = t.detach().double().flatten()
    stride = max(1, flat.numel() // n)
    return {
        "shape": list(t.shape),
        "abs_max": flat.abs().max().item(),
        "stride": stride,
        "values": flat[::stride].tolist(),
    }


def reference_repo_on_path(repo: Path) -> None:
    os.environ.setdefault("XFORMERS_DISABLED", "1")  # the plain-PyTorch path is the one to compare with
    logging.getLogger("dinov2").setLevel(logging.ERROR)
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))


def build_reference(repo: Path, variant: str) -> torch.nn.Module:
    reference_repo_on_path(repo)
    from dinov2.hub import backbones

    with warnings.catch_warnings():  # silence the reference's "xFormers not available" notices
        warnings.simplefilter("ignore")
        return getattr(backbones, f"dinov2_{variant}")(pretrained=False)


def build_tiny_reference(repo: Path, case: dict[str, Any]) -> torch.nn.Module:
    reference_repo_on_path(repo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from dinov2.layers import MemEffAttention, NestedTensorBlock
        from dinov2.models.vision_transformer import DinoVisionTransformer

        return DinoVisionTransformer(
            img_size=TINY_DIMS["img_size"],
            patch_size=14,
            embed_dim=TINY_DIMS["embed_dim"],
            depth=TINY_DIMS["depth"],
            num_heads=TINY_DIMS["num_heads"],
            mlp_ratio=4,
            init_values=1.0,
            block_chunks=0,
            block_fn=functools.partial(NestedTensorBlock, attn_class=MemEffAttention),
            ffn_layer=case["ffn_layer"],
            num_register_tokens=case["num_register_tokens"],
            interpolate_offset=case["offset"],
            interpolate_antialias=case["antialias"],
        )


def build_tiny_ours(case: dict[str, Any]) -> DinoV2:
    """Our counterpart of a TINY_CASES entry (the tests use this too)."""
    return DinoV2(case["arch"], case["num_register_tokens"], **TINY_DIMS)


def reference_outputs(model: torch.nn.Module, x: torch.Tensor, with_regs: bool) -> dict[str, torch.Tensor]:
    """The outputs compared everywhere: 4 intermediate layers (reshape, class token) and forward_features."""
    out = {}
    for i, (patches, cls) in enumerate(model.get_intermediate_layers(x, n=4, reshape=True, return_class_token=True)):
        out[f"intermediate{i}_patches"] = patches
        out[f"intermediate{i}_cls"] = cls
    ff = model.forward_features(x)
    for key in ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm") + (("x_norm_regtokens",) if with_regs else ()):
        out[key] = ff[key]
    return out


@torch.no_grad()
def compare(repo: Path, variant: str, size: tuple[int, int], weights: Path | None) -> float:
    ref = build_reference(repo, variant).eval()
    state = (
        read_state_dict(weights)
        if weights is not None
        else deterministic_weights({k: v.shape for k, v in ref.state_dict().items()})
    )
    ref.load_state_dict(state, strict=True)
    with_regs = variant.endswith("_reg")
    ours = DinoV2(variant.removesuffix("_reg"), num_register_tokens=4 if with_regs else 0).eval()
    load_strict(ours, state, what=f"{variant} weights")

    x = deterministic_input((2, 3, *size))
    ref_out, our_out = reference_outputs(ref, x, with_regs), reference_outputs(ours, x, with_regs)
    results = {f"{k} {tuple(v.shape)}": relative_diff(our_out[k], v) for k, v in ref_out.items()}
    gh, gw = size[0] // 14, size[1] // 14
    results["pos_embed interpolation"] = relative_diff(
        ours.interpolate_pos_encoding(gh, gw, torch.float32),
        ref.interpolate_pos_encoding(torch.zeros(1, 1 + gh * gw, ours.embed_dim), *size),
    )

    print(
        f"== {variant} ({'weights ' + str(weights) if weights else 'deterministic pseudo-random weights'}), "
        f"input {size[0]}x{size[1]}, offset {ours.interpolate_offset}, antialias {ours.interpolate_antialias}"
    )
    return print_report(results)


def print_report(results: dict[str, float]) -> float:
    """Print one line per compared output; return the worst relative difference."""
    for name, value in results.items():
        print(f"  {name:56s} {value:.3e}")
    worst = max(results.values())
    print(f"  max relative difference: {worst:.3e}")
    return worst


def reference_commit(repo: Path) -> str:
    return (
        subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        or "unknown commit"
    )


def write_layout(repo: Path, out: Path) -> None:
    """Official key -> shape for every variant (built on the meta device: no memory, no init cost)."""
    models = {}
    for variant in VARIANTS:
        with torch.device("meta"):
            ref = build_reference(repo, variant)
        models[variant] = {k: "x".join(map(str, v.shape)) for k, v in ref.state_dict().items()}
    source = f"facebookresearch/dinov2 {reference_commit(repo)}, dinov2.hub.backbones.dinov2_*(pretrained=False)"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"source": source, "models": models}, indent=1) + "\n")  # "1x1370x384": one key per line
    print(f"wrote {out} ({len(models)} variants)")


@torch.no_grad()
def write_golden(repo: Path, out: Path) -> None:
    """Reference outputs of the TINY_CASES models on deterministic weights and input."""
    x = deterministic_input(TINY_INPUT)
    cases = {}
    for name, case in TINY_CASES.items():
        ref = build_tiny_reference(repo, case).eval()
        ref.load_state_dict(deterministic_weights({k: v.shape for k, v in ref.state_dict().items()}), strict=True)
        outputs = reference_outputs(ref, x, case["num_register_tokens"] > 0)
        cases[name] = {"config": case, "outputs": {k: summarize(v) for k, v in outputs.items()}}
    golden = {
        "source": f"facebookresearch/dinov2 {reference_commit(repo)}, DinoVisionTransformer (tools/parity_dinov2.py)",
        "dims": TINY_DIMS,
        "input_shape": list(TINY_INPUT),
        "cases": cases,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(golden) + "\n")
    print(f"wrote {out} ({len(cases)} tiny cases)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-repo", type=Path, required=True, help="checkout of facebookresearch/dinov2")
    parser.add_argument(
        "--weights", type=Path, help="official .pth to use instead of pseudo-random weights (one variant)"
    )
    parser.add_argument("--variants", nargs="+", default=["vits14", "vits14_reg"], choices=VARIANTS)
    parser.add_argument("--size", nargs=2, type=int, default=[224, 308], metavar=("H", "W"))
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--write-layout", type=Path, help="write the official key/shape layout JSON and exit")
    parser.add_argument("--write-golden", type=Path, help="write reference outputs of tiny models as JSON and exit")
    args = parser.parse_args()
    if args.write_layout is not None or args.write_golden is not None:
        if args.write_layout is not None:
            write_layout(args.reference_repo, args.write_layout)
        if args.write_golden is not None:
            write_golden(args.reference_repo, args.write_golden)
        return
    if args.weights is not None and len(args.variants) != 1:
        parser.error("--weights needs exactly one --variants entry")
    worst = max(compare(args.reference_repo, v, tuple(args.size), args.weights) for v in args.variants)
    verdict = "OK" if worst <= args.tol else "FAIL"
    print(f"overall max relative difference {worst:.3e} (tolerance {args.tol:.0e}): {verdict}")
    sys.exit(0 if worst <= args.tol else 1)


if __name__ == "__main__":
    main()
