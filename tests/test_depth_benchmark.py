"""The video depth benchmark protocol (metrics/depth_benchmark.py) against hand computations."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from metrics.depth import fit_scale_shift, reproject_depth, temporal_alignment_error
from metrics.depth_benchmark import (
    ROW_FIELDS,
    VideoDepthBenchmarkMetric,
    crop_intrinsics,
    crop_slices,
    reference_sintel_depth,
)

REPO = Path(__file__).resolve().parents[1]


def two_cluster_video() -> tuple[torch.Tensor, torch.Tensor]:
    """Frame 0: prediction 1 where gt = 1, 2, 4; frame 1: prediction 3 where gt = 0.5, 0.25 (and an
    invalid pixel). With two prediction values the fit passes through both cluster means of 1 / gt:
    s = (3 - 7/12) / 2 = 29/24, t = 7/12 - 29/24 = -5/8; aligned depth 12/7 (frame 0), 1/3 (frame 1)."""
    gt = torch.tensor([[[1.0, 2.0, 4.0]], [[0.5, 0.25, 0.0]]], dtype=torch.float64)
    pred = torch.tensor([[[1.0, 1.0, 1.0]], [[3.0, 3.0, 3.0]]], dtype=torch.float64)
    return pred, gt


TWO_CLUSTER = {  # by hand from the aligned depths 12/7 and 1/3
    "abs_rel": (10 / 21 + 1 / 3) / 2,  # frame 0: (5/7 + 1/7 + 4/7) / 3; frame 1: (1/3 + 1/3) / 2
    "delta1": (1 / 3 + 0) / 2,  # only 2 / (12/7) = 7/6 < 1.25
    "rmse": (np.sqrt((25 + 4 + 256) / 49 / 3) + np.sqrt((1 / 36 + 1 / 144) / 2)) / 2,
    "scale": 29 / 24, "shift": -5 / 8,
}


def random_video(seed: int, frames: int = 4, height: int = 6, width: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(frames, height, width, generator=g, dtype=torch.float64) * 11 + 0.5  # some beyond cap 10
    pred = 2.0 / gt * (0.7 + 0.6 * torch.rand(gt.shape, generator=g, dtype=torch.float64)) + 0.2
    return pred.float(), gt.float()


# ---------------------------------------------------------------------------------------- alignment
def test_exact_affine_disparity_and_its_inverse_as_depth_score_perfectly() -> None:
    pred, gt = random_video(0)
    disparity = 3.0 / gt + 0.5
    for kind, prediction in (("disparity", disparity), ("depth", 1.0 / disparity)):
        metric = VideoDepthBenchmarkMetric(cap=10.0, prediction=kind)
        metric.update("v", prediction, gt)
        out = metric.compute()
        assert out["abs_rel"].item() == pytest.approx(0.0, abs=1e-6), kind
        assert out["delta1"].item() == 1.0
        assert out["rmse"].item() == pytest.approx(0.0, abs=1e-5)
    # Read as the wrong kind, the same numbers are not an affine disparity any more.
    wrong = VideoDepthBenchmarkMetric(cap=10.0, prediction="depth")
    wrong.update("v", disparity, gt)
    assert wrong.compute()["abs_rel"].item() > 0.1


def test_two_cluster_least_squares_by_hand() -> None:
    pred, gt = two_cluster_video()
    metric = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity")
    metric.update("v", pred, gt)
    (row,) = metric.per_video()
    for key, expected in TWO_CLUSTER.items():  # 1e-7: the reference's 1 / (gt + 1e-8) target
        assert row[key] == pytest.approx(expected, rel=1e-7), key
    assert (row["frames"], row["frames_dropped"], row["valid_pixels"]) == (2, 0, 5)


def test_closed_form_fit_equals_numpy_lstsq_including_a_constant_prediction() -> None:
    pred, gt = random_video(7)
    valid = gt < 10
    for p in (pred.double(), torch.full_like(pred.double(), 0.7)):  # constant: lstsq's minimum-norm answer
        A = np.stack([p[valid].numpy(), np.ones(int(valid.sum()))], 1)
        expected = np.linalg.lstsq(A, 1.0 / (gt[valid].double().numpy() + 1e-8), rcond=None)[0]
        got = fit_scale_shift(p, gt, valid)
        assert [g.item() for g in got] == pytest.approx(list(expected), rel=1e-9)


def test_prediction_below_the_floor_is_clipped_before_the_fit() -> None:
    pred, gt = two_cluster_video()
    pred[1, 0, 2] = -7.0  # on the invalid pixel: ignored by the fit, then clipped like every pixel
    pred[0] = -1.0  # every frame-0 value clips to 1e-3, still one cluster
    metric = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity")
    metric.update("v", pred, gt)
    (row,) = metric.per_video()
    assert row["scale"] == pytest.approx((3 - 7 / 12) / (3 - 1e-3), rel=1e-7)
    assert row["abs_rel"] == pytest.approx(TWO_CLUSTER["abs_rel"], rel=1e-7)


def test_frames_without_valid_pixels_are_dropped_and_videos_weigh_equally() -> None:
    pred, gt = two_cluster_video()
    pred = torch.cat([pred, torch.full((1, 1, 3), 2.0, dtype=torch.float64)])
    gt = torch.cat([gt, torch.tensor([[[0.0, 10.0, 50.0]]], dtype=torch.float64)])  # nothing in (1e-3, cap)
    perfect_gt = torch.tensor([[[1.0, 2.0, 5.0]]], dtype=torch.float64)
    metric = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity")
    metric.update("a", pred, gt)
    metric.update("b", 1.0 / perfect_gt, perfect_gt)
    rows = {r["video"]: r for r in metric.per_video()}
    assert (rows["a"]["frames"], rows["a"]["frames_dropped"]) == (2, 1)
    assert rows["a"]["abs_rel"] == pytest.approx(TWO_CLUSTER["abs_rel"], rel=1e-7)
    out = metric.compute()
    # Video-weighted: (17/42 + 0) / 2 = 17/84; frame-weighted would be (10/21 + 1/3 + 0) / 3 = 17/63.
    assert out["abs_rel"].item() == pytest.approx(17 / 84, rel=1e-7)
    assert out["delta1"].item() == pytest.approx((1 / 6 + 1) / 2, rel=1e-12)
    assert int(out["num_videos"]) == 2


def test_cap_bounds_are_strict_and_out_of_range_pixels_are_ignored() -> None:
    gt = torch.tensor([[[2.0, 4.0, 10.0, 1e-3, 30.0]]], dtype=torch.float64)
    pred = 1.0 / gt
    pred[0, 0, 2:] = torch.tensor([50.0, 0.01, 7.0])  # garbage where gt is at the cap, at 1e-3, beyond
    metric = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity")
    metric.update("v", pred, gt)
    (row,) = metric.per_video()
    assert row["valid_pixels"] == 2
    assert row["abs_rel"] == pytest.approx(0.0, abs=1e-7)


def test_crop_is_applied_to_ground_truth_and_prediction() -> None:
    pred, gt = random_video(1, frames=2, height=6, width=9)
    gt = gt.clamp(max=9.0)
    exact = 1.0 / gt
    garbage = exact.clone()
    garbage[:, :1] = 5.0  # wrong only in the rows and columns the crop removes
    garbage[:, :, -2:] = 0.01
    crop = (1, None, 0, -2)
    metric = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity", crop=crop)
    metric.update("v", garbage, gt)
    (row,) = metric.per_video()
    assert row["valid_pixels"] == 2 * 5 * 7
    assert row["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    uncropped = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity")
    uncropped.update("v", garbage, gt)
    assert uncropped.compute()["abs_rel"].item() > 0.05
    # A prediction of the cropped frames (the model saw them cropped) is resized to the crop, not
    # to the whole frame: the same tensor read the other way is misplaced.
    inner = exact[:, 1:, :-2]
    seen_cropped = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity", crop=crop, prediction_cropped=True)
    seen_cropped.update("v", inner, gt)
    assert seen_cropped.compute()["abs_rel"].item() == pytest.approx(0.0, abs=1e-6)
    misread = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity", crop=crop)
    misread.update("v", inner, gt)
    assert misread.compute()["abs_rel"].item() > 0.01


def test_prediction_is_resized_bilinearly_with_half_pixel_centres() -> None:
    # A disparity ramp at twice the resolution: bilinear downsampling with half-pixel centres
    # (cv2.resize INTER_LINEAR) lands exactly on the ground-truth ramp.
    H, W = 3, 5
    x = torch.arange(W, dtype=torch.float64)
    gt = (1.0 / (0.2 + 0.1 * x)).expand(2, H, W)
    fine_x = (torch.arange(2 * W, dtype=torch.float64) + 0.5) / 2 - 0.5
    pred = (0.2 + 0.1 * fine_x).expand(2, 2 * H, 2 * W)
    metric = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity")
    metric.update("v", pred, gt)
    assert metric.compute()["abs_rel"].item() == pytest.approx(0.0, abs=1e-6)


def test_matches_a_numpy_transcription_of_the_reference_steps() -> None:
    """eval_depthcrafter / eval_single written out with numpy (lstsq, clip, per-frame means)."""
    def reference(pred: np.ndarray, gt: np.ndarray, cap: float) -> list[float]:
        valid = (gt > 1e-3) & (gt < cap)
        p = np.clip(pred, 1e-3, None)
        A = np.stack([p[valid], np.ones(valid.sum())], 1).astype(np.float64)
        s, t = np.linalg.lstsq(A, 1.0 / (gt[valid].astype(np.float64) + 1e-8), rcond=None)[0]
        depth = np.clip(1.0 / np.clip(s * p + t, 1e-3, None), 1e-3, cap)
        keep = valid.reshape(len(gt), -1).any(1)
        out = []
        for k in np.flatnonzero(keep):
            d, g = depth[k][valid[k]], gt[k][valid[k]]
            out.append((np.mean(np.abs(d - g) / g), np.mean(np.maximum(d / g, g / d) < 1.25),
                        np.sqrt(np.mean((d - g) ** 2))))
        return list(np.mean(out, 0))

    metric = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity", crop=(1, -1, 2, None))
    expected = []
    for seed in range(3):
        pred, gt = random_video(seed, frames=5, height=8, width=9)
        gt[1] = 20.0  # a dropped frame
        metric.update(f"v{seed}", pred, gt)
        expected.append(reference(pred[:, 1:-1, 2:].double().numpy(), gt[:, 1:-1, 2:].double().numpy(), 10.0))
    out = metric.compute()
    for i, name in enumerate(("abs_rel", "delta1", "rmse")):
        assert out[name].item() == pytest.approx(np.mean([e[i] for e in expected]), rel=1e-9), name


# ---------------------------------------------------------------------------------------- feeding
def test_a_video_in_chunks_is_aligned_once_and_batches_work() -> None:
    pred, gt = random_video(2, frames=6)
    pred[3:] = 3 * pred[3:] + 1  # another affine relation in the second half: two fits would differ
    whole = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity")
    whole.update("v", pred, gt)
    chunked = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity")
    other_pred, other_gt = random_video(3, frames=6)
    chunked.update(["v", "w"], torch.stack([pred[:2], other_pred[:2]]), torch.stack([gt[:2], other_gt[:2]]),
                   video_done=[False, True])  # interleaved with another video
    chunked.update("v", pred[2:5], gt[2:5], video_done=False)
    chunked.update("v", pred[5:], gt[5:])
    expected = whole.per_video()[0]
    got = {r["video"]: r for r in chunked.per_video()}
    for key in ROW_FIELDS:
        if key != "tae":
            assert got["v"][key] == pytest.approx(expected[key], rel=1e-12), key
    assert got["w"]["frames"] == 2
    separately = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity")
    separately.update("v1", pred[:3], gt[:3])
    separately.update("v2", pred[3:], gt[3:])
    assert separately.compute()["abs_rel"].item() < expected["abs_rel"] - 0.05  # two fits, each better


def test_open_videos_are_finished_at_compute_and_reset_clears_everything() -> None:
    pred, gt = random_video(4)
    metric = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity")
    metric.update("v", pred[:2], gt[:2], video_done=False)
    metric.update("v", pred[2:], gt[2:], video_done=False)
    assert metric.per_video()[0]["frames"] == 4
    metric.reset()
    assert metric.per_video() == []
    metric.update("v", pred, gt)  # the same key is fine after reset
    assert int(metric.compute()["num_videos"]) == 1


def test_video_without_valid_pixels_is_counted_skipped_and_warned() -> None:
    pred, gt = random_video(5)
    metric = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity")
    metric.update("good", pred, gt)
    metric.update("empty", pred, torch.zeros_like(gt))
    with pytest.warns(UserWarning, match="1 of 2 videos .* empty"):
        out = metric.compute()
    alone = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity")
    alone.update("good", pred, gt)
    assert out["abs_rel"].item() == pytest.approx(alone.compute()["abs_rel"].item(), rel=1e-12)
    assert (int(out["num_videos"]), int(out["num_skipped"])) == (1, 1)
    assert np.isnan(metric.per_video()[0]["abs_rel"])  # sorted: "empty" first


def test_bad_inputs_raise_with_the_video_named() -> None:
    pred, gt = random_video(6)
    metric = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity")
    with pytest.raises(ValueError, match="'v'.*NaN"):
        metric.update("v", pred.masked_fill(torch.rand(pred.shape) < 0.1, float("nan")), gt)
    with pytest.raises(ValueError, match="'v'.*3 frames"):
        metric.update("v", pred[:3], gt)
    with pytest.raises(ValueError, match="UTF-8 bytes"):
        metric.update("x" * 300, pred, gt, video_done=False)
    assert not metric._open  # nothing kept from the failed updates
    metric.update("v", pred, gt)
    with pytest.raises(ValueError, match="'v' was already scored"):
        metric.update("v", pred, gt)
    with pytest.raises(ValueError, match="prediction must be"):
        VideoDepthBenchmarkMetric(cap=10.0, prediction="inverse")
    with pytest.raises(ValueError, match="crop"):
        VideoDepthBenchmarkMetric(cap=10.0, prediction="depth", crop=(0, 5))
    with pytest.raises(ValueError, match="leaves nothing"):
        crop_slices((4, 4, 0, None), 8, 8)
    tae = VideoDepthBenchmarkMetric(cap=10.0, prediction="depth", compute_tae=True)
    with pytest.raises(ValueError, match="intrinsics and cam_to_world"):
        tae.update("v", pred, gt)


# ---------------------------------------------------------------------------------------- DDP
def _two_ranks(videos: dict[str, tuple[torch.Tensor, torch.Tensor]], rank0: list[str], rank1: list[str]):
    """rank 0's metric synced with a fake all-gather that returns rank 1's (finished) states."""
    other = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity")
    for key in rank1:
        other.update(key, *videos[key])
    other.sync(should_sync=False)  # finishes its videos and pads empty states, like a real rank

    def fake_all_gather(tensor: torch.Tensor, group: object = None) -> list[torch.Tensor]:
        name = "video_keys" if tensor.dtype == torch.uint8 else "video_rows"
        return [tensor, torch.cat(getattr(other, name))]

    metric = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity", dist_sync_fn=fake_all_gather,
                                       distributed_available_fn=lambda: True)
    for key in rank0:
        metric.update(key, *videos[key])
    return metric, other


def test_two_ranks_reduce_like_one_process_and_padding_duplicates_count_once() -> None:
    videos = {f"v{i}": random_video(10 + i) for i in range(5)}
    single = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity")
    for key, video in videos.items():
        single.update(key, *video)
    expected, expected_rows = single.compute(), single.per_video()

    # v0 on both ranks: a distributed sampler pads the last batch by repeating videos.
    metric, other = _two_ranks(videos, ["v3", "v0", "v4"], ["v1", "v2", "v0"])
    got = metric.compute()
    for key in ("abs_rel", "delta1", "rmse", "num_videos"):
        assert got[key].item() == pytest.approx(expected[key].item(), rel=1e-12), key
    assert [r["video"] for r in metric.per_video()] == [r["video"] for r in expected_rows]
    assert len(metric.video_rows) == 3  # local state restored after the synced compute

    merged = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity")
    for key in ("v3", "v4"):
        merged.update(key, *videos[key])
    merged.merge_state(other)
    assert merged.compute()["abs_rel"].item() == pytest.approx(expected["abs_rel"].item(), rel=1e-12)

    empty_rank, _ = _two_ranks(videos, list(videos), [])
    assert empty_rank.compute()["abs_rel"].item() == pytest.approx(expected["abs_rel"].item(), rel=1e-12)


def test_a_video_split_over_ranks_is_an_error() -> None:
    pred, gt = random_video(20, frames=4)
    metric, other = _two_ranks({"v": (pred[:1], gt[:1])}, ["v"], [])
    other.update("v", pred[1:], gt[1:])  # the rest of "v" reached the other rank
    with pytest.raises(ValueError, match="'v' was scored twice with different frames"):
        metric.compute()


DDP_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    import torch.distributed as dist
    from metrics.depth_benchmark import VideoDepthBenchmarkMetric

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    g = torch.Generator().manual_seed(0)
    videos = {}
    for i in range(4):
        gt = torch.rand(3, 5, 6, generator=g) * 9 + 0.5
        videos[f"v{i}"] = (2.0 / gt * (0.8 + 0.4 * torch.rand(gt.shape, generator=g)), gt)
    K = torch.tensor([[5.0, 0, 2.5], [0, 5.0, 2.0], [0, 0, 1]])
    poses = torch.eye(4).repeat(3, 1, 1)
    poses[:, 0, 3] = torch.tensor([0.0, 0.1, 0.2])
    make = lambda **kw: VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity", compute_tae=True, **kw)
    split, lopsided, local = make(), make(), make(sync_on_compute=False)
    for key in (["v0", "v1"] if rank == 0 else ["v2", "v3", "v0"]):
        split.update(key, *videos[key], intrinsics=K, cam_to_world=poses)
    for key in (videos if rank == 0 else []):
        lopsided.update(key, *videos[key], intrinsics=K, cam_to_world=poses)
        local.update(key, *videos[key], intrinsics=K, cam_to_world=poses)
    out = {name: {k: v.item() for k, v in m.compute().items()} for name, m in
           (("split", split), ("lopsided", lopsided), ("local", local))}
    out["split_videos"] = [r["video"] for r in split.per_video()]
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f)
    dist.barrier()
''')


@pytest.mark.slow
def test_two_gloo_processes_reduce_like_one(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "out.json")], cwd=tmp_path,
                              env={**env, "RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for rank in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    for name in ("split", "lopsided"):  # videos spread over both ranks / all on one rank, none on the other
        for key in ("abs_rel", "delta1", "rmse", "tae", "num_videos"):
            assert out[name][key] == pytest.approx(out["local"][key], rel=1e-12), (name, key)
    assert out["split_videos"] == ["v0", "v1", "v2", "v3"]


# ---------------------------------------------------------------------------------------- TAE
def test_reprojection_collision_nearest_wins_or_last_write_wins() -> None:
    # Pixel 0 at depth 1 and pixel 1 at depth 2 both land on pixel 2 after tx * f = 2.
    depth = torch.tensor([[1.0, 2.0, 0.5, 0.5]], dtype=torch.float64)  # pixels 2, 3 leave the image
    K = torch.tensor([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 1]], dtype=torch.float64)
    move = torch.eye(4, dtype=torch.float64)
    move[0, 3] = 0.2  # the scene moves +x in the camera
    assert reproject_depth(depth, K, K, move)[0, 2].item() == 1.0  # the near surface
    assert reproject_depth(depth, K, K, move, zbuffer=False)[0, 2].item() == 2.0  # raster order


def _translating_camera(frames: int, tx: float) -> torch.Tensor:
    poses = torch.eye(4, dtype=torch.float64).repeat(frames, 1, 1)
    poses[:, 0, 3] = tx * torch.arange(frames, dtype=torch.float64)
    return poses


def test_tae_exact_plane_under_whole_pixel_motion_is_zero_and_a_scaled_frame_by_hand() -> None:
    # A plane at depth 2, f = 10, the camera moves 0.4 m along x per frame: 2 whole pixels.
    K = torch.tensor([[10.0, 0, 5.5], [0, 10.0, 1.5], [0, 0, 1]], dtype=torch.float64).expand(3, 3, 3)
    poses = _translating_camera(3, 0.4)
    depth = torch.full((3, 4, 12), 2.0, dtype=torch.float64)
    tae, pairs = temporal_alignment_error(depth, K, poses)
    assert (tae.item(), pairs) == (0.0, 4)
    # Frame 1 predicted a = 1.25 times too far. Into frame 1: |aZ - Z| / aZ; out of it: |Z - aZ| / Z,
    # whatever pixel the rounding picks (the plane is flat), for both pairs:
    # TAE = 100 (2 |a-1| / a + 2 |a-1|) / 4 = 50 |a-1| (1 + 1/a).
    a = 1.25
    depth[1] *= a
    assert temporal_alignment_error(depth, K, poses)[0].item() == pytest.approx(50 * (a - 1) * (1 + 1 / a), rel=1e-12)
    assert temporal_alignment_error(depth, K, poses, reference=True)[0].item() == pytest.approx(22.5, rel=1e-12)


def test_tae_pairs_without_overlap() -> None:
    K = torch.tensor([[10.0, 0, 1.5], [0, 10.0, 0.5], [0, 0, 1]], dtype=torch.float64).expand(3, 3, 3)
    depth = torch.tensor([2.0, 2.5, 2.0], dtype=torch.float64).view(3, 1, 1).repeat(1, 2, 4)
    poses = _translating_camera(3, 0.0)
    poses[2, 0, 3] = 100.0  # frame 2 sees nothing of frame 1
    tae, pairs = temporal_alignment_error(depth[1:], K[1:], poses[1:])
    assert pairs == 0 and torch.isnan(tae)
    # Pair (0, 1): 0.5 / 2.5 into frame 1, 0.5 / 2 back. Ours averages the 2 directed pairs that
    # overlap; eval_tae.py counts the 2 empty ones as 0 in its 2 (T - 1) = 4.
    assert temporal_alignment_error(depth, K, poses)[0].item() == pytest.approx(100 * 0.45 / 2, rel=1e-12)
    tae, pairs = temporal_alignment_error(depth, K, poses, reference=True)
    assert (tae.item(), pairs) == (pytest.approx(100 * 0.45 / 4, rel=1e-12), 4)


def test_tae_leaves_out_the_pairs_of_a_lost_pose() -> None:
    K = torch.tensor([[10.0, 0, 1.5], [0, 10.0, 0.5], [0, 0, 1]], dtype=torch.float64).expand(4, 3, 3)
    depth = torch.tensor([2.0, 2.5, 2.0, 2.0], dtype=torch.float64).view(4, 1, 1).repeat(1, 2, 4)
    poses = _translating_camera(4, 0.0)
    full, pairs = temporal_alignment_error(depth, K, poses)
    assert pairs == 6
    poses[3, 0, 0] = float("nan")  # the converters' marker of a lost pose (ScanNet's -inf too)
    for reference in (False, True):
        tae, pairs = temporal_alignment_error(depth, K, poses, reference=reference)
        assert pairs == 4 and tae.item() == pytest.approx(temporal_alignment_error(depth[:3], K[:3], poses[:3])[0].item())
    poses[3, 0, 0] = float("-inf")
    assert temporal_alignment_error(depth, K, poses)[1] == 4


def _rolled_scene(size: int = 11, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two frames of an arbitrary depth map seen by a camera that rolls 90 deg about its axis between
    them, around the image centre c: pixel (u, v) of frame 0 is pixel (v, 2c - u) of frame 1."""
    g = torch.Generator().manual_seed(seed)
    d0 = 1.0 + 2.0 * torch.rand(size, size, generator=g, dtype=torch.float64)
    c = (size - 1) // 2
    d1 = torch.empty_like(d0)
    for v in range(size):
        for u in range(size):
            d1[2 * c - u, v] = d0[v, u]
    K = torch.tensor([[10.0, 0, c], [0, 10.0, c], [0, 0, 1]], dtype=torch.float64)
    poses = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    poses[1, :2, :2] = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # camera 1 = camera 0 rolled +90 deg
    return torch.stack([d0, d1]), K, poses


