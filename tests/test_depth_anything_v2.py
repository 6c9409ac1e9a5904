"""Depth Anything V2: official key layout, strict loading, reference outputs, encode/decode split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.checkpoint_io import CheckpointMismatchError, load_strict
from models.depth_anything_v2 import (
    CONFIGS,
    DepthAnythingV2,
    load_depth_anything_v2,
    network_input_size,
    preprocess_image,
)
from tools.parity_depth_anything_v2 import TINY_CASES, build_tiny_ours, our_outputs
from tools.parity_dinov2 import deterministic_input, deterministic_weights

DATA = Path(__file__).parent / "data"
LAYOUT = json.loads((DATA / "depth_anything_v2_state_dict_layout.json").read_text())["models"]
GOLDEN = json.loads((DATA / "depth_anything_v2_tiny_golden.json").read_text())
TINY = {
    "embed_dim": 32,
    "depth": 4,
    "num_heads": 2,
    "img_size": 84,
    "features": 16,
    "out_channels": [8, 16, 24, 32],
    "layer_idx": [0, 1, 2, 3],
}


def _shapes(module: torch.nn.Module) -> dict[str, str]:
    return {k: "x".join(map(str, v.shape)) for k, v in module.state_dict().items()}


def _meta_model(encoder: str) -> DepthAnythingV2:
    with torch.device("meta"):
        return DepthAnythingV2(encoder)


def _tiny(seed: int = 0, **kwargs: object) -> DepthAnythingV2:
    torch.manual_seed(seed)
    return DepthAnythingV2("vits", **{**TINY, **kwargs}).eval()


@pytest.mark.parametrize("encoder", sorted(LAYOUT))
def test_state_dict_layout_matches_official(encoder: str) -> None:
    assert _shapes(_meta_model(encoder)) == LAYOUT[encoder]


def test_configs_match_official_taps() -> None:
    assert {e: c.layer_idx for e, c in CONFIGS.items()} == {
        "vits": (2, 5, 8, 11),
        "vitb": (2, 5, 8, 11),
        "vitl": (4, 11, 17, 23),
        "vitg": (9, 19, 29, 39),
    }
    model = _meta_model("vitl")
    assert (model.pretrained.interpolate_offset, model.pretrained.interpolate_antialias) == (0.1, False)


@pytest.mark.parametrize("case", sorted(GOLDEN["cases"]))
def test_matches_reference_outputs(case: str) -> None:
    """Outputs of the official code (tools/parity_depth_anything_v2.py --write-golden) on the same weights and input."""
    model = build_tiny_ours(TINY_CASES[case]["use_clstoken"]).eval()
    load_strict(model, deterministic_weights({k: v.shape for k, v in model.state_dict().items()}))
    with torch.no_grad():
        ours = our_outputs(model, deterministic_input(tuple(GOLDEN["input_shape"])))
    expected = GOLDEN["cases"][case]["outputs"]
    assert set(ours) == set(expected)
    for name, ref in expected.items():
        out = ours[name]
        assert list(out.shape) == ref["shape"], name
        sample = out.double().flatten()[:: ref["stride"]]
        err = (sample - torch.tensor(ref["values"], dtype=torch.float64)).abs().max().item()
        assert err <= 1e-4 * ref["abs_max"], f"{case}/{name}: max error {err:.3e} vs scale {ref['abs_max']:.3e}"


def test_strict_round_trip_through_file(tmp_path: Path) -> None:
    src = _tiny(use_clstoken=True)
    path = tmp_path / "depth_anything_v2_vits.pth"
    torch.save(src.state_dict(), path)
    loaded = load_depth_anything_v2(path, use_clstoken=True, **TINY).eval()  # encoder from the file name
    assert loaded.encoder == "vits"
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), src(x), rtol=0, atol=0)


def test_vitb_checkpoint_into_vits_names_keys() -> None:
    with pytest.raises(CheckpointMismatchError) as err:
        load_strict(_meta_model("vits"), _meta_model("vitb").state_dict())
    msg = str(err.value)
    assert "pretrained.pos_embed: checkpoint (1, 1370, 768) vs model (1, 1370, 384)" in msg
    assert "236 shape mismatches" in msg  # every encoder tensor plus the head's input projections


def test_bare_dinov2_checkpoint_names_missing_head() -> None:
    model = _meta_model("vits")
    encoder_only = {
        k.removeprefix("pretrained."): v for k, v in model.state_dict().items() if k.startswith("pretrained.")
    }
    with pytest.raises(CheckpointMismatchError, match="missing keys") as err:
        load_strict(model, encoder_only)
    msg = str(err.value)
    assert "239 missing keys" in msg and "pretrained.cls_token" in msg
    assert "175 unexpected keys" in msg and "\n    cls_token" in msg


def test_forward_shape_and_relu() -> None:
    model = _tiny()
    with torch.no_grad():
        disp = model(torch.randn(2, 3, 70, 98))
    assert disp.shape == (2, 70, 98) and (disp >= 0).all()


def test_encode_decode_split_equals_forward() -> None:
    model = _tiny(use_clstoken=True)
    x = torch.randn(2, 3, 56, 70)
    with torch.no_grad():
        feats = model.encode(x)
        assert [(p.shape, c.shape) for p, c in feats] == [((2, 20, 32), (2, 32))] * 4
        torch.testing.assert_close(model.decode(feats, 4, 5), model(x), rtol=0, atol=0)


def test_block_hook_reaches_the_head() -> None:
    model = _tiny()
    x = torch.randn(1, 3, 42, 42)
    seen = []

    def hook(i: int, tokens: torch.Tensor) -> torch.Tensor:
        seen.append(i)
        return tokens * 1.5 if i == 1 else tokens

    with torch.no_grad():
        hooked = model.encode(x, block_hook=hook)
        plain = model.encode(x)
        # Manual loop over the encoder blocks with the same insertion gives the same taps.
        tokens = model.pretrained.prepare_tokens(x)
        manual = []
        for i, blk in enumerate(model.pretrained.blocks):
            tokens = hook(i, blk(tokens))
            manual.append(model.pretrained.norm(tokens))
    assert seen == [0, 1, 2, 3] * 2
    torch.testing.assert_close(hooked[0][0], plain[0][0])  # before the hook: unchanged
    assert not torch.allclose(hooked[1][0], plain[1][0])
    for (patches, cls), full in zip(hooked, manual, strict=True):
        torch.testing.assert_close(patches, full[:, 1:])
        torch.testing.assert_close(cls, full[:, 0])


def test_gradient_checkpointing_same_output_and_grads() -> None:
    plain = _tiny(seed=1)
    ckpt = _tiny(seed=1, grad_checkpointing=True)
    assert all(blk.grad_checkpointing for blk in ckpt.pretrained.blocks)
    x = torch.randn(1, 3, 28, 42)
    outs = []
    for model in (plain, ckpt):
        out = model(x)
        out.square().mean().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1])
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_decode_rejects_wrong_grid() -> None:
    model = _tiny()
    with torch.no_grad():
        feats = model.encode(torch.randn(1, 3, 42, 56))
        with pytest.raises(ValueError, match="expected 4x4"):
            model.decode(feats, 4, 4)


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((480, 640), (518, 686)),
        ((1080, 1920), (518, 924)),
        ((518, 518), (518, 518)),
        ((640, 480), (686, 518)),
        ((100, 2000), (518, 10360)),
    ],
)
def test_network_input_size(hw: tuple[int, int], expected: tuple[int, int]) -> None:
    # Official Resize(lower_bound, keep_aspect_ratio, ensure_multiple_of=14) results.
    assert network_input_size(*hw) == expected


def test_preprocess_image_matches_torch_pipeline() -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(30, 45, 3), dtype=np.uint8)
    x = preprocess_image(image, input_size=28)
    assert x.shape == (1, 3, 28, 42)
    ref = F.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, size=(28, 42), mode="bicubic", align_corners=False
    )
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    torch.testing.assert_close(x, (ref - mean) / std)
    flat = preprocess_image(np.full((20, 20, 3), 124, dtype=np.uint8), input_size=28)  # a flat image stays flat
    torch.testing.assert_close(flat, flat[..., :1, :1].expand_as(flat))
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(image.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        preprocess_image(image[..., 0])


def test_infer_image_returns_original_resolution() -> None:
    model = _tiny()
    image = np.random.default_rng(1).integers(0, 256, size=(33, 47, 3), dtype=np.uint8)
    disp = model.infer_image(image, input_size=42)
    assert disp.shape == (33, 47) and (disp >= 0).all()
