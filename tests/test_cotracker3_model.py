"""CoTracker3 model: checkpoint layout and loading, shapes, window rules, time embedding."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.checkpoint_io import CheckpointMismatchError
from models.cotracker3 import CoTrackerThree, CoTrackerThreeConfig, window_starts

KEYS = json.loads((Path(__file__).parent / "data" / "cotracker3_keys.json").read_text())
TINY = dict(latent_dim=16, corr_levels=2, corr_radius=1, corr_hidden_dim=32, corr_out_dim=16, hidden_size=32,
            num_heads=4, time_depth=2, space_depth=1, num_virtual_tracks=4, window_len=8, model_resolution=(32, 32))


def tiny(variant: str = "online", seed: int = 0, **overrides) -> CoTrackerThree:
    torch.manual_seed(seed)
    model = CoTrackerThree(variant=variant, **{**TINY, **overrides}).double().eval()
    with torch.no_grad():  # heads larger than the near-zero init, so tracks move
        for head in (model.updateformer.flow_head, model.updateformer.vis_conf_head):
            head.weight.normal_(0.0, 0.3)
    return model


def clip(frames: int = 11, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(1, frames, 3, 32, 32, generator=g, dtype=torch.float64) * 255
    queries = torch.tensor([[[0, 5.0, 6.0], [3, 20, 10], [min(9, frames - 1), 12.5, 30], [frames - 1, 31, 0]]],
                           dtype=torch.float64)
    return video, queries


@pytest.fixture(scope="module")
def full_online() -> CoTrackerThree:
    return CoTrackerThree(variant="online")


@pytest.mark.parametrize("variant", ["online", "offline"])
def test_state_dict_layout_matches_official(variant):
    model = CoTrackerThree(variant=variant)
    expected = KEYS[variant]
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == expected["keys"]  # same names, shapes and order
    assert len(got) == expected["num_tensors"] == 188
    assert sum(p.numel() for p in model.parameters()) == expected["num_parameters"]
    assert model.time_emb.shape == (1, expected["window_len"], 1110)


def test_reduced_width_derives_token_width():
    model = CoTrackerThree(**TINY)
    # vis + conf + corr_levels * corr_out_dim + 4 * (1 + 2 * 10) encoded displacements
    assert model.config.input_dim == 2 + 2 * 16 + 84
    assert model.updateformer.input_transform.weight.shape == (32, 118)
    assert model.corr_mlp.fc1.weight.shape == (32, 81)  # 3x3 patch against 3x3 support
    assert model.time_emb.shape == (1, 8, 118)


def test_from_config_builds_and_names_closest_unknown_key():
    model = CoTrackerThree.from_config({"variant": "offline", **TINY, "model_resolution": [32, 32]})
    assert model.config.variant == "offline" and model.config.model_resolution == (32, 32)
    with pytest.raises(ValueError, match="hidden_size"):
        CoTrackerThree.from_config({"hiden_size": 64})
    with pytest.raises(ValueError, match="variant"):
        CoTrackerThreeConfig(variant="bidirectional")


def test_strict_round_trip_through_file(tmp_path):
    source = tiny(seed=0)
    path = tmp_path / "tiny.pth"
    torch.save(source.state_dict(), path)
    target = tiny(seed=5)
    target.load_official(path)
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key
    video, queries = clip()
    with torch.no_grad():
        assert torch.equal(source(video, queries, iters=2).tracks, target(video, queries, iters=2).tracks)


def test_ddp_prefix_and_training_container_are_accepted(tmp_path):
    source = tiny(seed=0)
    path = tmp_path / "train.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "total_steps": 3}, path)
    target = tiny(seed=5)
    target.load_official(path)
    assert torch.equal(target.corr_mlp.fc1.weight, source.corr_mlp.fc1.weight)


def test_cotracker2_like_checkpoint_fails_naming_keys(full_online):
    sd = dict(full_online.state_dict())
    # CoTracker2 layout: no corr_mlp / vis_conf_head, 456-wide tokens, 130-wide flow head, a pos_emb buffer
    for key in [k for k in sd if k.startswith(("corr_mlp.", "updateformer.vis_conf_head."))]:
        del sd[key]
    sd["updateformer.input_transform.weight"] = torch.zeros(384, 456)
    sd["updateformer.flow_head.weight"] = torch.zeros(130, 384)
    sd["updateformer.flow_head.bias"] = torch.zeros(130)
    sd["pos_emb"] = torch.zeros(1, 456, 96, 128)
    sd["time_emb"] = torch.zeros(1, 16, 456)
    with pytest.raises(CheckpointMismatchError) as err:
        CoTrackerThree(variant="online").load_official(sd)
    message = str(err.value)
    for key in ("corr_mlp.fc1.weight", "updateformer.vis_conf_head.weight", "pos_emb",
                "updateformer.input_transform.weight: checkpoint (384, 456) vs model (384, 1110)",
                "updateformer.flow_head.weight: checkpoint (130, 384) vs model (2, 384)"):
        assert key in message


def test_offline_checkpoint_into_online_model_names_time_emb(full_online):
    sd = dict(full_online.state_dict())
    sd["time_emb"] = torch.zeros(1, 60, 1110)
    with pytest.raises(CheckpointMismatchError, match=r"time_emb: checkpoint \(1, 60, 1110\) vs model \(1, 16, 1110\)"):
        full_online.load_official(sd)
    offline = CoTrackerThree(variant="offline", **{**TINY, "window_len": None})
    assert offline.time_emb.shape[1] == 60


def test_non_checkpoint_file_fails(tmp_path):
    path = tmp_path / "notes.pth"
    torch.save({"lr": 0.1}, path)
    with pytest.raises(CheckpointMismatchError):
        tiny().load_official(path)


@pytest.mark.parametrize("variant", ["online", "offline"])
def test_forward_shapes_and_ranges(variant):
    model = tiny(variant)
    video, queries = clip(frames=11)
    with torch.no_grad():
        out = model(video, queries, iters=2)
    assert out.tracks.shape == (1, 11, 4, 2)
    assert out.vis_logits.shape == out.conf_logits.shape == (1, 11, 4)
    assert torch.isfinite(out.tracks).all()
    assert ((out.vis > 0) & (out.vis < 1)).all() and torch.equal(out.conf, torch.sigmoid(out.conf_logits))


def test_bad_inputs_raise():
    model = tiny()
    video, queries = clip(frames=6)
    with pytest.raises(ValueError, match="multiples of stride"):
        model(video[..., :30], queries)
    with pytest.raises(ValueError, match="query frames"):
        model(video, queries + torch.tensor([6.0, 0, 0], dtype=torch.float64))
    with pytest.raises(ValueError, match="queries must be"):
        model(video, queries[..., :2])


def test_window_starts_cover_clip_and_short_clips_get_one_window():
    assert window_starts(24, 16) == [0, 8]
    assert window_starts(20, 16) == [0, 8]  # the last window is padded by repeating frame 19
    assert window_starts(64, 16) == [0, 8, 16, 24, 32, 40, 48]
    assert window_starts(5, 16) == [0]  # the reference returns no window (zero tracks) here


def test_window_init_copies_overlap_for_early_queries_only():
    model = tiny()  # window 8, step 4, overlap 4
    q_frames = torch.tensor([[0, 7, 8, 12]])
    q_xy = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]], dtype=torch.float64)
    prev_coords = torch.arange(4 * 8 * 2, dtype=torch.float64).view(1, 4, 8, 2) * 4  # pixels
    prev_vis = torch.arange(32, dtype=torch.float64).view(1, 4, 8) + 100
    prev_conf = -prev_vis
    coords, vis, conf = model._window_init(4, q_frames, q_xy, (prev_coords, prev_vis, prev_conf))
    # queried before start + overlap = 8: frames 4..7 of the previous window, then its frame 7 repeated
    for n in (0, 1):
        expected = torch.cat([prev_coords[0, n, 4:], prev_coords[0, n, 7:].expand(4, 2)]) / 4
        assert torch.equal(coords[0, n], expected)
        assert torch.equal(vis[0, n], torch.cat([prev_vis[0, n, 4:], prev_vis[0, n, 7:].expand(4)]))
        assert torch.equal(conf[0, n], -vis[0, n])
    # queried later: the query point (stride units here) with zero logits
    for n in (2, 3):
        assert torch.equal(coords[0, n], q_xy[0, n].expand(8, 2))
        assert not vis[0, n].any() and not conf[0, n].any()
    # the support of tracks queried at or after the window end is zeroed
    support = [torch.ones(1, 4, 9, 16, dtype=torch.float64)]
    masked = model._mask_support(support, q_frames, 4 + 8)
    assert masked[0][0, :3].eq(1).all() and masked[0][0, 3].eq(0).all()


def test_online_window_ignores_frames_after_it():
    model = tiny()
    video, queries = clip(frames=12)
    changed = video.clone()
    changed[:, 8:] = 255 - changed[:, 8:]
    with torch.no_grad():
        a, b = model(video, queries, iters=2), model(changed, queries, iters=2)
    # frames 0..3 are final after the first window (frames 0..7); later frames differ
    assert torch.equal(a.tracks[:, :4], b.tracks[:, :4])
    assert not torch.equal(a.tracks[:, 4:], b.tracks[:, 4:])


def test_offline_time_embedding_is_resized_linearly():
    model = tiny("offline", window_len=6)
    assert model._time_embedding(6, torch.float64) is model.time_emb
    emb = model._time_embedding(9, torch.float64)
    table = model.time_emb[0]
    assert emb.shape == (1, 9, table.shape[1])
    # align_corners=False linear resampling: output i reads source (i + 0.5) * 6 / 9 - 0.5
    for i in range(9):
        src = min(max((i + 0.5) * 6 / 9 - 0.5, 0.0), 5.0)
        lo = int(src)
        hi = min(lo + 1, 5)
        expected = table[lo] * (1 - (src - lo)) + table[hi] * (src - lo)
        torch.testing.assert_close(emb[0, i], expected.to(emb.dtype), rtol=0, atol=1e-6)
    reference = F.interpolate(model.time_emb.float().transpose(1, 2), size=9, mode="linear").transpose(1, 2)
    torch.testing.assert_close(emb, reference.double())
    video, queries = clip(frames=9)
    with torch.no_grad():
        assert model(video, queries, iters=1).tracks.shape == (1, 9, 4, 2)
