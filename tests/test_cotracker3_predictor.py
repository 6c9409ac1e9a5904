"""CoTracker3 predictor: resizing, support grid, backward tracking, query forcing, visibility rules."""

import pytest
import torch

from models.cotracker3 import CoTrackerThree
from models.cotracker3_predictor import CoTrackerThreePredictor
from models.track_ops import points_on_grid

TINY = dict(latent_dim=16, corr_levels=2, corr_radius=1, corr_hidden_dim=32, corr_out_dim=16, hidden_size=32,
            num_heads=4, time_depth=2, space_depth=1, num_virtual_tracks=4, window_len=8, model_resolution=(32, 48))


def tiny(variant: str = "online", head_std: float = 0.3) -> CoTrackerThree:
    torch.manual_seed(0)
    model = CoTrackerThree(variant=variant, **TINY).double().eval()
    with torch.no_grad():
        for head in (model.updateformer.flow_head, model.updateformer.vis_conf_head):
            head.weight.normal_(0.0, head_std)
            head.bias.zero_()
    return model


def clip(frames: int = 12, size: tuple[int, int] = (23, 37)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    video = torch.rand(1, frames, 3, *size, generator=g, dtype=torch.float64) * 255
    queries = torch.tensor([[[0.0, 3.0, 4.0], [6.0, 20.5, 11.0], [11.0, 36.0, 22.0]]], dtype=torch.float64)
    return video, queries


class Recorder(torch.nn.Module):
    """Wraps a model to record the inputs it is called with."""

    def __init__(self, model: CoTrackerThree) -> None:
        super().__init__()
        self.model, self.calls = model, []
        self.config = model.config

    def forward(self, video, queries, iters):
        self.calls.append((video.clone(), queries.clone()))
        return self.model(video, queries, iters=iters)


def test_identity_tracker_maps_coordinates_back_exactly():
    # zero heads: the model never moves a track, so outputs are the resized-and-back queries
    model = tiny(head_std=0.0)
    video, queries = clip()
    out = CoTrackerThreePredictor(model, iters=2, support_grid_size=0)(video, queries)
    assert out.tracks.shape == (1, 12, 3, 2) and out.visible.dtype == torch.bool
    expected = queries[:, None, :, 1:].expand(1, 12, 3, 2)
    torch.testing.assert_close(out.tracks, expected, rtol=0, atol=1e-9)


def test_support_grid_is_tracked_and_removed():
    model = tiny()
    video, queries = clip()
    predictor = CoTrackerThreePredictor(model, iters=2, support_grid_size=3)
    predictor.model = Recorder(model)
    out = predictor(video, queries)
    (resized, sent), = predictor.model.calls
    assert resized.shape == (1, 12, 3, 32, 48)
    assert sent.shape == (1, 3 + 9, 3)
    # user queries scaled by (W' - 1) / (W - 1), (H' - 1) / (H - 1)
    torch.testing.assert_close(sent[0, :3, 1:], queries[0, :, 1:] * torch.tensor([47 / 36, 31 / 22], dtype=torch.float64))
    assert sent[0, 3:, 0].eq(0).all()
    torch.testing.assert_close(sent[0, 3:, 1:], points_on_grid(3, (32, 48)).double()[0])
    assert out.tracks.shape == (1, 12, 3, 2) and out.vis.shape == out.conf.shape == (1, 12, 3)


def test_grid_mode_queries_grid_at_given_frame_without_support_grid():
    model = tiny()
    video, _ = clip()
    predictor = CoTrackerThreePredictor(model, iters=1)
    predictor.model = Recorder(model)
    out = predictor(video, grid_size=2, grid_query_frame=4)
    (_, sent), = predictor.model.calls
    assert sent.shape == (1, 4, 3) and sent[0, :, 0].eq(4).all()
    assert out.tracks.shape == (1, 12, 4, 2)
    with pytest.raises(ValueError, match="grid_size"):
        predictor(video)


def test_query_point_is_forced_at_its_frame():
    video, queries = clip()
    out = CoTrackerThreePredictor(tiny(), iters=2)(video, queries)
    for n, (t, x, y) in enumerate(queries[0].tolist()):
        assert out.tracks[0, int(t), n].tolist() == [x, y]
        assert out.visible[0, int(t), n]


def test_backward_tracking_fills_frames_before_each_query():
    model = tiny()
    video, queries = clip()
    predictor = CoTrackerThreePredictor(model, iters=2, support_grid_size=0)
    forward_only = predictor(video, queries)
    both = predictor(video, queries, backward_tracking=True)
    # what the predictor should use before each query frame: the model on the reversed clip
    resized = torch.nn.functional.interpolate(video[0], (32, 48), mode="bilinear", align_corners=True)[None]
    scale = torch.tensor([47 / 36, 31 / 22], dtype=torch.float64)
    reversed_queries = torch.cat([11 - queries[..., :1], queries[..., 1:] * scale], dim=-1)
    with torch.no_grad():
        back = model(resized.flip(1), reversed_queries, iters=2)
    back_tracks = back.tracks.flip(1) / scale
    for n, t in enumerate(queries[0, :, 0].long().tolist()):
        torch.testing.assert_close(both.tracks[0, :t, n], back_tracks[0, :t, n])
        torch.testing.assert_close(both.vis[0, :t, n], back.vis.flip(1)[0, :t, n])
        torch.testing.assert_close(both.tracks[0, t:, n], forward_only.tracks[0, t:, n])
        if t > 0:
            assert not torch.allclose(both.tracks[0, :t, n], forward_only.tracks[0, :t, n])


def test_visibility_rules_and_defaults():
    vis = torch.tensor([0.95, 0.95, 0.8, 0.85])
    conf = torch.tensor([0.9, 0.5, 0.8, 1.0])
    online = CoTrackerThreePredictor(tiny("online"))
    offline = CoTrackerThreePredictor(tiny("offline"))
    assert online.visibility_rule == "vis_conf" and online.threshold == 0.6
    assert offline.visibility_rule == "vis" and offline.threshold == 0.9
    # vis * conf = 0.855, 0.475, 0.64, 0.85 against 0.6; vis alone against 0.9
    assert online.decide_visible(vis, conf).tolist() == [True, False, True, True]
    assert offline.decide_visible(vis, conf).tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="visibility_rule"):
        CoTrackerThreePredictor(tiny(), visibility_rule="conf")
