"""TAPTRv2 model: official key layout, reference outputs, APU, window post-processing, loaders.

tests/data/taptrv2_state_dict_layout.json and taptrv2_tiny_golden.json were written by
``python tools/parity_taptrv2.py --reference-repo <TAPTR checkout, branch v2> --write-layout ... --write-golden ...``
(IDEA-Research/TAPTR a57063403581): the official model's keys and shapes, and the official
code's outputs for a tiny model with portable pseudo-random weights on a formula clip, float64.
"""

import argparse
import json
from pathlib import Path

import pytest
import torch

from models.checkpoint_io import CheckpointMismatchError
from models.resnet import ResNet
from models.taptrv2 import (
    TaptrV2,
    TaptrV2Config,
    load_resnet50_imagenet,
    load_taptrv2_checkpoint,
    window_ranges,
    write_window,
)
from models.taptrv2_layers import DecoderLayer, inverse_sigmoid
from tools.parity_taptrv2 import TINY, golden_inputs, random_state_dict

DATA = Path(__file__).parent / "data"
BN_BUFFERS = ("weight", "bias", "running_mean", "running_var")


def tiny_model(**overrides) -> TaptrV2:
    torch.manual_seed(0)
    return TaptrV2(TaptrV2Config(**{**TINY, **overrides}))


def test_state_dict_matches_official_layout():
    layout = json.loads((DATA / "taptrv2_state_dict_layout.json").read_text())["keys"]
    model = TaptrV2()  # built for real: the meta device's first use costs more here than initialising 40M weights
    ours = {k: "x".join(map(str, v.shape)) for k, v in model.state_dict().items()}
    assert ours == layout
    # the decoder's heads are the model's heads (shared modules, as in the checkpoint)
    assert model.transformer.decoder.bbox_embed is model.bbox_embed


def test_resnet_keys_follow_imagenet_resnet50_layout():
    expected = {"conv1.weight"} | {f"bn1.{b}" for b in BN_BUFFERS}
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}."
            expected |= {prefix + f"conv{i}.weight" for i in (1, 2, 3)}
            expected |= {prefix + f"bn{i}.{b}" for i in (1, 2, 3) for b in BN_BUFFERS}
            if block == 0:
                expected |= {prefix + "downsample.0.weight"}
                expected |= {prefix + f"downsample.1.{b}" for b in BN_BUFFERS}
    net = ResNet()
    assert set(net.state_dict()) == expected
    assert net.layer4[0].conv2.weight.shape == (512, 512, 3, 3)
    # "v1.5": the stride sits on the 3x3 conv of a downsampling block
    assert net.layer2[0].conv2.stride == (2, 2) and net.layer2[0].conv1.stride == (1, 1)
    assert net.num_channels == [256, 512, 1024, 2048]


def test_load_resnet50_imagenet_ignores_fc_and_batch_counters(tmp_path):
    model = tiny_model()
    body = model.backbone[0].body
    state = {k: torch.randn_like(v) for k, v in body.state_dict().items()}
    state |= {k.replace("running_var", "num_batches_tracked"): torch.tensor(7) for k in state if "running_var" in k}
    state |= {"fc.weight": torch.zeros(1000, 256), "fc.bias": torch.zeros(1000)}
    torch.save(state, tmp_path / "resnet.pth")
    load_resnet50_imagenet(model, tmp_path / "resnet.pth")
    assert torch.equal(body.layer3[0].conv2.weight, state["layer3.0.conv2.weight"])
    del state["layer1.0.bn2.running_mean"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointMismatchError, match="layer1.0.bn2.running_mean"):
        load_resnet50_imagenet(model, tmp_path / "broken.pth")


