"""Numerical parity of models/ddcolor.py against piddnad/DDColor.

Builds the official DDColor (`ddcolor.model.DDColor`, the class the official inference
script uses, with the released configuration: 100 queries, 3 scales, 9 decoder layers,
spectral last norm, 2 output channels) and ours with identical weights (portable
pseudo-random ones, or a released checkpoint with --weights), runs the same grey-RGB input
and prints max |ours - ref| / max |ref| for the encoder stage maps, the three decoder scales,
the pixel map, the query maps and ab.

Only the network files of the reference are imported (its package `__init__`s pull in cv2,
torchvision and the training stack): `basicsr`, `basicsr.archs`, `basicsr.archs.ddcolor_arch_utils`,
`basicsr.utils` and `ddcolor` are registered as bare packages over the checkout's folders, and
import-only stand-ins replace `skimage` (imported by the reference's Lab helper module but not
used by `tensor_lab2rgb`). timm is not needed: the reference falls back to plain PyTorch.

    python tools/parity_ddcolor.py --reference-repo /tmp/DDColor
    python tools/parity_ddcolor.py --reference-repo /tmp/DDColor --encoder convnext-l --size 256 256
    python tools/parity_ddcolor.py --reference-repo /tmp/DDColor --weights ddcolor_paper_tiny.pth
    python tools/parity_ddcolor.py --reference-repo /tmp/DDColor --train-step   # + a training-mode step

It also writes the test fixtures (official key layouts; reference outputs of a tiny model):

    python tools/parity_ddcolor.py --reference-repo /tmp/DDColor \\
        --write-layout tests/data/ddcolor_state_dict_layout.json \\
        --write-golden tests/data/ddcolor_tiny_golden.json
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import sys
import types
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint_io import load_strict
from models.ddcolor import (
    ENCODERS,
    DDColor,
    DDColorConfig,
    grey_rgb_from_lightness,
    read_ddcolor_state_dict,
)
from models.dinov2 import IMAGENET_MEAN, IMAGENET_STD
from tools.parity_dinov2 import (
    deterministic_tensor,
    deterministic_weights,
    print_report,
    reference_commit,
    relative_diff,
    summarize,
)

# Release configuration of every published DDColor model (official build_ddcolor_model defaults).
RELEASE = {"num_queries": 100, "num_scales": 3, "dec_layers": 9, "nf": 512}

# A tiny model for the golden fixture, assembled from the official classes at small widths.
TINY: dict[str, Any] = {
    "depths": [1, 1, 2, 1],
    "dims": [8, 16, 24, 32],
    "nf": 64,
    "num_queries": 8,
    "hidden_dim": 32,
    "num_heads": 4,
    "dim_feedforward": 64,
    "dec_layers": 4,  # > 3: the query decoder cycles through the scales more than once
}
TINY_INPUT = (2, 3, 64, 96)  # rectangular, 2x3 cells of the 32-pixel stride
TINY_LIGHTNESS = (1, 1, 40, 52)  # forward(L): resized to 64 x 64 and back
TINY_INPUT_SIZE = 64

# Outputs compared: the modules have the same names in both implementations.
CAPTURED = (
    "encoder.arch.norm0",
    "encoder.arch.norm1",
    "encoder.arch.norm2",
    "encoder.arch.norm3",
    "decoder.layers.0",
    "decoder.layers.1",
    "decoder.layers.2",
    "decoder.last_shuf",
    "decoder.color_decoder",
)


def _bare_package(name: str, folder: Path) -> None:
    """Register `name` as a package over `folder` without running its __init__.py."""
    module = types.ModuleType(name)
    module.__path__ = [str(folder)]
    sys.modules[name] = module


def import_reference(repo: Path) -> types.SimpleNamespace:
    """The reference network modules, imported without their packages' heavy __init__ files."""
    repo = repo.resolve()
    for name in ("basicsr", "basicsr.archs", "basicsr.archs.ddcolor_arch_utils", "basicsr.utils", "ddcolor"):
        _bare_package(name, repo.joinpath(*name.split(".")))
    if "skimage" not in sys.modules:
        skimage = types.ModuleType("skimage")
        skimage.color = types.ModuleType("skimage.color")
        sys.modules["skimage"], sys.modules["skimage.color"] = skimage, skimage.color
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return types.SimpleNamespace(
            model=importlib.import_module("ddcolor.model"),
            train_arch=importlib.import_module("basicsr.archs.ddcolor_arch"),
            unet=importlib.import_module("basicsr.archs.ddcolor_arch_utils.unet"),
            convnext=importlib.import_module("basicsr.archs.ddcolor_arch_utils.convnext"),
            util=importlib.import_module("basicsr.archs.ddcolor_arch_utils.util"),
        )


