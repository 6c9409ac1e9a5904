import math

import torch

from lightning_modules.cotracker3_loss import LossWeights, cotracker3_loss, huber, query_mask


def _bce(logit, target):
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_huber_matches_definition():
    x = torch.tensor([0.0, 3.0, 6.0, 10.0])
    assert torch.allclose(huber(x, torch.zeros(4), 6.0), torch.tensor([0.0, 4.5, 18.0, 6 * (10 - 3)]))


def test_loss_equals_a_hand_computation_with_query_masking():
    # One window, S=2 frames, N=2 tracks, 2 iterations (gamma weights 0.8 and 1, divided by 2).
    gt = torch.tensor([[[[0.0, 0.0], [10.0, 10.0]], [[1.0, 1.0], [10.0, 10.0]]]])  # (1, 2, 2, 2)
    visible = torch.tensor([[[True, True], [True, False]]])
    queries = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 10.0, 10.0]]])  # track 1 queried at frame 1
    batch = {"tracks": gt, "visible": visible, "valid": torch.ones(1, 2, 2, dtype=torch.bool), "queries": queries}
    it0 = gt + torch.tensor([[[[3.0, 0.0], [0.0, 0.0]], [[0.0, 8.0], [20.0, 0.0]]]])
    it1 = gt + torch.tensor([[[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 14.0]]]])
    vis0 = torch.tensor([[[0.0, 1.0], [2.0, -1.0]]])
    vis1 = torch.tensor([[[1.0, 0.0], [0.5, -2.0]]])
    conf0 = torch.tensor([[[0.5, 0.0], [-1.0, 0.0]]])
    conf1 = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    window = {"start": 0, "coords": [it0, it1], "vis_logits": [vis0, vis1], "conf_logits": [conf0, conf1]}
    w = LossWeights()
    out = cotracker3_loss([window], batch, w, mask_before_query=True)

    # Visible mask with query masking: (t0,n0), (t1,n0) -> track 1 masked at t0 and occluded at t1.
    # it0 per-point mean-over-xy Huber: (t0,n0): (4.5 + 0)/2 = 2.25; (t1,n0): (0 + (6*(8-3)))/2 = 15
    # it1: (t0,n0): (0.5 + 0.5)/2 = 0.5; (t1,n0): 0
    vis_it0 = (2.25 + 15) / (2 + 1e-6)
    vis_it1 = (0.5 + 0) / (2 + 1e-6)
    expect_visible = (0.8 * vis_it0 + 1.0 * vis_it1) / 2
    # Occluded (valid & ~visible): only (t1, n1). L1 mean over xy: it0 (20 + 0)/2 = 10, it1 (0 + 14)/2 = 7.
    expect_occluded = (0.8 * 10 / (1 + 1e-6) + 1.0 * 7 / (1 + 1e-6)) / 2
    # Visibility BCE over all 4 elements (no mask), averaged over iterations, no gamma.
    targets = [[1, 1], [1, 0]]
    def bce(v):
        return sum(_bce(float(v[0, t, n]), targets[t][n]) for t in range(2) for n in range(2)) / 4

    expect_visibility = (bce(vis0) + bce(vis1)) / 2
    # Confidence: target = |err|^2 <= 144; times visible; mean over (S, N).
    def conf_term(coords, conf):
        total = 0.0
        for t in range(2):
            for n in range(2):
                err2 = float(((coords[0, t, n] - gt[0, t, n]) ** 2).sum())
                total += _bce(float(conf[0, t, n]), float(err2 <= 144)) * targets[t][n]
        return total / 4
    expect_conf = (conf_term(it0, conf0) + conf_term(it1, conf1)) / 2

    assert math.isclose(out["visible"].item(), expect_visible, rel_tol=1e-6)
    assert math.isclose(out["occluded"].item(), expect_occluded, rel_tol=1e-6)
    assert math.isclose(out["visibility"].item(), expect_visibility, rel_tol=1e-6)
    assert math.isclose(out["confidence"].item(), expect_conf, rel_tol=1e-6)
    total = 0.05 * expect_visible + 0.01 * expect_occluded + expect_visibility + expect_conf
    assert math.isclose(out["loss"].item(), total, rel_tol=1e-6)

    # Offline supervision (no query mask): (t0, n1) now counts as visible.
    offline = cotracker3_loss([window], batch, w, mask_before_query=False)
    assert offline["visible"] > 0 and not math.isclose(offline["visible"].item(), expect_visible, rel_tol=1e-3)


def test_windows_are_averaged_and_sliced_by_start():
    T, N = 6, 3
    gt = torch.randn(1, T, N, 2)
    batch = {"tracks": gt, "visible": torch.ones(1, T, N, dtype=torch.bool),
             "valid": torch.ones(1, T, N, dtype=torch.bool), "queries": torch.zeros(1, N, 3)}
    zeros = torch.zeros(1, 4, N)
    perfect = {"start": 2, "coords": [gt[:, 2:6].clone()], "vis_logits": [zeros + 20], "conf_logits": [zeros + 20]}
    off = {"start": 0, "coords": [gt[:, 0:4] + 1.0], "vis_logits": [zeros + 20], "conf_logits": [zeros + 20]}
    both = cotracker3_loss([perfect, off], batch, LossWeights(), mask_before_query=True)
    single = cotracker3_loss([off], batch, LossWeights(), mask_before_query=True)
    assert torch.isclose(both["visible"], single["visible"] / 2, rtol=1e-5)
    assert torch.isclose(cotracker3_loss([perfect], batch, LossWeights(), True)["visible"], torch.tensor(0.0))


def test_query_mask():
    q = torch.tensor([[[0.0, 1, 1], [3.0, 1, 1]]])
    m = query_mask(q, start=2, num_frames=3)
    assert m[0, :, 0].all() and m[0, :, 1].tolist() == [False, True, True]
