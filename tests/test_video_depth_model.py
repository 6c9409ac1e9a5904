"""VideoDepthAnything: identity at zero init, Tracktention really in the loop, weights, resizing."""

import pytest
import torch

from models.checkpoint_io import CheckpointMismatchError
from models.depth_anything_v2 import DepthAnythingV2
from models.dinov2 import imagenet_normalize
from models.video_depth import TracktentionConfig, VideoDepthAnything, VideoDepthConfig, resize_points

TINY = dict(encoder="vits", embed_dim=32, depth=4, num_heads=2, features=16, out_channels=[8, 16, 32, 32],
            img_size=56, layer_idx=[0, 1, 2, 3])


def tiny_config(**tracktention) -> VideoDepthConfig:
    return VideoDepthConfig(**TINY, head_bias_init=1.0, tracktention=TracktentionConfig(inner_dim=32, num_heads=2, **tracktention))


def clip(B=2, T=3, H=56, W=42, M=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(B, T, 3, H, W, generator=g) * 255
    tracks = torch.rand(B, T, M, 2, generator=g) * torch.tensor([W - 1, H - 1])
    visible = torch.rand(B, T, M, generator=g) > 0.3
    return video, tracks, visible


def test_whole_video_model_equals_the_image_model_at_init():
    torch.manual_seed(0)
    model = VideoDepthAnything(tiny_config()).eval()
    assert model.tracktention.block_indices == [0, 1, 2, 3]  # default: the DPT tap blocks
    video, tracks, visible = clip()
    with torch.no_grad():
        out = model(video, tracks, visible)
        # The image model on its own, frame by frame, exactly as DepthAnythingV2.forward computes it.
        reference = model.image(imagenet_normalize(video).flatten(0, 1)).view(2, 3, 1, 56, 42)
    assert out.shape == (2, 3, 1, 56, 42)
    assert out.std() > 0  # a live output (the bias init keeps the final ReLU from being dead)
    assert torch.equal(out, reference)
    assert torch.equal(out, model.forward_image(video))


def test_tracktention_changes_the_output_once_trained_and_prefix_tokens_pass_through():
    torch.manual_seed(0)
    model = VideoDepthAnything(tiny_config()).eval()
    video, tracks, visible = clip()
    base = model(video, tracks, visible).detach()
    seen = {}

    def record(module, args, output):
        seen["cls_in"], seen["cls_out"] = args[0][:, 0].clone(), output[:, 0].clone()

    with torch.no_grad():
        for layer in model.tracktention.layers.values():
            torch.nn.init.normal_(layer.out_proj.weight, std=0.5)
        handle = model.tracktention.layers["1"].register_forward_hook(record)
        out = model(video, tracks, visible)
        handle.remove()
    assert not torch.allclose(out, base)
    assert torch.equal(seen["cls_in"], seen["cls_out"])
    # Frames mix only through tracks: other tracks give another result.
    _, other_tracks, _ = clip(seed=1)
    with torch.no_grad():
        moved = model(video, other_tracks, visible)
    assert not torch.allclose(moved, out)


def test_configured_blocks_and_disabled_tracktention():
    model = VideoDepthAnything(tiny_config(blocks=[2]))
    assert model.tracktention.block_indices == [2]
    image_only = VideoDepthAnything(VideoDepthConfig(**TINY,
                                                     tracktention=TracktentionConfig(enabled=False)))
    assert image_only.tracktention is None
    video, _, _ = clip()
    assert image_only(video).shape == (2, 3, 1, 56, 42)
    with pytest.raises(ValueError, match="out of range"):
        VideoDepthAnything(tiny_config(blocks=[4]))
    with pytest.raises(ValueError, match="pass tracks"):
        model(video)


def test_input_size_resizes_frames_and_tracks():
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.input_size = 28
    model = VideoDepthAnything(cfg).eval()
    video, tracks, visible = clip(H=40, W=40)
    with torch.no_grad():
        out = model(video, tracks, visible)
    assert out.shape == (2, 3, 1, 40, 40)
    # Pixel centres map between resolutions: pixel 0 of 40 -> (0 + 0.5) * 0.7 - 0.5 = -0.15, pixel 39 -> 27.15.
    assert torch.allclose(resize_points(torch.tensor([0.0, 39.0]).view(1, 2).expand(2, 2), (40, 40), (28, 28)),
                          torch.tensor([[-0.15, 27.15], [-0.15, 27.15]]), atol=1e-6)
    with pytest.raises(ValueError, match="multiples of 14"):
        VideoDepthAnything(tiny_config())(video, tracks, visible)


def test_load_image_weights_from_official_layout_and_stage1_checkpoint(tmp_path):
    torch.manual_seed(0)
    image = DepthAnythingV2(**TINY)
    official = tmp_path / "official.pth"
    torch.save(image.state_dict(), official)
    model = VideoDepthAnything(tiny_config())
    model.load_image_weights(official)
    assert all(torch.equal(a, b) for a, b in zip(model.image.state_dict().values(), image.state_dict().values()))
    # A Lightning checkpoint of a stage-1 run (keys model.image.*) also loads.
    stage1 = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": {f"model.image.{k}": v + 1 for k, v in image.state_dict().items()}}, stage1)
    model.load_image_weights(stage1)
    key = "pretrained.cls_token"
    assert torch.equal(model.image.state_dict()[key], image.state_dict()[key] + 1)
    broken = tmp_path / "broken.ckpt"
    torch.save({"state_dict": {"model.image.pretrained.cls_token": image.pretrained.cls_token}}, broken)
    with pytest.raises(CheckpointMismatchError, match="missing"):
        model.load_image_weights(broken)


def test_checkpoint_of_the_dense_attention_loads_and_gives_the_same_outputs_windowed(tmp_path):
    """Both Tracktention attention implementations compute one function with the same weights: a
    model saved with the dense path (before the windowed one existed) loads strictly into the
    default (windowed) model, and a config without the key gets the default."""
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    dense = VideoDepthAnything(tiny_config(attention="dense")).eval()
    with torch.no_grad():
        for layer in dense.tracktention.layers.values():
            layer.out_proj.weight.normal_(0, 0.5)
            layer.out_proj.bias.normal_(0, 0.5)
    torch.save(dense.state_dict(), tmp_path / "dense.pth")
    old_config = OmegaConf.to_container(OmegaConf.structured(tiny_config(attention="dense")))
    del old_config["tracktention"]["attention"]  # a config written before the key existed
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(VideoDepthConfig), old_config))
    assert config.tracktention.attention == "windowed"
    windowed = VideoDepthAnything(config).eval()
    windowed.load_state_dict(torch.load(tmp_path / "dense.pth", weights_only=True), strict=True)
    video, tracks, visible = clip(H=56, W=56, M=40)
    tracks[:, :, :5] = torch.tensor([[-30.0, 10.0], [0.0, 0.0], [55.0, 55.0], [70.0, 20.0], [27.5, 27.5]])
    with torch.no_grad():
        image = dense.forward_image(video)
        a, b = dense(video, tracks, visible) - image, windowed(video, tracks, visible) - image
    assert a.abs().max() > 1e-3  # the layers are live
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
