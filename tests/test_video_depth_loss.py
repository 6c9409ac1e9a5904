"""Video depth losses and least-squares alignment against hand computations."""

import torch

from lightning_modules.video_depth_loss import (
    DepthLossWeights,
    VideoDepthLoss,
    align_scale_shift,
    gradient_matching_loss,
    normalize_robust,
    ssi_loss,
    temporal_gradient_loss,
)


def frame(rows):
    return torch.tensor(rows, dtype=torch.float64)[None, None]  # (B=1, T=1, H, W)


def test_robust_normalisation_uses_median_and_mean_absolute_deviation():
    # median(1, 2, 3, 10) = 2 (lower median), MAD = (1 + 0 + 1 + 8) / 4 = 2.5
    out = normalize_robust(frame([[1, 2], [3, 10]]), torch.ones(1, 1, 2, 2, dtype=torch.bool))
    assert torch.allclose(out, frame([[-0.4, 0.0], [0.4, 3.2]]))


def test_ssi_loss_by_hand_with_and_without_mask():
    pred, target = frame([[1, 2], [3, 10]]), frame([[2, 4], [6, 8]])
    full = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    # pred -> [-0.4, 0, 0.4, 3.2]; target: median 4, MAD 2 -> [-1, 0, 1, 2]; mean |diff| = 2.4 / 4
    loss, _, _ = ssi_loss(pred, target, full)
    assert torch.isclose(loss, torch.tensor(0.6, dtype=torch.float64))
    # Masking the outlier leaves [1, 2, 3] vs [2, 4, 6]: identical after normalisation.
    mask = torch.tensor([[[[True, True], [True, False]]]])
    loss, _, _ = ssi_loss(pred, target, mask)
    assert torch.isclose(loss, torch.tensor(0.0, dtype=torch.float64))
    # Scale and shift of the prediction do not matter.
    loss2, _, _ = ssi_loss(3 * pred + 7, target, full)
    assert torch.isclose(loss2, torch.tensor(0.6, dtype=torch.float64))


def test_gradient_matching_by_hand():
    residual = frame([[0.6, 0.0], [-0.6, 1.2]])
    full = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    # x pairs: |0 - 0.6| + |1.2 + 0.6| = 2.4; y pairs: |-0.6 - 0.6| + |1.2 - 0| = 2.4; / 4 valid pixels.
    # The stride-2 scale keeps one pixel (no pairs), so 4 scales give the same value.
    for scales in (1, 4):
        loss = gradient_matching_loss(residual, torch.zeros_like(residual), full, scales)
        assert torch.isclose(loss, torch.tensor(1.2, dtype=torch.float64))
    # A pair with an invalid end does not count; the invalid pixel also leaves the divisor.
    mask = torch.tensor([[[[True, True], [True, False]]]])
    loss = gradient_matching_loss(residual, torch.zeros_like(residual), mask, 1)
    assert torch.isclose(loss, torch.tensor((0.6 + 1.2) / 3, dtype=torch.float64))


def test_least_squares_alignment_by_hand():
    pred = torch.tensor([[1.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    target = torch.tensor([[1.0, 2.0, 1.0, 2.0]], dtype=torch.float64)
    # normal equations [[13, 7], [7, 4]] [s, t] = [11, 6] -> s = 2/3, t = 1/3
    s, t = align_scale_shift(pred, target, torch.ones_like(pred, dtype=torch.bool))
    assert torch.allclose(s, torch.tensor([2 / 3], dtype=torch.float64))
    assert torch.allclose(t, torch.tensor([1 / 3], dtype=torch.float64))


def test_temporal_gradient_matching_by_hand():
    pred = torch.tensor([[[[1.0, 2.0]], [[2.0, 2.0]]]], dtype=torch.float64)  # (B, T=2, H=1, W=2)
    target = torch.tensor([[[[1.0, 2.0]], [[1.0, 2.0]]]], dtype=torch.float64)
    mask = torch.ones_like(pred, dtype=torch.bool)
    # aligned (s = 2/3, t = 1/3): [1, 5/3], [5/3, 5/3]; dp = [2/3, 0], dg = [0, 0]
    loss = temporal_gradient_loss(pred, target, mask, threshold=0.05)
    assert torch.isclose(loss, torch.tensor(1 / 3, dtype=torch.float64))
    # A target change above 5 % of the frame's range is an edge, not flicker: excluded.
    target2 = torch.tensor([[[[1.0, 2.0]], [[1.0, 3.0]]]], dtype=torch.float64)
    s, t = align_scale_shift(pred, target2, mask)
    aligned = s * pred + t
    expected = (aligned[0, 1, 0, 0] - aligned[0, 0, 0, 0]).abs()  # only the first pixel (dg = 0) counts
    assert torch.isclose(temporal_gradient_loss(pred, target2, mask), expected)


def test_total_loss_weights():
    torch.manual_seed(0)
    pred, target = torch.rand(2, 3, 1, 8, 8) + 0.1, torch.rand(2, 3, 1, 8, 8) + 0.1
    mask = torch.rand(2, 3, 1, 8, 8) > 0.2
    terms = VideoDepthLoss(DepthLossWeights(ssi=1.0, gradient=0.5, temporal=10.0))(pred, target, mask)
    expected = terms["ssi"] + 0.5 * terms["gradient"] + 10.0 * terms["temporal"]
    assert torch.isclose(terms["loss"], expected)
    no_temporal = VideoDepthLoss(DepthLossWeights(temporal=0.0))(pred, target, mask)
    assert "temporal" not in no_temporal