def test_load_official_checkpoint_prefers_ema_and_reads_training_files(tmp_path):
    source, target = tiny_model(), tiny_model()
    weights = random_state_dict({k: v.shape for k, v in source.state_dict().items()})
    ema = {"module." + k: v.float() * 2 for k, v in weights.items()}
    # official training checkpoints also pickle the argparse namespace of the run
    model = {k: v.float() for k, v in weights.items()}
    torch.save({"model": model, "ema_model": ema, "args": argparse.Namespace(lr=2e-4)}, tmp_path / "taptrv2.pth")
    load_taptrv2_checkpoint(target, tmp_path / "taptrv2.pth")
    assert torch.equal(target.transformer.level_embed, ema["module.transformer.level_embed"])
    load_taptrv2_checkpoint(target, tmp_path / "taptrv2.pth", prefer_ema=False)
    assert torch.equal(target.transformer.level_embed, weights["transformer.level_embed"].float())
    torch.save({"model": {k: v for k, v in weights.items() if "query_updater" not in k}}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointMismatchError, match="transformer.decoder.query_updater.0.weight"):
        load_taptrv2_checkpoint(target, tmp_path / "partial.pth")


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_matches_reference_outputs(mode):
    golden = json.loads((DATA / "taptrv2_tiny_golden.json").read_text())
    assert golden["config"] == {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    model = tiny_model().double()
    model.load_state_dict(random_state_dict({k: v.shape for k, v in model.state_dict().items()}))
    video, queries = golden_inputs()
    assert queries[0].tolist() == golden["clip"]["queries"]
    model.train(mode == "train")
    model.window_update_dropout.p = 0.0  # the golden training outputs were taken with it off
    with torch.no_grad():
        out = model(video, queries)
    names = ["tracks", "vis_logits"] if mode == "eval" else ["layer_tracks", "layer_apu_tracks", "layer_vis_logits"]
    for name in names:
        expected = torch.tensor(golden["outputs"][name], dtype=torch.float64)
        ours = getattr(out, name)
        assert ours.shape == expected.shape, name
        # the reference keeps its visibility state in float32 (one_hot(...).float() written in place)
        tolerance = 1e-6 if "vis" in name else 1e-9
        assert (ours - expected).abs().max() <= tolerance * expected.abs().max(), name


def test_window_ranges_and_last_window_shift():
    assert window_ranges(8, 8, 4) == [(0, 7)]
    assert window_ranges(12, 8, 4) == [(0, 7), (4, 11)]
    assert window_ranges(14, 8, 4) == [(0, 7), (4, 11), (6, 13)]
    assert window_ranges(24, 8, 4) == [(0, 7), (4, 11), (8, 15), (12, 19), (16, 23)]
    with pytest.raises(ValueError, match="at least window_len=8 frames"):
        window_ranges(7, 8, 4)


def test_write_window_copies_last_frame_state_to_future_frames():
    state = torch.arange(10.0).view(1, 10, 1)
    window = torch.tensor([[[40.0], [50.0], [60.0]]])
    padded = write_window(state, 4, 6, window, pad_future=True)
    assert padded.flatten().tolist() == [0, 1, 2, 3, 40, 50, 60, 60, 60, 60]
    kept = write_window(state, 4, 6, window, pad_future=False)
    assert kept.flatten().tolist() == [0, 1, 2, 3, 40, 50, 60, 7, 8, 9]


def test_frames_up_to_the_query_keep_the_query_state():
    model = tiny_model().eval()
    with torch.no_grad():  # a non-zero box head, so that tracked frames do move
        model.load_state_dict(random_state_dict({k: v.shape for k, v in model.state_dict().items()}))
    video = torch.rand(1, 12, 3, 64, 64) * 255
    queries = torch.tensor([[[0.0, 20.0, 30.0], [5.0, 40.0, 10.0], [11.0, 7.0, 50.0]]])
    with torch.no_grad():
        out = model(video, queries)
    size = torch.tensor([63.0, 63.0])
    for n, (t, x, y) in enumerate(queries[0].tolist()):
        t = int(t)
        query_xy = inverse_sigmoid(torch.tensor([x, y]) / size).sigmoid() * size
        assert torch.allclose(out.layer_tracks[:, 0, :t + 1, n], query_xy.expand(2, t + 1, 2), atol=1e-4)
        assert torch.equal(out.vis_logits[0, :t + 1, n], torch.tensor([0.0, 1.0, 0.0]).expand(t + 1, 3))
        assert out.visible[0, t, n]
        if t < 11:
            assert (out.tracks[0, t + 1:, n] - query_xy).abs().max() > 1e-3  # tracked frames were updated


def test_apu_weights_sum_to_one_and_step_toward_planted_peak():
    c, samples = 8, 4  # 1 head, 1 level, 4 points
    layer = DecoderLayer(d_model=c, d_ffn=16, n_levels=1, n_heads=1, n_points=4, pe_temperature=10.0).double()
    with torch.no_grad():
        # disentangler = identity: normaliser (relu(x), relu(-x)), regressor relu(x) - relu(-x)
        first, second = layer.caupdate_weight_normalizer[0], layer.caupdate_weight_normalizer[2]
        first.weight.copy_(torch.cat([torch.eye(samples), -torch.eye(samples)]).double())
        second.weight.copy_(torch.eye(c).double())
        regressor = layer.caupdate_weight_regressor[0]
        regressor.weight.copy_(torch.cat([torch.eye(samples), -torch.eye(samples)], 1).double())
        for linear in (first, second, regressor):
            linear.bias.zero_()
    shapes = [(10, 10)]
    offsets = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0]], dtype=torch.float64)
    offsets = offsets.view(1, 1, 1, 1, 4, 2)  # +x, -x, +y, -y, 3 pixels

    # equal offsets: the step is that offset whatever the logits -> the weights sum to one
    same = torch.tensor([2.0, -1.0], dtype=torch.float64).expand(1, 1, 1, 1, 4, 2)
    step = layer.position_update(torch.randn(1, 1, samples, dtype=torch.float64), same, shapes)
    assert torch.allclose(step, torch.tensor([[[0.2, -0.1]]], dtype=torch.float64))

    # keys that make the +y sample's logit dominate: the step points to it
    logits = torch.tensor([[[0.0, 0.0, 12.0, 0.0]]], dtype=torch.float64)
    step = layer.position_update(logits, offsets, shapes)
    assert torch.allclose(step, torch.tensor([[[0.0, 0.3]]], dtype=torch.float64), atol=1e-4)

    # end to end in the cross-attention: a feature peak under one sampling point pulls the position there
    attn = layer.cross_attn
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.copy_(offsets.flatten())
        for proj in (attn.key_proj, attn.query_proj, attn.value_proj):
            proj.weight.copy_(torch.eye(c, dtype=torch.float64))
            proj.bias.zero_()
    memory = torch.zeros(1, 100, c, dtype=torch.float64)
    peak = (5 + 3) + 10 * 5  # the pixel under the +x sample of a query at the centre (x = y = 0.5)
    memory[0, peak, 0] = 80.0
    query = torch.zeros(1, 1, c, dtype=torch.float64)
    query[0, 0, 0] = 2.0
    _, raw_logits, raw_offsets = attn(query, torch.full((1, 1, 1, 2), 0.5, dtype=torch.float64), memory, shapes)
    assert raw_logits.argmax().item() == 0
    step = layer.position_update(raw_logits, raw_offsets, shapes)
    assert step[0, 0, 0] > 0.29 and step[0, 0, 1].abs() < 1e-6