def _power_iteration(weight: torch.Tensor, u: torch.Tensor, steps: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading singular vectors of weight (out, ...) as a matrix, from a fixed start: well-defined u, v buffers."""
    mat = weight.reshape(weight.shape[0], -1).double()
    u = F.normalize(u.double(), dim=0)
    for _ in range(steps):
        v = F.normalize(mat.T @ u, dim=0)
        u = F.normalize(mat @ v, dim=0)
    return u.float(), v.float()


def ddcolor_test_weights(shapes: Mapping[str, torch.Size | tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Portable pseudo-random DDColor weights that keep every layer well-conditioned.

    Norm scales near 1, positive BatchNorm variances, the ImageNet normalisation constants,
    and spectral-norm (u, v) buffers set to the weight's leading singular vectors (random
    ones would give an arbitrary, possibly tiny or negative, sigma).
    """
    state = deterministic_weights(shapes)
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros((), dtype=torch.long)
        elif name.endswith("running_var") or (name.endswith(".weight") and len(shape) == 1):
            state[name] = 1.0 + deterministic_tensor(tuple(shape), salt=len(name))
    state["mean"] = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    state["std"] = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for name in [k for k in shapes if k.endswith(".weight_orig")]:
        prefix = name[: -len("weight_orig")]
        u, v = _power_iteration(state[name], state[prefix + "weight_u"])
        state[prefix + "weight_u"], state[prefix + "weight_v"] = u, v
    return state


def build_reference(ref: types.SimpleNamespace, encoder: str, train_arch: bool = False) -> nn.Module:
    """The official model in the released configuration (as build_ddcolor_model makes it).

    The constructor's input_size only sizes a probe pass that discovers channel counts, so a
    small one is used.
    """
    cls = ref.train_arch.DDColor if train_arch else ref.model.DDColor
    return cls(
        encoder_name=encoder,
        decoder_name="MultiScaleColorDecoder",
        input_size=[64, 64],
        num_output_channels=2,
        last_norm="Spectral",
        do_normalize=False,
        num_queries=RELEASE["num_queries"],
        num_scales=RELEASE["num_scales"],
        dec_layers=RELEASE["dec_layers"],
    )


def build_tiny_reference(ref: types.SimpleNamespace) -> nn.Module:
    """The official classes assembled at TINY widths (the official __init__ only builds full-size
    encoders and hard-codes a 512-wide decoder input)."""
    m = ref.model
    model = m.DDColor.__new__(m.DDColor)
    nn.Module.__init__(model)
    encoder = m.ImageEncoder.__new__(m.ImageEncoder)
    nn.Module.__init__(encoder)
    encoder.arch = ref.convnext.ConvNeXt(depths=TINY["depths"], dims=TINY["dims"])
    encoder.encoder_name = "tiny"
    encoder.hook_names = ["norm0", "norm1", "norm2", "norm3"]
    encoder.hooks = encoder.setup_hooks()
    model.encoder = encoder.eval()
    with torch.no_grad():
        encoder(torch.randn(1, 3, 64, 64))  # the probe pass the official constructor makes
    nf = TINY["nf"]
    model.decoder = m.DuelDecoder(
        encoder.hooks, nf=nf, last_norm="Spectral", num_queries=TINY["num_queries"], num_scales=3,
        dec_layers=TINY["dec_layers"],
    )
    model.decoder.color_decoder = m.MultiScaleColorDecoder(
        in_channels=[nf, nf, nf // 2],
        hidden_dim=TINY["hidden_dim"],
        num_queries=TINY["num_queries"],
        nheads=TINY["num_heads"],
        dim_feedforward=TINY["dim_feedforward"],
        dec_layers=TINY["dec_layers"],
        color_embed_dim=nf // 2,
        num_scales=3,
    )
    model.refine_net = nn.Sequential(
        ref.unet.custom_conv_layer(
            TINY["num_queries"] + 3, 2, ks=1, use_activ=False, norm_type=ref.unet.NormType.Spectral
        )
    )
    model.do_normalize = False
    model.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
    model.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    return model


def build_tiny_ours(input_size: int | None = TINY_INPUT_SIZE) -> DDColor:
    """Our counterpart of the TINY reference (the tests use this too)."""
    return DDColor(DDColorConfig("convnext-t", input_size=input_size, **TINY))


def capture(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of the CAPTURED modules and of `run(x)` ('ab')."""
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    # clone: the reference applies in-place ReLUs downstream.
    handles = [
        modules[name].register_forward_hook(lambda mod, inp, o, name=name: out.__setitem__(name, o.clone()))
        for name in CAPTURED
    ]
    try:
        out["ab"] = run(x)
    finally:
        for h in handles:
            h.remove()
    return out


def reference_pipeline(
    ref: types.SimpleNamespace, model: nn.Module, lightness: torch.Tensor, size: int
) -> torch.Tensor:
    """The official inference steps in tensor form: L resized to size x size, grey RGB by the
    reference `tensor_lab2rgb`, the network, ab resized back with F.interpolate's default (nearest)."""
    small = F.interpolate(lightness, size=(size, size), mode="bilinear", align_corners=False)
    zeros = torch.zeros_like(small)
    rgb = ref.util.tensor_lab2rgb(torch.cat([small, zeros, zeros], dim=1))
    return F.interpolate(model(rgb), size=lightness.shape[-2:])


def network_input(shape: tuple[int, ...]) -> torch.Tensor:
    """Image-like RGB in [0, 1]."""
    return deterministic_tensor(shape, salt=7919) + 0.5


def lightness_input(shape: tuple[int, ...]) -> torch.Tensor:
    return 100.0 * (deterministic_tensor(shape, salt=104729) + 0.5)


def lightness_ramp() -> torch.Tensor:
    """L values over [0, 100] plus both sides of the Lab and sRGB branch points, as (1, 1, 1, n)."""
    values = torch.cat([torch.linspace(0, 100, 101), torch.tensor([0.2, 0.27, 0.28, 7.9, 7.99, 8.0, 8.01, 99.99])])
    return values.view(1, 1, 1, -1)


@torch.no_grad()
def compare(repo: Path, encoder: str, size: tuple[int, int], weights: Path | None, train_step: bool) -> float:
    ref_modules = import_reference(repo)
    ref = build_reference(ref_modules, encoder).eval()
    if weights is not None:
        state = read_ddcolor_state_dict(weights)
    else:
        state = ddcolor_test_weights({k: v.shape for k, v in ref.state_dict().items()})
    ref.load_state_dict(state, strict=True)
    ours = DDColor(DDColorConfig(encoder, input_size=None, update_norm_statistics=train_step)).eval()
    load_strict(ours, state, what=f"DDColor {encoder} weights")

    x = network_input((1, 3, *size))
    ref_out, our_out = capture(ref, ref, x), capture(ours, ours.network, x)
    results = {f"{k} {tuple(v.shape)}": relative_diff(our_out[k], v) for k, v in ref_out.items()}
    abs_diff = (our_out["ab"].double() - ref_out["ab"].double()).abs().max().item()
    ramp = lightness_ramp()
    zeros = torch.zeros_like(ramp)
    results["grey RGB from L (vs tensor_lab2rgb)"] = relative_diff(
        grey_rgb_from_lightness(ramp), ref_modules.util.tensor_lab2rgb(torch.cat([ramp, zeros, zeros], dim=1))
    )
    if train_step:
        results.update(compare_train_step(ref, ours, network_input((2, 3, *size))))
    print(
        f"== {encoder} ({'weights ' + str(weights) if weights else 'deterministic pseudo-random weights'}), "
        f"input {size[0]}x{size[1]}, |ab| max {ref_out['ab'].abs().max().item():.3g}, "
        f"ab max abs diff {abs_diff:.3e}"
    )
    return print_report(results)


@torch.enable_grad()
def compare_train_step(ref: nn.Module, ours: DDColor, x: torch.Tensor) -> dict[str, float]:
    """One training-mode forward + backward of both (official behaviour: BatchNorm batch statistics,
    a spectral-norm power iteration): ab, every gradient, every updated buffer.

    Runs in float64: with pseudo-random weights and small batches some BatchNorm channels have
    near-zero batch variance, which amplifies float32 rounding (1e-4 on ab, 1e-2 on some
    gradients, in both implementations alike); float64 separates that from real differences.
    Gradients are compared relative to max(|ref grad|, 1e-3 x the largest gradient of the model):
    biases of the maps that feed a BatchNorm have an exactly zero gradient in this mode, so their
    rounding noise has no scale of its own.
    """
    ref.double().train()
    ours.double().train()
    x = x.double()
    ref_ab, our_ab = ref(x), ours.network(x)
    ref_ab.square().mean().backward()
    our_ab.square().mean().backward()
    ref_params = dict(ref.named_parameters())
    floor = 1e-3 * max(p.grad.abs().max().item() for p in ref_params.values() if p.grad is not None)
    grad_diff = 0.0
    for name, p in ours.named_parameters():
        ref_grad = ref_params[name].grad
        if (p.grad is None) != (ref_grad is None):
            raise AssertionError(f"{name}: gradient present in only one implementation")
        if p.grad is not None:
            scale = max(ref_grad.abs().max().item(), floor)
            grad_diff = max(grad_diff, (p.grad - ref_grad).abs().max().item() / scale)
    ref_buffers = dict(ref.named_buffers())
    buffer_diff = max(
        relative_diff(b, ref_buffers[k]) for k, b in ours.named_buffers() if b.dtype.is_floating_point
    )
    return {
        f"train mode: ab {tuple(ref_ab.shape)} (float64)": relative_diff(our_ab, ref_ab),
        "train mode: gradients (float64, see compare_train_step)": grad_diff,
        "train mode: updated BN statistics, spectral (u, v) (float64)": buffer_diff,
    }


def reference_layout(ref: types.SimpleNamespace, encoder: str, train_arch: bool) -> dict[str, str]:
    # Meta device: no memory, no init cost. The reference calls .item() on a torch.linspace
    # (drop-path schedule): keep that one on the CPU.
    cpu_linspace = functools.partial(torch.linspace, device="cpu")
    with torch.device("meta"), mock.patch.object(torch, "linspace", cpu_linspace), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_reference(ref, encoder, train_arch=train_arch)
    return {k: "x".join(map(str, v.shape)) for k, v in model.state_dict().items()}


def write_layout(repo: Path, out: Path) -> None:
    """Official key -> shape of both released encoders, from the training class that saved the
    checkpoints (checked equal to the inference class)."""
    ref = import_reference(repo)
    models = {}
    for encoder in ENCODERS:
        layout = reference_layout(ref, encoder, train_arch=True)
        if layout != reference_layout(ref, encoder, train_arch=False):
            raise AssertionError(f"{encoder}: basicsr and ddcolor classes disagree on the key layout")
        models[encoder] = layout
    source = (
        f"piddnad/DDColor {reference_commit(repo)}, basicsr.archs.ddcolor_arch.DDColor (= ddcolor.model.DDColor) "
        f"with {RELEASE}, last_norm Spectral, 2 output channels"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"source": source, "models": models}, indent=1) + "\n")  # one key per line
    print(f"wrote {out} ({len(models)} encoders)")


@torch.no_grad()
def write_golden(repo: Path, out: Path) -> None:
    """Reference outputs of the tiny model on deterministic weights and input, and of the grey conversion."""
    ref_modules = import_reference(repo)
    model = build_tiny_reference(ref_modules).eval()
    model.load_state_dict(ddcolor_test_weights({k: v.shape for k, v in model.state_dict().items()}), strict=True)
    outputs = {k: summarize(v) for k, v in capture(model, model, network_input(TINY_INPUT)).items()}
    outputs["pipeline_ab"] = summarize(
        reference_pipeline(ref_modules, model, lightness_input(TINY_LIGHTNESS), TINY_INPUT_SIZE)
    )
    ramp = lightness_ramp()
    zeros = torch.zeros_like(ramp)
    outputs["grey_rgb"] = summarize(ref_modules.util.tensor_lab2rgb(torch.cat([ramp, zeros, zeros], dim=1)), n=1000)
    golden = {
        "source": f"piddnad/DDColor {reference_commit(repo)}; tools/parity_ddcolor.py --write-golden",
        "tiny": TINY,
        "input_shape": list(TINY_INPUT),
        "lightness_shape": list(TINY_LIGHTNESS),
        "input_size": TINY_INPUT_SIZE,
        "outputs": outputs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(golden) + "\n")
    print(f"wrote {out} ({len(outputs)} outputs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-repo", type=Path, required=True, help="checkout of piddnad/DDColor")
    parser.add_argument("--encoder", default="convnext-t", choices=sorted(ENCODERS))
    parser.add_argument("--weights", type=Path, help="released .pth to use instead of pseudo-random weights")
    parser.add_argument("--size", nargs=2, type=int, default=[128, 192], metavar=("H", "W"))
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument(
        "--train-step", action="store_true", help="also compare a training-mode forward + backward (2 images, float64)"
    )
    parser.add_argument("--write-layout", type=Path, help="write the official key/shape layout JSON and exit")
    parser.add_argument("--write-golden", type=Path, help="write reference outputs of the tiny model as JSON and exit")
    args = parser.parse_args()
    if args.write_layout is not None or args.write_golden is not None:
        if args.write_layout is not None:
            write_layout(args.reference_repo, args.write_layout)
        if args.write_golden is not None:
            write_golden(args.reference_repo, args.write_golden)
        return
    worst = compare(args.reference_repo, args.encoder, tuple(args.size), args.weights, args.train_step)
    verdict = "OK" if worst <= args.tol else "FAIL"
    print(f"overall max relative difference {worst:.3e} (tolerance {args.tol:.0e}): {verdict}")
    sys.exit(0 if worst <= args.tol else 1)


if __name__ == "__main__":
    main()
