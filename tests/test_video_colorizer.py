"""Video colorizer: the colorizer contract, identity at zero init (ConvNet and DDColor), weight loading."""

import pytest
import torch

from models.checkpoint_io import CheckpointMismatchError
from models.colorizer import ConvColorizer, ConvColorizerConfig
from models.video_colorizer import ColorTracktentionConfig, VideoColorizer, build_image_colorizer, colorizer_classes

TINY = ConvColorizerConfig(widths=[8, 16, 16], depths=[1, 0, 1], groups=4)


def randomise_head(colorizer: torch.nn.Module, seed: int = 0) -> None:
    """The ConvNet's head starts at zero (grey output); give it weights so outputs differ per pixel."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        colorizer.head.weight.copy_(torch.randn(colorizer.head.weight.shape, generator=g) * 0.1)


def clip_inputs(B=2, T=3, H=16, W=20, M=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    l = torch.rand(B, T, 1, H, W, generator=g) * 100
    tracks = torch.rand(B, T, M, 2, generator=g) * torch.tensor([W - 1.0, H - 1.0])
    visible = torch.rand(B, T, M, generator=g) > 0.3
    return l, tracks, visible


def tracktention(stages, **kw) -> ColorTracktentionConfig:
    return ColorTracktentionConfig(stages=stages, num_heads=2, inner_dim=16, **kw)


def test_conv_colorizer_calls_the_hook_after_every_stage_in_order():
    torch.manual_seed(0)
    net = ConvColorizer(TINY)
    randomise_head(net)
    assert net.stage_channels == [8, 16, 16, 16, 8]
    l = torch.rand(2, 1, 16, 20) * 100
    seen = []

    def record(stage, f):
        seen.append((stage, f.shape[1], tuple(f.shape[-2:])))
        return f

    out = net.forward_features(l, record)
    assert [s for s, _, _ in seen] == [0, 1, 2, 3, 4]
    assert [c for _, c, _ in seen] == net.stage_channels
    assert [hw for _, _, hw in seen] == [(16, 20), (8, 10), (4, 5), (8, 10), (16, 20)]
    assert out.shape == (2, 2, 16, 20) and torch.equal(out, net(l))
    # What the hook returns is what the network continues with.
    changed = net.forward_features(l, lambda s, f: f + 1.0 if s == 2 else f)
    assert not torch.allclose(changed, out)


def test_untrained_conv_colorizer_predicts_grey():
    out = ConvColorizer(TINY)(torch.rand(1, 1, 8, 8) * 100)
    assert torch.equal(out, torch.zeros_like(out))


def test_video_colorizer_equals_the_image_colorizer_at_init_exactly():
    torch.manual_seed(0)
    model = VideoColorizer(ConvColorizer(TINY), tracktention([0, 2, 3]))
    randomise_head(model.image)
    l, tracks, visible = clip_inputs()
    video = model(l, tracks, visible)
    assert video.shape == (2, 3, 2, 16, 20)
    # Bit for bit against the image colorizer on the same (B*T) batch of frames ...
    assert torch.equal(video, model.image(l.flatten(0, 1)).view(video.shape))
    assert torch.equal(video, model.forward_image(l))
    # ... and to float rounding against one frame at a time (kernels may sum in another order).
    per_frame = torch.stack([model.image(l[:, t]) for t in range(l.shape[1])], dim=1)
    torch.testing.assert_close(video, per_frame, rtol=1e-5, atol=1e-4)
    # Once the output projections move, the layers act and depend on the tracks.
    with torch.no_grad():
        for layer in model.tracktention.layers.values():
            layer.out_proj.weight.normal_(0, 0.5)
    moved = model(l, tracks, visible)
    assert not torch.allclose(moved, per_frame)
    assert not torch.allclose(moved, model(l, tracks.flip(1), visible.flip(1)))


def test_ddcolor_backbone_through_the_registry_is_also_the_identity_at_init():
    cls, cfg_cls = colorizer_classes("ddcolor")
    cfg = cfg_cls(encoder="convnext-t", depths=[1, 1, 1, 1], dims=[8, 16, 16, 16], nf=16, num_queries=4,
                  hidden_dim=16, num_heads=2, dim_feedforward=16, dec_layers=1, input_size=None)
    torch.manual_seed(0)
    image = build_image_colorizer("ddcolor", cfg)
    assert isinstance(image, cls)
    model = VideoColorizer(image, tracktention([1, 4])).eval()
    l, tracks, visible = clip_inputs(B=1, T=2, H=32, W=32, M=6)
    with torch.no_grad():
        video = model(l, tracks, visible)
        frames = image(l.flatten(0, 1)).view(video.shape)
    assert torch.equal(video, frames)


def test_weights_load_from_a_family_checkpoint_and_stray_keys_are_refused(tmp_path):
    torch.manual_seed(0)
    source = VideoColorizer(ConvColorizer(TINY), tracktention([2]))
    randomise_head(source.image, seed=1)
    state = {f"model.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "stage.ckpt")
    target = VideoColorizer(ConvColorizer(TINY), tracktention([2]))
    target.load_image_weights(tmp_path / "stage.ckpt")
    for k, v in source.image.state_dict().items():
        assert torch.equal(target.image.state_dict()[k], v)
    torch.save({"state_dict": {**state, "model.extra.weight": torch.zeros(1)}}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointMismatchError, match="model.extra.weight"):
        target.load_image_weights(tmp_path / "bad.ckpt")
    torch.save({k: v for k, v in source.image.state_dict().items() if k != "head.bias"}, tmp_path / "own.pth")
    with pytest.raises(CheckpointMismatchError, match="head.bias"):
        target.load_image_weights(tmp_path / "own.pth")


def test_bad_configuration_and_inputs_are_explained():
    with pytest.raises(ValueError, match="out of range"):
        VideoColorizer(ConvColorizer(TINY), tracktention([5]))
    with pytest.raises(ValueError, match="must list colorizer stages"):
        VideoColorizer(ConvColorizer(TINY), ColorTracktentionConfig())
    with pytest.raises(ValueError, match="unknown colorizer arch"):
        colorizer_classes("resnet")
    with pytest.raises(TypeError, match="ConvColorizerConfig"):
        build_image_colorizer("convnet", {"widths": [8]})
    model = VideoColorizer(ConvColorizer(TINY), tracktention([1]))
    l, tracks, visible = clip_inputs()
    with pytest.raises(ValueError, match="pass tracks"):
        model(l)
    with pytest.raises(ValueError, match=r"\(B, T, 1, H, W\)"):
        model(l[:, :, 0], tracks, visible)
