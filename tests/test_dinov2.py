"""DINOv2: official key layout, strict loading, reference outputs, interpolation, block access."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint

import models.dinov2 as dinov2
from models.checkpoint_io import CheckpointMismatchError, load_strict
from models.dinov2 import DinoV2, imagenet_normalize, load_dinov2
from tools.parity_dinov2 import (
    TINY_CASES,
    build_tiny_ours,
    deterministic_input,
    deterministic_weights,
    reference_outputs,
)

DATA = Path(__file__).parent / "data"
LAYOUT = json.loads((DATA / "dinov2_state_dict_layout.json").read_text())["models"]
GOLDEN = json.loads((DATA / "dinov2_tiny_golden.json").read_text())
TINY = {"embed_dim": 32, "depth": 4, "num_heads": 2, "img_size": 84}  # 6x6 position grid


def _shapes(module: torch.nn.Module) -> dict[str, str]:
    return {k: "x".join(map(str, v.shape)) for k, v in module.state_dict().items()}


def _meta_model(variant: str) -> DinoV2:
    with torch.device("meta"):  # full-size layout without allocating or initialising weights
        return DinoV2(variant.removesuffix("_reg"), num_register_tokens=4 if variant.endswith("_reg") else 0)


@pytest.mark.parametrize("variant", sorted(LAYOUT))
def test_state_dict_layout_matches_official(variant: str) -> None:
    assert _shapes(_meta_model(variant)) == LAYOUT[variant]


def test_vits14_full_size_builds_on_cpu() -> None:
    model = DinoV2("vits14")
    assert _shapes(model) == LAYOUT["vits14"]
    assert sum(p.numel() for p in model.parameters()) == 22_056_576  # ViT-S/14 incl. mask_token
    assert torch.equal(model.blocks[3].ls1.gamma, torch.ones(384))  # official LayerScale init 1.0


def test_hub_interpolation_defaults() -> None:
    plain, reg = _meta_model("vitb14"), _meta_model("vitb14_reg")
    assert (plain.interpolate_offset, plain.interpolate_antialias) == (0.1, False)
    assert (reg.interpolate_offset, reg.interpolate_antialias) == (0.0, True)


@pytest.mark.parametrize("case", sorted(GOLDEN["cases"]))
def test_matches_reference_outputs(case: str) -> None:
    """Outputs of the official code (tools/parity_dinov2.py --write-golden) on the same weights and input."""
    model = build_tiny_ours(TINY_CASES[case]).eval()
    load_strict(model, deterministic_weights({k: v.shape for k, v in model.state_dict().items()}))
    with torch.no_grad():
        ours = reference_outputs(
            model, deterministic_input(tuple(GOLDEN["input_shape"])), TINY_CASES[case]["num_register_tokens"] > 0
        )
    expected = GOLDEN["cases"][case]["outputs"]
    assert set(ours) == set(expected)
    for name, ref in expected.items():
        out = ours[name]
        assert list(out.shape) == ref["shape"], name
        sample = out.double().flatten()[:: ref["stride"]]
        err = (sample - torch.tensor(ref["values"], dtype=torch.float64)).abs().max().item()
        assert err <= 1e-4 * ref["abs_max"], f"{case}/{name}: max error {err:.3e} vs scale {ref['abs_max']:.3e}"
        assert out.abs().max().item() == pytest.approx(ref["abs_max"], rel=1e-4), name


def test_strict_round_trip_through_file(tmp_path: Path) -> None:
    src = DinoV2("vits14", num_register_tokens=4, **TINY)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(src.state_dict(), path)
    loaded = load_dinov2(path, **TINY)  # arch and registers come from the file name
    assert loaded.num_register_tokens == 4
    for key, value in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_register_checkpoint_into_plain_model_names_keys() -> None:
    with pytest.raises(CheckpointMismatchError, match="unexpected keys") as err:
        load_strict(_meta_model("vits14"), _meta_model("vits14_reg").state_dict())
    assert "register_tokens" in str(err.value)


def test_vitb_checkpoint_into_vits_names_shapes() -> None:
    with pytest.raises(CheckpointMismatchError) as err:
        load_strict(_meta_model("vits14"), _meta_model("vitb14").state_dict())
    msg = str(err.value)
    assert "pos_embed: checkpoint (1, 1370, 768) vs model (1, 1370, 384)" in msg
    assert "blocks.0.attn.qkv.weight" in msg


def test_vitl_checkpoint_into_vitb_names_missing_blocks() -> None:
    with pytest.raises(CheckpointMismatchError) as err:
        load_strict(_meta_model("vitl14"), _meta_model("vitb14").state_dict())
    assert "168 missing keys" in str(err.value) and "blocks.12.norm1.weight" in str(err.value)  # 12 blocks x 14 keys


def test_pos_embed_native_grid_is_stored_tensor() -> None:
    model = DinoV2("vits14", **TINY)
    assert model.interpolate_pos_encoding(6, 6, torch.float32) is model.pos_embed


@pytest.mark.parametrize("registers", [0, 4])
def test_pos_embed_interpolation(registers: int) -> None:
    model = DinoV2("vits14", num_register_tokens=registers, **TINY)
    pos = model.interpolate_pos_encoding(4, 9, torch.bfloat16)
    assert pos.shape == (1, 1 + 4 * 9, 32) and pos.dtype == torch.bfloat16
    assert torch.equal(pos[:, 0], model.pos_embed[:, 0].to(torch.bfloat16))  # CLS embedding untouched
    grid = model.pos_embed[:, 1:].reshape(1, 6, 6, 32).permute(0, 3, 1, 2)
    if registers:  # hub _reg models: explicit size, antialiased
        expected = F.interpolate(grid, size=(4, 9), mode="bicubic", antialias=True)
    else:  # offset 0.1 enters through the scale factor, which moves the sampling positions
        expected = F.interpolate(grid, scale_factor=(4.1 / 6, 9.1 / 6), mode="bicubic", antialias=False)
    torch.testing.assert_close(pos[:, 1:].float(), expected.permute(0, 2, 3, 1).reshape(1, 36, 32), rtol=0, atol=1e-2)


def test_get_intermediate_layers_shapes_and_semantics() -> None:
    model = DinoV2("vits14", num_register_tokens=4, **TINY).eval()
    x = torch.randn(2, 3, 42, 56)  # 3x4 patches
    last2 = model.get_intermediate_layers(x, n=2)
    assert len(last2) == 2 and all(t.shape == (2, 12, 32) for t in last2)
    picked = model.get_intermediate_layers(x, n=[2, 3], reshape=True, return_class_token=True)
    assert [(p.shape, c.shape) for p, c in picked] == [((2, 32, 3, 4), (2, 32))] * 2
    torch.testing.assert_close(picked[1][0].flatten(2).transpose(1, 2), last2[1])  # reshape is row-major over the grid
    ff = model.forward_features(x)
    torch.testing.assert_close(last2[1], ff["x_norm_patchtokens"])
    torch.testing.assert_close(picked[1][1], ff["x_norm_clstoken"])
    raw = model.get_intermediate_layers(x, n=1, norm=False)[0]
    torch.testing.assert_close(raw, ff["x_prenorm"][:, 5:])  # registers dropped
    assert ff["x_norm_regtokens"].shape == (2, 4, 32)
    for bad in ([4], [1, 1], 5):
        with pytest.raises(ValueError, match="distinct and in range"):
            model.get_intermediate_layers(x, n=bad)


def test_block_by_block_equals_forward_features() -> None:
    model = DinoV2("vits14", num_register_tokens=4, **TINY).eval()
    img = torch.randn(2, 3, 56, 42)
    x = model.prepare_tokens(img)
    assert x.shape == (2, 1 + 4 + 12, 32)
    for blk in model.blocks:
        x = blk(x)
    ff = model.forward_features(img)
    torch.testing.assert_close(
        model.norm(x), torch.cat([ff["x_norm_clstoken"][:, None], ff["x_norm_regtokens"], ff["x_norm_patchtokens"]], 1)
    )


def test_block_hook_matches_manual_insertion() -> None:
    model = DinoV2("vits14", **TINY).eval()
    img = torch.randn(1, 3, 42, 42)
    shift = torch.randn(32)

    def hook(i: int, tokens: torch.Tensor) -> torch.Tensor:  # an "adapter" on patch tokens after block 1
        return torch.cat([tokens[:, :1], tokens[:, 1:] + shift], 1) if i == 1 else tokens

    x = model.prepare_tokens(img)
    for i, blk in enumerate(model.blocks):
        x = hook(i, blk(x))
    hooked = model.get_intermediate_layers(img, n=1, block_hook=hook)[0]
    torch.testing.assert_close(hooked, model.norm(x)[:, 1:])
    assert not torch.allclose(hooked, model.get_intermediate_layers(img, n=1)[0])


def test_masks_replace_patch_embeddings() -> None:
    model = DinoV2("vits14", **TINY)
    img = torch.randn(1, 3, 28, 28)
    masks = torch.tensor([[True, False, False, True]])
    tokens = model.prepare_tokens(img, masks)
    pos = model.interpolate_pos_encoding(2, 2, torch.float32)
    torch.testing.assert_close(tokens[0, 1], model.mask_token[0] + pos[0, 1])
    assert not torch.allclose(tokens[0, 2], model.mask_token[0] + pos[0, 2])


def test_gradient_checkpointing_same_output_and_grads(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    plain = DinoV2("vits14", **TINY)
    ckpt = DinoV2("vits14", **TINY, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    img = torch.randn(2, 3, 42, 28)
    outs = []
    for model in (plain, ckpt):
        out = model.get_intermediate_layers(img, n=2, return_class_token=True)
        sum((p.square().sum() + c.sum()) for p, c in out).backward()
        outs.append(out)
    assert len(calls) == len(ckpt.blocks)  # checkpointing really ran, once per block
    for (p0, c0), (p1, c1) in zip(*outs, strict=True):
        torch.testing.assert_close(p0, p1)
        torch.testing.assert_close(c0, c1)
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        if a.grad is None:
            assert b.grad is None, name
        else:
            torch.testing.assert_close(a.grad, b.grad, msg=name)
    with torch.no_grad():  # no recomputation needed without autograd
        ckpt.forward_features(img)
    assert len(calls) == len(ckpt.blocks)


def test_attention_block_matches_explicit_formula() -> None:
    torch.manual_seed(0)
    blk = dinov2.Block(16, num_heads=2, ffn="mlp", layerscale_init=0.5)
    x = torch.randn(2, 5, 16)
    h = blk.norm1(x)
    q, k, v = blk.attn.qkv(h).reshape(2, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    att = ((q @ k.transpose(-1, -2)) / 8**0.5).softmax(-1) @ v
    y = x + 0.5 * blk.attn.proj(att.transpose(1, 2).reshape(2, 5, 16))
    hid = blk.norm2(y)
    y = y + 0.5 * blk.mlp.fc2(F.gelu(blk.mlp.fc1(hid)))
    torch.testing.assert_close(blk(x), y)


def test_swiglu_hidden_width_matches_giant() -> None:
    with torch.device("meta"):
        ffn = dinov2.SwiGLUFFN(1536, 4 * 1536)
    assert ffn.w12.weight.shape == (8192, 1536) and ffn.w3.weight.shape == (1536, 4096)


def test_imagenet_normalize() -> None:
    video = torch.empty(1, 2, 3, 4, 5)
    video[:, :, 0], video[:, :, 1], video[:, :, 2] = 0.485 * 255, 0.456 * 255, 0.406 * 255
    out = imagenet_normalize(video)
    assert out.shape == video.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.zeros_like(out), atol=1e-6, rtol=0)
    white = imagenet_normalize(torch.full((3, 1, 1), 255, dtype=torch.uint8))
    torch.testing.assert_close(
        white.flatten(), torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    )
    with pytest.raises(ValueError, match="channels at dim -3"):
        imagenet_normalize(torch.zeros(2, 4, 4, 3))


def test_bad_inputs_raise() -> None:
    model = DinoV2("vits14", **TINY)
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        model.forward_features(torch.zeros(1, 3, 30, 28))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.prepare_tokens(torch.zeros(3, 28, 28))
    with pytest.raises(ValueError, match="unknown DINOv2 arch"):
        DinoV2("vits16")
    with pytest.raises(ValueError, match="cannot infer"):
        load_dinov2("/nonexistent/weights.pth")
