"""Video depth metrics against hand computations and a numpy transcription of the benchmark steps."""

import numpy as np
import torch

from metrics.depth import VideoDepthMetrics, temporal_alignment_error, track_depth_changes


def test_exact_affine_disparity_scores_perfectly():
    gt = torch.tensor([[[1.0, 2.0]], [[4.0, 2.0]]])[None]  # (B=1, T=2, H=1, W=2) depth
    pred = 3.0 / gt + 0.5  # an affine function of the true disparity
    metric = VideoDepthMetrics(max_depth=10.0)
    metric.update(pred, gt, torch.ones_like(gt, dtype=torch.bool))
    out = metric.compute()
    assert torch.isclose(out["abs_rel"], torch.tensor(0.0), atol=1e-6)
    assert out["delta1"] == 1.0


def _benchmark_numpy(pred, gt, max_depth):
    """The VDA/DepthCrafter eval.py steps for one video, written out with numpy."""
    valid = (gt > 1e-3) & (gt < max_depth)
    A = np.stack([np.clip(pred, 1e-3, None)[valid], np.ones(valid.sum())], 1).astype(np.float64)
    s, t = np.linalg.lstsq(A, 1.0 / gt[valid].astype(np.float64), rcond=None)[0]
    depth = np.clip(1.0 / np.clip(s * np.clip(pred, 1e-3, None) + t, 1e-3, None), 1e-3, max_depth)
    rel, d1 = [], []
    for k in range(gt.shape[0]):
        v = valid[k]
        if v.any():
            rel.append(np.mean(np.abs(depth[k][v] - gt[k][v]) / gt[k][v]))
            d1.append(np.mean(np.maximum(depth[k][v] / gt[k][v], gt[k][v] / depth[k][v]) < 1.25))
    return np.mean(rel), np.mean(d1)


def test_matches_benchmark_steps_and_averages_over_videos():
    rng = np.random.default_rng(0)
    gts = rng.uniform(0.5, 12.0, (2, 3, 5, 6)).astype(np.float32)  # some pixels beyond max_depth 10
    preds = (1.0 / gts * rng.uniform(0.7, 1.3, gts.shape) * 2 + 0.1).astype(np.float32)
    metric = VideoDepthMetrics(max_depth=10.0)
    valid = torch.ones(gts.shape, dtype=torch.bool)
    metric.update(torch.from_numpy(preds[:1]), torch.from_numpy(gts[:1]), valid[:1])
    metric.update(torch.from_numpy(preds[1:]), torch.from_numpy(gts[1:]), valid[1:])
    out = metric.compute()
    ref = [_benchmark_numpy(preds[i], gts[i], 10.0) for i in range(2)]
    assert abs(out["abs_rel"].item() - np.mean([r[0] for r in ref])) < 1e-6
    assert abs(out["delta1"].item() - np.mean([r[1] for r in ref])) < 1e-6


def test_track_depth_change_error_by_hand():
    pred = torch.tensor([[[1.0, 2.0, 4.0]], [[1.0, 3.0, 4.0]]], dtype=torch.float64)  # (T=2, H=1, W=3)
    gt = torch.tensor([[[1.0, 2.0, 4.0]], [[1.0, 2.0, 4.0]]], dtype=torch.float64)
    valid = torch.ones_like(gt, dtype=torch.bool)
    tracks = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]],
                           [[2.0, 0.0], [1.0, 0.0], [0.0, 0.0]]])  # (T, N=3, 2)
    visible = torch.tensor([[True, True, False], [True, True, True]])
    err, ok = track_depth_changes(pred, gt, valid, tracks, visible)
    # track 0 moves 2 -> 4 in both: 0; track 1 predicted 2 -> 3, true 2 -> 2: 1 / 2; track 2 invisible at t=0.
    assert ok.tolist() == [[True, True, False]]
    assert torch.allclose(err[ok], torch.tensor([0.0, 0.5], dtype=torch.float64))


def test_track_tae_in_the_metric():
    gt = torch.tensor([[[1.0, 2.0, 4.0]], [[1.0, 2.0, 4.0]]])[None]
    valid = torch.ones_like(gt, dtype=torch.bool)
    tracks = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]])  # one static track on the middle pixel
    metric = VideoDepthMetrics(max_depth=10.0)
    metric.update(1.0 / gt, gt, valid, tracks, torch.ones(1, 2, 1, dtype=torch.bool))
    assert torch.isclose(metric.compute()["track_tae"], torch.tensor(0.0), atol=1e-5)


def test_tae_by_hand_with_identity_poses():
    K = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]]).expand(2, 3, 3)
    poses = torch.eye(4).expand(2, 4, 4)
    depth = torch.stack([torch.full((3, 4), 2.0), torch.full((3, 4), 2.2)])
    # forward: |2.2 - 2| / 2.2; backward: |2 - 2.2| / 2; TAE = 100 * sum / (2 (T - 1))
    expected = 100 * (0.2 / 2.2 + 0.2 / 2.0) / 2
    assert abs(temporal_alignment_error(depth, K, poses)[0].item() - expected) < 1e-5  # 2.2 in float32


def test_tae_follows_a_camera_translation():
    # Camera 2 is 1 unit further back along z (camera-to-world pose): a wall at depth 2 is seen at 3.
    K = torch.tensor([[10.0, 0, 2], [0, 10.0, 2], [0, 0, 1]]).expand(2, 3, 3)
    p2 = torch.eye(4)
    p2[2, 3] = -1.0
    poses = torch.stack([torch.eye(4), p2])
    depth = torch.stack([torch.full((5, 5), 2.0), torch.full((5, 5), 3.0)])
    assert temporal_alignment_error(depth, K, poses)[0].item() < 1e-9
