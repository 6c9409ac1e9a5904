"""Numerical parity of models/depth_anything_v2.py against DepthAnything/Depth-Anything-V2.

Builds the official `DepthAnythingV2` and ours with identical weights (portable
pseudo-random ones, or an official file with --weights), runs the same ImageNet-normalised
input at a non-518 size, and prints max |ours - ref| / max |ref| for the four encoder taps
and the disparity. When OpenCV is importable it also compares `preprocess_image` with the
official cv2 `image2tensor` (informational: cv2.INTER_CUBIC is not bit-identical to torch).

The official dpt.py imports cv2 and torchvision only for its preprocessing helper; when
they are missing, import-only stand-ins are installed so the network can be built.

    python tools/parity_depth_anything_v2.py --reference-repo /tmp/ref/Depth-Anything-V2
    python tools/parity_depth_anything_v2.py --reference-repo ... --encoders vitb --weights depth_anything_v2_vitb.pth

It also writes the test fixtures (official key layout; reference outputs of tiny models):

    python tools/parity_depth_anything_v2.py --reference-repo ... \\
        --write-layout tests/data/depth_anything_v2_state_dict_layout.json \\
        --write-golden tests/data/depth_anything_v2_tiny_golden.json
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import sys
import types
import warnings
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from models.checkpoint_io import load_strict, read_state_dict
from models.depth_anything_v2 import CONFIGS, DepthAnythingV2, preprocess_image
from tools.parity_dinov2 import (
    deterministic_input,
    deterministic_weights,
    print_report,
    reference_commit,
    reference_repo_on_path,
    relative_diff,
    summarize,
)

# Tiny models for the golden fixture (the official class only builds full-size encoders,
# so these assemble its DINOv2 and DPTHead classes with small widths).
TINY_DIMS = {"embed_dim": 32, "depth": 4, "num_heads": 2, "img_size": 84}
TINY_HEAD = {"features": 16, "out_channels": [8, 16, 24, 32], "layer_idx": [0, 1, 2, 3]}
TINY_CASES: dict[str, dict[str, Any]] = {"tiny": {"use_clstoken": False}, "tiny_clstoken": {"use_clstoken": True}}
TINY_INPUT = (2, 3, 70, 98)  # 5x7 patches: odd grid, so the stride-2 tap and the fusion sizes are exercised


def _install_import_stubs() -> bool:
    """Stand-ins for cv2 / torchvision.transforms (import only). Returns whether real cv2 exists."""
    have_cv2 = importlib.util.find_spec("cv2") is not None
    if not have_cv2:
        cv2 = types.ModuleType("cv2")
        cv2.INTER_AREA, cv2.INTER_CUBIC, cv2.INTER_NEAREST = 3, 2, 0
        sys.modules["cv2"] = cv2
    if importlib.util.find_spec("torchvision") is None:
        tv = types.ModuleType("torchvision")
        transforms = types.ModuleType("torchvision.transforms")

        class Compose:
            def __init__(self, fns: list) -> None:
                self.fns = fns

            def __call__(self, x: dict) -> dict:
                for fn in self.fns:
                    x = fn(x)
                return x

        transforms.Compose = Compose
        tv.transforms = transforms
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, transforms
    return have_cv2


def build_reference(repo: Path, encoder: str) -> torch.nn.Module:
    reference_repo_on_path(repo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from depth_anything_v2.dpt import DepthAnythingV2 as Reference

        cfg = CONFIGS[encoder]
        return Reference(encoder=encoder, features=cfg.features, out_channels=list(cfg.out_channels))


def build_tiny_reference(repo: Path, use_clstoken: bool) -> torch.nn.Module:
    reference_repo_on_path(repo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from depth_anything_v2.dinov2 import DinoVisionTransformer
        from depth_anything_v2.dinov2_layers import MemEffAttention, NestedTensorBlock
        from depth_anything_v2.dpt import DepthAnythingV2 as Reference
        from depth_anything_v2.dpt import DPTHead

        # Same construction as the official DINOv2() factory, at tiny widths.
        encoder = DinoVisionTransformer(
            img_size=TINY_DIMS["img_size"],
            patch_size=14,
            embed_dim=TINY_DIMS["embed_dim"],
            depth=TINY_DIMS["depth"],
            num_heads=TINY_DIMS["num_heads"],
            mlp_ratio=4,
            init_values=1.0,
            ffn_layer="mlp",
            block_chunks=0,
            block_fn=functools.partial(NestedTensorBlock, attn_class=MemEffAttention),
            num_register_tokens=0,
            interpolate_antialias=False,
            interpolate_offset=0.1,
        )
        ref = Reference.__new__(Reference)  # the official __init__ only builds full-size encoders
        torch.nn.Module.__init__(ref)
        ref.encoder = "tiny"
        ref.intermediate_layer_idx = {"tiny": TINY_HEAD["layer_idx"]}
        ref.pretrained = encoder
        ref.depth_head = DPTHead(
            TINY_DIMS["embed_dim"], TINY_HEAD["features"], False, TINY_HEAD["out_channels"], use_clstoken
        )
        return ref


def build_tiny_ours(use_clstoken: bool) -> DepthAnythingV2:
    """Our counterpart of a TINY_CASES entry (the tests use this too)."""
    return DepthAnythingV2("vits", use_clstoken=use_clstoken, **TINY_DIMS, **TINY_HEAD)


def _disparity_and_last_conv(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, also capturing the head's last conv before its ReLU: with random weights the
    ReLU'd disparity can be mostly zeros, which would make a weak comparison."""
    captured = []
    # clone: the official next ReLU is in-place and would overwrite the captured tensor.
    handle = model.depth_head.scratch.output_conv2[2].register_forward_hook(lambda m, i, o: captured.append(o.clone()))
    try:
        disparity = model(x)
    finally:
        handle.remove()
    return disparity, captured[0]


