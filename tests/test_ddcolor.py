"""DDColor: official key layout, reference outputs, strict loading, colorizer contract hooks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from models.checkpoint_io import CheckpointMismatchError, load_strict
from models.color import grey_rgb
from models.ddcolor import (
    LEGACY_UNUSED_KEYS,
    DDColor,
    DDColorConfig,
    encoder_from_state_dict,
    grey_rgb_from_lightness,
    load_ddcolor_checkpoint,
)
from models.video_colorizer import ColorTracktentionConfig, VideoColorizer, build_image_colorizer, weights_reader
from tools.parity_ddcolor import (
    TINY,
    build_tiny_ours,
    capture,
    ddcolor_test_weights,
    lightness_input,
    lightness_ramp,
    network_input,
)

DATA = Path(__file__).parent / "data"
LAYOUT = json.loads((DATA / "ddcolor_state_dict_layout.json").read_text())["models"]
GOLDEN = json.loads((DATA / "ddcolor_tiny_golden.json").read_text())


def _shapes(module: torch.nn.Module) -> dict[str, str]:
    return {k: "x".join(map(str, v.shape)) for k, v in module.state_dict().items()}


def _meta_model(encoder: str) -> DDColor:
    with torch.device("meta"):
        return DDColor(DDColorConfig(encoder))


def _tiny(input_size: int | None = 64, seed: int = 0, **kwargs: object) -> DDColor:
    torch.manual_seed(seed)
    return DDColor(DDColorConfig("convnext-t", input_size=input_size, **{**TINY, **kwargs})).eval()


def _tiny_with_test_weights(input_size: int | None = 64) -> DDColor:
    model = build_tiny_ours(input_size).eval()
    load_strict(model, ddcolor_test_weights({k: v.shape for k, v in model.state_dict().items()}))
    return model


def _assert_matches_golden(name: str, out: torch.Tensor) -> None:
    ref = GOLDEN["outputs"][name]
    assert list(out.shape) == ref["shape"], name
    sample = out.double().flatten()[:: ref["stride"]]
    err = (sample - torch.tensor(ref["values"], dtype=torch.float64)).abs().max().item()
    assert err <= 1e-4 * ref["abs_max"], f"{name}: max error {err:.3e} vs scale {ref['abs_max']:.3e}"


@pytest.mark.parametrize("encoder", sorted(LAYOUT))
def test_state_dict_layout_matches_official(encoder: str) -> None:
    assert _shapes(_meta_model(encoder)) == LAYOUT[encoder]


def test_encoder_read_from_state_dict() -> None:
    for encoder in LAYOUT:
        assert encoder_from_state_dict(_meta_model(encoder).state_dict()) == encoder
    with pytest.raises(CheckpointMismatchError, match="unknown DDColor encoder"):
        encoder_from_state_dict(_tiny().state_dict())


def test_network_matches_reference_outputs() -> None:
    """Outputs of the official code (tools/parity_ddcolor.py --write-golden) on the same weights and input."""
    model = _tiny_with_test_weights()
    with torch.no_grad():
        ours = capture(model, model.network, network_input(tuple(GOLDEN["input_shape"])))
    assert set(ours) | {"pipeline_ab", "grey_rgb"} == set(GOLDEN["outputs"])
    for name, out in ours.items():
        _assert_matches_golden(name, out)


def test_lightness_pipeline_matches_reference() -> None:
    """forward(L): resize to input_size, grey RGB by the training-time Lab formula, network, nearest resize back."""
    assert GOLDEN["input_size"] == 64
    model = _tiny_with_test_weights(input_size=64)
    with torch.no_grad():
        _assert_matches_golden("pipeline_ab", model(lightness_input(tuple(GOLDEN["lightness_shape"]))))
    _assert_matches_golden("grey_rgb", grey_rgb_from_lightness(lightness_ramp()))


def test_grey_rgb_agrees_with_the_colour_module() -> None:
    l = torch.linspace(0, 100, 201).view(1, 1, 1, -1)
    ours = grey_rgb_from_lightness(l)
    assert ours[..., 0].abs().max() == 0 and ((ours[..., -1] - 1).abs() < 1e-4).all()
    assert (ours.diff(dim=-1) >= 0).all()
    # Same colour space, slightly different matrix constants (kornia vs DDColor's tensor_lab2rgb).
    torch.testing.assert_close(ours, grey_rgb(l) / 255.0, rtol=0, atol=2e-4)


def test_forward_shapes_and_input_checks() -> None:
    model = _tiny(input_size=64)
    with torch.no_grad():
        assert model(100 * torch.rand(2, 1, 50, 70)).shape == (2, 2, 50, 70)
        native = _tiny(input_size=None)
        assert native(100 * torch.rand(1, 1, 64, 96)).shape == (1, 2, 64, 96)
        with pytest.raises(ValueError, match="multiple of 32"):
            native(100 * torch.rand(1, 1, 50, 70))
        with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
            model(torch.rand(1, 3, 64, 64))
        with pytest.raises(ValueError, match="float"):
            model(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown DDColor encoder"):
        DDColorConfig("convnext-b")
    with pytest.raises(ValueError, match="multiple of 32"):
        DDColorConfig(input_size=100)


def test_resizes_ab_back_like_the_official_pipeline() -> None:
    model = _tiny(input_size=64)
    l = 100 * torch.rand(1, 1, 48, 80)
    with torch.no_grad():
        ab = model(l)
        native = model.network(model.preprocess(l))
    assert native.shape == (1, 2, 64, 64)
    torch.testing.assert_close(ab, torch.nn.functional.interpolate(native, size=(48, 80)), rtol=0, atol=0)


def test_stage_hooks_follow_the_colorizer_contract() -> None:
    model = _tiny(input_size=64)
    assert model.stage_channels == [8, 16, 24, 32, 64, 64, 32]
    l = 100 * torch.rand(2, 1, 64, 64)
    seen = []

    def identity(i: int, x: torch.Tensor) -> torch.Tensor:
        seen.append((i, x.shape[1], tuple(x.shape[-2:])))
        return x

    with torch.no_grad():
        plain = model(l)
        hooked = model.forward_features(l, identity)
    torch.testing.assert_close(hooked, plain, rtol=0, atol=0)
    sides = [16, 8, 4, 2, 4, 8, 16]  # encoder strides 4..32, then decoder strides 16, 8, 4 of 64 px
    assert seen == [(i, c, (s, s)) for i, (c, s) in enumerate(zip(model.stage_channels, sides))]
    for stage in range(7):
        with torch.no_grad():
            # A channel permutation: unlike a rescaling, the LayerNorms after each stage do not undo it.
            changed = model.forward_features(l, lambda i, x, stage=stage: x.flip(1) if i == stage else x)
        assert not torch.allclose(changed, plain), f"stage {stage}'s hook output does not reach ab"


def test_encoder_hook_feeds_skip_and_later_stages() -> None:
    model = _tiny(input_size=None)
    x = model.normalize(torch.rand(1, 3, 64, 64))
    arch = model.encoder.arch
    with torch.no_grad():
        plain = model.encode(x)
        hooked = model.encode(x, lambda i, f: f.flip(1) if i == 1 else f)
        stage1 = arch.stages[1](arch.downsample_layers[1](arch.stages[0](arch.downsample_layers[0](x))))
    torch.testing.assert_close(hooked[0], plain[0], rtol=0, atol=0)
    torch.testing.assert_close(hooked[1], arch.norm1(stage1.flip(1)))
    torch.testing.assert_close(hooked[2], arch.norm2(arch.stages[2](arch.downsample_layers[2](stage1.flip(1)))))
    assert not torch.allclose(hooked[2], plain[2])
    with pytest.raises(ValueError, match="changed stage 0's shape"):
        model.encode(x, lambda i, f: f[:, :1])


def test_train_mode_keeps_statistics_unless_asked() -> None:
    l = 100 * torch.rand(2, 1, 64, 64)
    frozen = _tiny(seed=1)
    with torch.no_grad():
        expected = frozen(l)
        buffers = {k: v.clone() for k, v in frozen.named_buffers()}
        frozen.train()
        assert frozen.training and frozen.encoder.arch.training
        torch.testing.assert_close(frozen(l), expected, rtol=0, atol=0)
    # Exact equality is the property here: no norm layer may write its buffers at all.
    assert all(torch.equal(v, buffers[k]) for k, v in frozen.named_buffers())

    official = _tiny(seed=1, update_norm_statistics=True).train()
    # A spectral norm whose u is far from converged, on a weight with known singular vectors
    # (W W^T = diag(4, 1)): one training-mode power iteration takes u0 = (1, 1)/sqrt(2) to
    # W W^T u0 / |W W^T u0| = (4, 1)/sqrt(17), whatever the machine's rounding.
    conv = official.refine_net[0][0]
    with torch.no_grad():
        weight = torch.zeros_like(conv.weight_orig)
        weight.view(2, -1)[0, 0], weight.view(2, -1)[1, 1] = 2.0, 1.0
        conv.weight_orig.copy_(weight)
        conv.weight_u.copy_(torch.tensor([1.0, 1.0]) / 2**0.5)
        official(l)
    torch.testing.assert_close(conv.weight_u, torch.tensor([4.0, 1.0]) / 17**0.5, rtol=0, atol=1e-6)
    # Every BatchNorm counted one training batch (it used batch statistics and updated its running ones).
    counts = {k: int(v) for k, v in official.named_buffers() if k.endswith("num_batches_tracked")}
    assert "decoder.layers.0.bn.num_batches_tracked" in counts
    assert all(count == int(buffers[k]) + 1 for k, count in counts.items())


def test_checkpoint_round_trip_official_wrapper(tmp_path: Path) -> None:
    src = _tiny(seed=2)
    state = dict(src.state_dict())
    state.update({LEGACY_UNUSED_KEYS[0]: torch.zeros(4, 32), LEGACY_UNUSED_KEYS[1]: torch.zeros(4)})
    path = tmp_path / "ddcolor_tiny.pth"
    torch.save({"params": state}, path)
    loaded = load_ddcolor_checkpoint(path, encoder="convnext-t", input_size=64, **TINY).eval()
    l = 100 * torch.rand(1, 1, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(l), src(l), rtol=0, atol=0)


def test_video_colorizer_reads_official_files(tmp_path: Path) -> None:
    src = _tiny(seed=6)
    path = tmp_path / "ddcolor_tiny.pth"
    torch.save({"params": {**src.state_dict(), LEGACY_UNUSED_KEYS[1]: torch.zeros(4)}}, path)
    video = VideoColorizer(_tiny(seed=7))
    video.load_image_weights(path, reader=weights_reader("ddcolor"))
    l = 100 * torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(video.image.eval()(l), src(l), rtol=0, atol=0)


def test_loader_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = dict(_tiny().state_dict())
    state.pop("decoder.color_decoder.query_embed.weight")
    state["decoder.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    torch.save({"params": state}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_ddcolor_checkpoint(path, encoder="convnext-t", **TINY)
    msg = str(err.value)
    assert "1 missing keys:\n    decoder.color_decoder.query_embed.weight" in msg
    assert "1 unexpected keys:\n    decoder.extra_head.weight" in msg


def test_tiny_checkpoint_into_large_model_names_shapes() -> None:
    with pytest.raises(CheckpointMismatchError) as err:
        load_strict(_meta_model("convnext-l"), _meta_model("convnext-t").state_dict())
    msg = str(err.value)
    assert "encoder.arch.stages.0.0.gamma: checkpoint (96,) vs model (192,)" in msg
    assert "missing keys" in msg and "encoder.arch.stages.2.9.gamma" in msg  # ConvNeXt-L has 27 blocks in stage 2


def test_video_colorizer_starts_as_the_image_model() -> None:
    cfg = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(DDColorConfig), {"encoder": "convnext-t", "input_size": 64, **TINY})
    )
    torch.manual_seed(3)
    image = build_image_colorizer("ddcolor", cfg)
    video = VideoColorizer(
        image, ColorTracktentionConfig(stages=[0, 1, 2], num_heads=2, inner_dim=16, track_transformer_layers=1)
    ).train()
    l = 100 * torch.rand(1, 2, 1, 48, 48)
    tracks = 47 * torch.rand(1, 2, 5, 2)
    visible = torch.ones(1, 2, 5, dtype=torch.bool)
    with torch.no_grad():
        out = video(l, tracks, visible)
        # Bit for bit: the wrapper hands the maps back in DDColor's own (channels-last) strides.
        torch.testing.assert_close(out, image.eval()(l.flatten(0, 1)).view(1, 2, 2, 48, 48), rtol=0, atol=0)


def test_fresh_model_spectral_norms_are_settled() -> None:
    model = _tiny(seed=4)
    with torch.no_grad():
        model(100 * torch.rand(1, 1, 64, 64))  # the spectral-norm pre-hooks recompute each `weight`
    convs = [m for m in model.modules() if hasattr(m, "weight_orig")]
    assert len(convs) == 8  # 3 blocks x (upsample conv + fuse conv), the last upsampler, the refine conv
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2).item()
        assert abs(sigma - 1) < 1e-3


def test_gradient_checkpointing_same_output_and_grads() -> None:
    l = 100 * torch.rand(1, 1, 64, 64)
    results = []
    for ckpt in (False, True):
        model = _tiny(seed=5, grad_checkpointing=ckpt).train()
        out = model(l)
        out.square().mean().backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        other = results[1][1][name]
        assert (grad is None) == (other is None), name
        if grad is not None:
            torch.testing.assert_close(grad, other, msg=name)
