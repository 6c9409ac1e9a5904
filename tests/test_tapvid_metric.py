"""TAP-Vid metric: hand-computed examples, per-video averaging, DDP-style state merging."""

from __future__ import annotations

import pytest
import torch

from metrics.tapvid import METRIC_KEYS, TapVidMetrics, tapvid_metrics_per_video


def _video(
    offsets_x: list[list[float]],
    gt_visible: list[list[bool]],
    pred_visible: list[list[bool]],
    query_t: list[float],
) -> dict[str, torch.Tensor]:
    """One video (B=1). Lists are indexed [query][frame]; gt sits at (10, 20), pred is shifted in x."""
    offsets = torch.tensor(offsets_x, dtype=torch.float32).T  # (T, N)
    num_frames, n = offsets.shape
    gt = torch.tensor([10.0, 20.0]).expand(num_frames, n, 2).clone()
    pred = gt.clone()
    pred[..., 0] += offsets
    queries = torch.zeros(n, 3)
    queries[:, 0] = torch.tensor(query_t)
    return {
        "pred_tracks": pred[None],
        "pred_visible": torch.tensor(pred_visible).T[None],
        "gt_tracks": gt[None],
        "gt_visible": torch.tensor(gt_visible).T[None],
        "queries": queries[None],
    }


def _first_mode_video(query0_t: float) -> dict[str, torch.Tensor]:
    T, F = True, False
    return _video(
        offsets_x=[[0, 0, 0, 0, 1.5], [0, 0, 0, 3, 2]],
        gt_visible=[[T, T, T, F, T], [T, T, F, T, T]],
        pred_visible=[[T, T, T, T, T], [T, T, F, T, F]],
        query_t=[query0_t, 0.0],
    )