def reference_outputs(ref: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    taps = ref.pretrained.get_intermediate_layers(x, ref.intermediate_layer_idx[ref.encoder], return_class_token=True)
    for i, (patches, cls) in enumerate(taps):
        out[f"tap{i}_patches"] = patches
        out[f"tap{i}_cls"] = cls
    out["disparity"], out["last_conv"] = _disparity_and_last_conv(ref, x)
    return out


def our_outputs(model: DepthAnythingV2, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for i, (patches, cls) in enumerate(model.encode(x)):
        out[f"tap{i}_patches"] = patches
        out[f"tap{i}_cls"] = cls
    out["disparity"], out["last_conv"] = _disparity_and_last_conv(model, x)
    return out


@torch.no_grad()
def compare(repo: Path, encoder: str, size: tuple[int, int], weights: Path | None, have_cv2: bool) -> float:
    ref = build_reference(repo, encoder).eval()
    state = (
        read_state_dict(weights)
        if weights is not None
        else deterministic_weights({k: v.shape for k, v in ref.state_dict().items()})
    )
    ref.load_state_dict(state, strict=True)
    ours = DepthAnythingV2(encoder).eval()
    load_strict(ours, state, what=f"Depth Anything V2 {encoder} weights")

    x = deterministic_input((2, 3, *size))
    ref_out, our_out = reference_outputs(ref, x), our_outputs(ours, x)
    results = {f"{k} {tuple(v.shape)}": relative_diff(our_out[k], v) for k, v in ref_out.items()}
    # The head alone on the reference's own taps isolates the decoder.
    ref_taps = [(ref_out[f"tap{i}_patches"], ref_out[f"tap{i}_cls"]) for i in range(4)]
    results["decode(reference taps)"] = relative_diff(
        ours.decode(ref_taps, size[0] // 14, size[1] // 14), ref_out["disparity"]
    )
    positive = (ref_out["disparity"] > 0).double().mean().item()

    print(
        f"== {encoder} ({'weights ' + str(weights) if weights else 'deterministic pseudo-random weights'}), "
        f"input {size[0]}x{size[1]}, {positive:.0%} of reference disparities > 0"
    )
    worst = print_report(results)

    if have_cv2:
        for shape in ((300, 451), (1080, 1920)):
            image = np.random.default_rng(0).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
            ref_in, _ = ref.image2tensor(image[..., ::-1].copy(), 518)  # the official helper expects BGR
            our_in = preprocess_image(image, 518)
            print(
                f"  preprocessing vs cv2 (informational) {shape} -> {tuple(our_in.shape[2:])}: "
                f"max abs diff {(our_in.double() - ref_in.cpu().double()).abs().max().item():.3e} (normalised units)"
            )
    return worst


def write_layout(repo: Path, out: Path) -> None:
    """Official key -> shape for every encoder (built on the meta device: no memory, no init cost)."""
    # The reference calls .item() on a torch.linspace (drop-path schedule): keep that one on the CPU.
    cpu_linspace = functools.partial(torch.linspace, device="cpu")
    models = {}
    for encoder in CONFIGS:
        with torch.device("meta"), mock.patch.object(torch, "linspace", cpu_linspace):
            ref = build_reference(repo, encoder)
        models[encoder] = {k: "x".join(map(str, v.shape)) for k, v in ref.state_dict().items()}
    source = f"DepthAnything/Depth-Anything-V2 {reference_commit(repo)}, depth_anything_v2.dpt.DepthAnythingV2"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"source": source, "models": models}, indent=1) + "\n")  # one key per line
    print(f"wrote {out} ({len(models)} encoders)")