def test_decoder_layer_keeps_frames_without_update():
    torch.manual_seed(0)
    layer = DecoderLayer(d_model=8, d_ffn=16, n_levels=2, n_heads=2, n_points=2, pe_temperature=10.0)
    shapes = [(4, 4), (2, 2)]
    window, points = 4, 3
    reference = torch.rand(window, points, 4) * 0.6 + 0.2
    mask = torch.ones(window, points, 1)
    mask[0] = 0  # e.g. the query frame
    no_block_t = torch.zeros(points * 2, window, window, dtype=torch.bool)
    no_block_s = torch.zeros(window * 2, points, points, dtype=torch.bool)
    _, moved, delta = layer(torch.randn(window, points, 8), torch.randn(window, points, 8), reference, mask,
                            torch.randn(window, 20, 8), shapes, no_block_t, no_block_s, window)
    assert torch.equal(moved[0], reference[0]) and torch.equal(delta[0], torch.zeros(points, 2))
    assert (moved[1:, :, :2] - reference[1:, :, :2]).abs().max() > 0
    assert torch.allclose(moved[1:, :, :2] - reference[1:, :, :2], delta[1:])
    assert torch.equal(moved[..., 2:], reference[..., 2:])  # the APU moves (x, y) only


def test_shapes_gradients_and_non_square_input():
    model = tiny_model(model_resolution=(64, 96))
    video = torch.rand(2, 9, 3, 40, 60) * 255
    queries = torch.tensor([[[0.0, 10.0, 20.0], [4.0, 59.0, 0.0]], [[8.0, 30.0, 39.0], [2.0, 0.0, 0.0]]])
    out = model(video, queries)
    assert out.tracks.shape == (2, 9, 2, 2) and out.visible.shape == (2, 9, 2) and out.visible.dtype == torch.bool
    assert out.vis_logits.shape == (2, 9, 2, 3)
    for name in ("layer_tracks", "layer_apu_tracks"):
        assert getattr(out, name).shape == (2, 2, 9, 2, 2)
    assert out.layer_vis_logits.shape == (2, 2, 9, 2, 3)
    (out.layer_tracks.sum() + out.layer_apu_tracks.sum() + out.layer_vis_logits.sum()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    assert {id(p) for p in model.backbone_parameters()} == {id(p) for p in model.backbone[0].body.parameters()}


def test_batch_elements_are_tracked_independently():
    # the reference only runs batch size 1; ours applies each sample's own masks
    model = tiny_model().eval()
    with torch.no_grad():
        model.load_state_dict(random_state_dict({k: v.shape for k, v in model.state_dict().items()}))
    video = torch.rand(2, 10, 3, 64, 64) * 255
    queries = torch.tensor([[[0.0, 20.0, 30.0], [6.0, 40.0, 10.0]], [[9.0, 7.0, 50.0], [3.0, 60.0, 60.0]]])
    with torch.no_grad():
        both = model(video, queries)
        for b in range(2):
            single = model(video[b:b + 1], queries[b:b + 1])
            assert torch.allclose(both.layer_tracks[:, b], single.layer_tracks[:, 0], atol=1e-4)
            assert torch.allclose(both.layer_vis_logits[:, b], single.layer_vis_logits[:, 0], atol=1e-4)


def test_bad_inputs_are_rejected():
    model = tiny_model()
    video = torch.rand(1, 8, 3, 64, 64)
    with pytest.raises(ValueError, match="query frames must lie in"):
        model(video, torch.tensor([[[8.0, 1.0, 1.0]]]))
    with pytest.raises(ValueError, match=r"queries must be \(B, N, 3\)"):
        model(video, torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="at least window_len"):
        model(video[:, :5], torch.zeros(1, 1, 3))
    with pytest.raises(ValueError, match="divisible"):
        TaptrV2Config(d_model=30)