def test_tae_crop_moves_the_principal_point() -> None:
    depth, K, poses = _rolled_scene()
    assert temporal_alignment_error(depth, K.expand(2, 3, 3), poses)[0].item() == 0.0  # exact: 0
    crop = (1, -1, 1, -1)
    for reference in (False, True):
        metric = VideoDepthBenchmarkMetric(cap=10.0, prediction="depth", crop=crop, compute_tae=True,
                                           tae_reference=reference)
        metric.update("rolled", depth, depth, intrinsics=K, cam_to_world=poses)
        tae = metric.compute()["tae"].item()
        if not reference:
            assert tae == pytest.approx(0.0, abs=1e-4)  # float32 storage of the maps
            continue
        # With the uncropped K the roll turns about the wrong centre, (1, 1) px off, so every point
        # lands 2 columns away from its match: into frame 1, pixel (u, v) is compared with what
        # frame 0 has at (u - 2, v), and back into frame 0 likewise (hand derivation).
        inner = depth[0, 1:-1, 1:-1]
        A, B = inner[:, :-2], inner[:, 2:]
        expected = 50 * (((A - B).abs() / A).mean() + ((A - B).abs() / B).mean()).item()
        assert tae == pytest.approx(expected, rel=1e-5)
    shifted = crop_intrinsics(K, 1, 1)
    assert shifted[0, 2].item() == shifted[1, 2].item() == 4.0 and shifted[0, 0].item() == 10.0


# ---------------------------------------------------------------------------------------- Sintel
def test_reference_sintel_quantisation() -> None:
    depth = torch.tensor([0.5, 1.7, 69.99, 65536.5, 70000.0, float("nan"), float("inf")])
    factor = 65535 / 650
    expected = torch.tensor([0.0, 1.0, 69.0, 0.0, 4464.0, 0.0, 0.0], dtype=torch.float64) / factor
    assert torch.allclose(reference_sintel_depth(depth), expected, rtol=1e-12, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_as_on_cpu() -> None:
    depth, K, poses = _rolled_scene(size=21, seed=3)
    pred = 1.0 / depth * 1.1 + 0.05
    results = []
    for device in ("cpu", "cuda"):
        metric = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity", crop=(2, -2, 1, -1),
                                           compute_tae=True).to(device)
        metric.update("rolled", pred.to(device), depth.to(device), intrinsics=K.to(device),
                      cam_to_world=poses.to(device))
        results.append({k: v.item() for k, v in metric.compute().items()})
    for key, value in results[0].items():
        assert results[1][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