@torch.no_grad()
def write_golden(repo: Path, out: Path) -> None:
    """Reference outputs of the tiny models on deterministic weights and input."""
    x = deterministic_input(TINY_INPUT)
    cases = {}
    for name, case in TINY_CASES.items():
        ref = build_tiny_reference(repo, case["use_clstoken"]).eval()
        ref.load_state_dict(deterministic_weights({k: v.shape for k, v in ref.state_dict().items()}), strict=True)
        cases[name] = {"config": case, "outputs": {k: summarize(v) for k, v in reference_outputs(ref, x).items()}}
    golden = {
        "source": f"DepthAnything/Depth-Anything-V2 {reference_commit(repo)}; tools/parity_depth_anything_v2.py --write-golden",
        "dims": TINY_DIMS,
        "head": TINY_HEAD,
        "input_shape": list(TINY_INPUT),
        "cases": cases,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(golden) + "\n")
    print(f"wrote {out} ({len(cases)} tiny cases)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--reference-repo", type=Path, required=True, help="checkout of DepthAnything/Depth-Anything-V2"
    )
    parser.add_argument(
        "--weights", type=Path, help="official .pth to use instead of pseudo-random weights (one encoder)"
    )
    parser.add_argument("--encoders", nargs="+", default=["vits"], choices=sorted(CONFIGS))
    parser.add_argument("--size", nargs=2, type=int, default=[266, 350], metavar=("H", "W"))
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--write-layout", type=Path, help="write the official key/shape layout JSON and exit")
    parser.add_argument("--write-golden", type=Path, help="write reference outputs of tiny models as JSON and exit")
    args = parser.parse_args()
    have_cv2 = _install_import_stubs()
    if args.write_layout is not None or args.write_golden is not None:
        if args.write_layout is not None:
            write_layout(args.reference_repo, args.write_layout)
        if args.write_golden is not None:
            write_golden(args.reference_repo, args.write_golden)
        return
    if args.weights is not None and len(args.encoders) != 1:
        parser.error("--weights needs exactly one --encoders entry")
    worst = max(compare(args.reference_repo, e, tuple(args.size), args.weights, have_cv2) for e in args.encoders)
    verdict = "OK" if worst <= args.tol else "FAIL"
    print(f"overall max relative difference {worst:.3e} (tolerance {args.tol:.0e}): {verdict}")
    sys.exit(0 if worst <= args.tol else 1)


if __name__ == "__main__":
    main()