def _assert_close(values: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    for key, value in expected.items():
        assert float(values[key]) == pytest.approx(value, abs=1e-12), key


def test_first_mode_hand_example_with_half_frame_query() -> None:
    # Query 0 at t=2.5 rounds half-to-even to frame 2 -> scored frames 3, 4.
    # Query 1 at t=0 -> scored frames 1..4. Scored points (gt visible? pred visible? |dx|):
    #   q0f3: occ, vis, 0     q0f4: vis, vis, 1.5
    #   q1f1: vis, vis, 0     q1f2: occ, occ, 0     q1f3: vis, vis, 3     q1f4: vis, occ, 2
    # OA: q0f3 and q1f4 disagree -> 4/6. GT visible scored points: 4.
    # th=1: within {q0f3, q1f1, q1f2}; correct {q1f1} -> pts 1/4; TP {q1f1} = 1;
    #       FP {q0f3 (gt occ), q0f4 (far), q1f3 (far)} = 3 -> jaccard 1/(4+3).
    # th=2: within adds q0f4 (q1f4: 2 < 2 is false); correct {q0f4, q1f1} -> 2/4; TP 2;
    #       FP {q0f3, q1f3} = 2 -> 2/(4+2).
    # th=4,8,16: all within; correct 4 -> 4/4; TP {q0f4, q1f1, q1f3} = 3; FP {q0f3} -> 3/5.
    values = tapvid_metrics_per_video(**_first_mode_video(2.5), query_mode="first")
    jaccards = [1 / 7, 2 / 6, 3 / 5, 3 / 5, 3 / 5]
    pts = [1 / 4, 2 / 4, 1.0, 1.0, 1.0]
    expected = {"oa": 4 / 6, "aj": sum(jaccards) / 5, "delta_avg": sum(pts) / 5}
    expected |= {f"jaccard_{t}": j for t, j in zip((1, 2, 4, 8, 16), jaccards)}
    expected |= {f"pts_within_{t}": p for t, p in zip((1, 2, 4, 8, 16), pts)}
    _assert_close(values, expected)
    assert set(values) == set(METRIC_KEYS)

    # t=2.5 is frame 2 (not 3, which would drop q0f3 from the scored set).
    at_2 = tapvid_metrics_per_video(**_first_mode_video(2.0), query_mode="first")
    at_3 = tapvid_metrics_per_video(**_first_mode_video(3.0), query_mode="first")
    assert all(torch.equal(values[k], at_2[k]) for k in METRIC_KEYS)
    assert float(at_3["oa"]) == pytest.approx(4 / 5)
    # 3.5 rounds to even as well: frame 4, so q0 contributes nothing.
    at_35 = tapvid_metrics_per_video(**_first_mode_video(3.5), query_mode="first")
    assert float(at_35["oa"]) == pytest.approx(3 / 4)


def test_strided_mode_hand_example() -> None:
    # One query at t=1: every frame but 1 is scored (frame 1 has a huge error that must not count).
    # f0: gt vis, pred vis, 0.5   f2: gt occ, pred vis, 0   f3: gt vis, pred occ, 5
    # OA: f0 right, f2 wrong, f3 wrong -> 1/3. GT visible scored: 2 (f0, f3).
    # th=1,2,4: correct {f0} -> 1/2; TP {f0} = 1; FP {f2} = 1 -> 1/(2+1).
    # th=8,16: correct {f0, f3} -> 2/2; TP {f0} (f3 predicted occluded); FP {f2} -> 1/3.
    T, F = True, False
    video = _video(
        offsets_x=[[0.5, 100.0, 0.0, 5.0]],
        gt_visible=[[T, T, F, T]],
        pred_visible=[[T, T, T, F]],
        query_t=[1.0],
    )
    values = tapvid_metrics_per_video(**video, query_mode="strided")
    pts = [0.5, 0.5, 0.5, 1.0, 1.0]
    expected = {"oa": 1 / 3, "aj": 1 / 3, "delta_avg": sum(pts) / 5}
    expected |= {f"jaccard_{t}": 1 / 3 for t in (1, 2, 4, 8, 16)}
    expected |= {f"pts_within_{t}": p for t, p in zip((1, 2, 4, 8, 16), pts)}
    _assert_close(values, expected)
    # In "first" mode the same video scores only frames 2, 3.
    first = tapvid_metrics_per_video(**video, query_mode="first")
    assert float(first["oa"]) == pytest.approx(0.0)


def _random_video(seed: int, n: int, num_frames: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(1, num_frames, n, 2, generator=g) * 255
    return {
        "pred_tracks": gt + torch.randn(gt.shape, generator=g) * 4,
        "pred_visible": torch.rand(1, num_frames, n, generator=g) > 0.3,
        "gt_tracks": gt,
        "gt_visible": torch.rand(1, num_frames, n, generator=g) > 0.3,
        "queries": torch.cat([torch.zeros(1, n, 1), gt[:, 0]], dim=-1),
    }


def test_mean_over_videos_is_plain_not_pooled() -> None:
    T = True
    # Video A: one point, scored frame 1 exactly right -> pts_within_1 = 1.
    a = _video([[0.0, 0.0]], [[T, T]], [[T, T]], [0.0])
    # Video B: three points, each scored frame 5 px off -> pts_within_1 = 0.
    b = _video([[0, 5], [0, 5], [0, 5]], [[T, T]] * 3, [[T, T]] * 3, [0.0] * 3)
    metric = TapVidMetrics(query_mode="first")
    metric.update(**a)
    metric.update(**b)
    out = metric.compute()
    assert float(out["pts_within_1"]) == pytest.approx(0.5)  # pooled would be 1/4
    assert float(out["jaccard_1"]) == pytest.approx(0.5)  # (1 + 0) / 2
    assert int(metric.num_videos) == 2


def test_batched_and_padded_update_equals_per_video_updates() -> None:
    videos = [_random_video(0, n=5), _random_video(1, n=3)]
    one_by_one = TapVidMetrics(query_mode="strided")
    for video in videos:
        one_by_one.update(**video)

    # Pad video 1 to 5 queries with junk (query time 99 is out of range) marked invalid.
    v1, num_frames = videos[1], videos[1]["gt_tracks"].shape[1]
    junk_tracks = torch.full((1, num_frames, 2, 2), 99.0)
    junk_visible = torch.ones(1, num_frames, 2, dtype=torch.bool)
    padded = {
        "pred_tracks": torch.cat([v1["pred_tracks"], junk_tracks], dim=2),
        "gt_tracks": torch.cat([v1["gt_tracks"], junk_tracks], dim=2),
        "pred_visible": torch.cat([v1["pred_visible"], junk_visible], dim=2),
        "gt_visible": torch.cat([v1["gt_visible"], junk_visible], dim=2),
        "queries": torch.cat([v1["queries"], torch.full((1, 2, 3), 99.0)], dim=1),
    }
    batch = {key: torch.cat([videos[0][key], padded[key]]) for key in padded}
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[1, 3:] = False
    batched = TapVidMetrics(query_mode="strided")
    batched.update(**batch, valid=valid)

    expected, got = one_by_one.compute(), batched.compute()
    for key in METRIC_KEYS:
        assert float(got[key]) == pytest.approx(float(expected[key]), abs=1e-7), key
    # A per-frame (B, T, N) mask works the same way.
    frame_valid = TapVidMetrics(query_mode="strided")
    frame_valid.update(**batch, valid=valid[:, None].expand(2, num_frames, 5))
    assert float(frame_valid.compute()["aj"]) == pytest.approx(float(expected["aj"]), abs=1e-7)
    with pytest.raises(ValueError, match="query times"):
        batched.update(**batch)  # the junk query time counts once it is not masked


def test_state_sums_merge_like_ddp() -> None:
    videos = [_random_video(seed, n=4 + seed) for seed in range(5)]
    single = TapVidMetrics(query_mode="first")
    for video in videos:
        single.update(**video)
    expected = single.compute()

    rank1 = TapVidMetrics(query_mode="first")
    for video in videos[3:]:
        rank1.update(**video)

    # A fake 2-process all-gather: torchmetrics stacks what it returns and applies each
    # state's dist_reduce_fx, exactly as under DDP.
    def fake_all_gather(tensor: torch.Tensor, group: object = None) -> list[torch.Tensor]:
        name = next(n for n in ("metric_sums", "num_videos", "num_skipped") if getattr(rank0, n) is tensor)
        return [tensor, getattr(rank1, name)]

    rank0 = TapVidMetrics(query_mode="first", dist_sync_fn=fake_all_gather, distributed_available_fn=lambda: True)
    merged = TapVidMetrics(query_mode="first")
    for video in videos[:3]:
        rank0.update(**video)
        merged.update(**video)
    synced = rank0.compute()
    merged.merge_state(rank1)

    for got in (synced, merged.compute()):
        for key in METRIC_KEYS:
            assert float(got[key]) == pytest.approx(float(expected[key]), abs=1e-7), key
    assert int(rank0.num_videos) == 3  # local state restored after the synced compute
    assert TapVidMetrics.full_state_update is False


def test_video_without_visible_ground_truth_is_counted_skipped_and_warned() -> None:
    good = _random_video(3, n=4)
    empty = _random_video(4, n=4)
    empty["gt_visible"] = torch.zeros_like(empty["gt_visible"])
    per_video = tapvid_metrics_per_video(**empty, query_mode="first")
    assert torch.isnan(per_video["pts_within_1"]).all()  # as the benchmark: 0 / 0

    metric = TapVidMetrics(query_mode="first")
    metric.update(**good)
    metric.update(**empty)
    with pytest.warns(UserWarning, match="1 of 2 videos"):
        out = metric.compute()
    alone = tapvid_metrics_per_video(**good, query_mode="first")
    for key in METRIC_KEYS:
        assert float(out[key]) == pytest.approx(float(alone[key]), abs=1e-7), key
    assert (int(metric.num_videos), int(metric.num_skipped)) == (1, 1)


def test_bad_inputs_raise() -> None:
    video = _random_video(5, n=3)
    with pytest.raises(ValueError, match="query_mode"):
        TapVidMetrics(query_mode="middle")
    with pytest.raises(ValueError, match="queries must have shape"):
        tapvid_metrics_per_video(**(video | {"queries": video["queries"][:, :2]}), query_mode="first")
    with pytest.raises(TypeError, match="gt_visible must be a bool"):
        tapvid_metrics_per_video(**(video | {"gt_visible": video["gt_visible"].float()}), query_mode="first")
