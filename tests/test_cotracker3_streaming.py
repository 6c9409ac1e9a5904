"""CoTracker3 online streaming: same numbers as the windowed forward, bounded state."""

import pytest
import torch

from models.cotracker3 import CoTrackerThree

TINY = dict(latent_dim=16, corr_levels=2, corr_radius=1, corr_hidden_dim=32, corr_out_dim=16, hidden_size=32,
            num_heads=4, time_depth=2, space_depth=1, num_virtual_tracks=4, window_len=8, model_resolution=(32, 32))


def tiny(variant: str = "online") -> CoTrackerThree:
    torch.manual_seed(0)
    model = CoTrackerThree(variant=variant, **TINY).double().eval()
    with torch.no_grad():
        for head in (model.updateformer.flow_head, model.updateformer.vis_conf_head):
            head.weight.normal_(0.0, 0.3)
    return model


def clip(frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(frames)
    video = torch.rand(2, frames, 3, 32, 32, generator=g, dtype=torch.float64) * 255
    t = torch.tensor([0.0, 2.0, frames // 2, frames - 1])
    xy = torch.rand(2, 4, 2, generator=g, dtype=torch.float64) * 31
    return video, torch.cat([t.view(1, 4, 1).expand(2, 4, 1).double(), xy], dim=-1)


def run_stream(model, video, queries, chunks):
    stream = model.stream(queries, iters=2)
    windows, t = [], 0
    for size in chunks:
        windows += stream.push(video[:, t:t + size])
        t += size
    assert t == video.shape[1]
    windows += stream.finish()
    tracks = torch.zeros(*video.shape[:2], queries.shape[1], 2, dtype=video.dtype)
    vis = torch.zeros(*video.shape[:2], queries.shape[1], dtype=video.dtype)
    for w in windows:
        tracks[:, w.start:w.start + w.num_frames] = w.coords[-1]
        vis[:, w.start:w.start + w.num_frames] = w.vis_logits[-1]
    return windows, tracks, vis


@pytest.mark.parametrize("frames, chunks", [
    (19, [8, 4, 4, 3]),  # the online predictor's pattern: a window, then steps
    (19, [4] * 4 + [3]),
    (16, [3, 5, 1, 7]),  # irregular pushes; ends exactly on a window
    (6, [6]),  # shorter than one window: one padded window
])
def test_stream_equals_windowed_forward(frames, chunks):
    model = tiny()
    video, queries = clip(frames)
    with torch.no_grad():
        full = model(video, queries, iters=2)
        windows, tracks, vis = run_stream(model, video, queries, chunks)
    starts = [w.start for w in windows]
    assert starts == list(range(0, len(starts) * 4, 4))
    torch.testing.assert_close(tracks, full.tracks, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(vis, full.vis_logits, rtol=1e-8, atol=1e-8)


def test_stream_state_does_not_grow_with_video_length():
    model = tiny()
    queries = torch.tensor([[[0.0, 4.0, 4.0], [30.0, 20.0, 9.0]]], dtype=torch.float64)
    stream = model.stream(queries, iters=1)
    frame_counts, state_sizes = [], []
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(16):
            stream.push(torch.rand(1, 4, 3, 32, 32, generator=g, dtype=torch.float64) * 255)
            frame_counts.append(stream.cache[0].shape[1])
            state_sizes.append(sum(t.numel() for t in [*stream.cache, *stream.support, *(stream.prev or ())]))
        assert len(stream.finish()) == 0  # 64 frames: the last full window ends on the last frame
    assert max(frame_counts) < model.window_len  # at most one window of cached feature maps
    assert len(set(state_sizes[2:])) == 1


def test_stream_errors():
    with pytest.raises(ValueError, match="online"):
        tiny("offline").stream(torch.zeros(1, 1, 3, dtype=torch.float64))
    model = tiny()
    stream = model.stream(torch.tensor([[[9.0, 1.0, 1.0]]], dtype=torch.float64))
    with torch.no_grad():
        stream.push(torch.zeros(1, 5, 3, 32, 32, dtype=torch.float64))
        with pytest.raises(ValueError, match="query frames"):
            stream.finish()
    with pytest.raises(RuntimeError, match="finished"):
        stream.push(torch.zeros(1, 1, 3, 32, 32, dtype=torch.float64))
