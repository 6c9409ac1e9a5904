"""Colorization metrics against hand computations: CDC (TCVC definition), PSNR, SSIM, colourfulness."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from metrics.colorization import ColorizationMetrics, cdc_per_channel, colorfulness_per_frame, ssim_per_frame


def numpy_cdc(video: np.ndarray) -> float:
    """TCVC's CDC of one video written out: video (T, H, W, 3) uint8."""
    T, H, W, _ = video.shape
    per_channel = []
    for c in range(3):
        hists = [np.bincount(video[t, :, :, c].ravel(), minlength=256) / (H * W) for t in range(T)]
        score = 0.0
        for gap in (1, 2, 4):
            js = []
            for t in range(T - gap):
                p, q = hists[t], hists[t + gap]
                m = (p + q) / 2
                kl_p = sum(pi * math.log(pi / mi) for pi, mi in zip(p, m) if pi > 0)
                kl_q = sum(qi * math.log(qi / mi) for qi, mi in zip(q, m) if qi > 0)
                js.append(0.5 * kl_p + 0.5 * kl_q)
                # TCVC computes the same with scipy.stats.entropy (natural log).
                assert abs(js[-1] - (0.5 * stats.entropy(p, m) + 0.5 * stats.entropy(q, m))) < 1e-12
            score += np.mean(js) / 3
        per_channel.append(score)
    return float(np.mean(per_channel))


def to_tensor(video: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(video).permute(0, 3, 1, 2).float()  # (T, 3, H, W)


def test_cdc_of_alternating_black_and_white_frames_is_ln2_over_3():
    video = np.zeros((8, 4, 4, 3), np.uint8)
    video[1::2] = 255  # gap 1: disjoint histograms (JS = ln 2); gaps 2 and 4: identical (JS = 0)
    torch.testing.assert_close(cdc_per_channel(to_tensor(video).double()),
                               torch.full((3,), math.log(2) / 3, dtype=torch.float64))


def test_cdc_matches_a_hand_computation_over_two_videos():
    rng = np.random.default_rng(0)
    # few distinct values (sparse histograms, many empty bins) and a dense one, of different lengths
    videos = [rng.integers(0, 6, (7, 12, 13, 3)).astype(np.uint8) * 40 + 3,
              rng.integers(0, 256, (6, 12, 13, 3)).astype(np.uint8)]
    metric = ColorizationMetrics()
    for v in videos:  # different lengths: one video per update
        x = to_tensor(v)[None]
        metric.update(x + 0.3, x)  # +0.3 rounds away: the 8-bit values are the ones compared
    result = metric.compute()
    expected = np.mean([numpy_cdc(v) for v in videos])
    assert abs(result["cdc"].item() - expected) < 1e-12
    assert abs(result["cdc_gt"].item() - expected) < 1e-12
    assert math.isinf(result["psnr"].item()) and result["ssim"].item() == pytest.approx(1.0)


def test_psnr_ssim_colorfulness_values():
    gt = torch.full((1, 6, 3, 12, 12), 100.0)
    gt[..., 0, :, :] = 200.0
    gt[..., 2, :, :] = 50.0
    metric = ColorizationMetrics()
    metric.update(gt + 10.0, gt)
    out = metric.compute()
    assert out["psnr"].item() == pytest.approx(20 * math.log10(255 / 10), abs=1e-9)
    # constant (200, 100, 50): rg = 100, yb = 100, no spread -> M = 0.3 * sqrt(100^2 + 100^2)
    assert out["colorfulness_gt"].item() == pytest.approx(0.3 * math.hypot(100, 100), abs=1e-9)
    assert out["cdc"].item() == 0.0 and out["cdc_gt"].item() == 0.0


def test_ssim_matches_a_direct_numpy_computation():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2, 3, 13, 14)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255).round()
    x = np.arange(11) - 5.0
    g = np.exp(-x**2 / (2 * 1.5**2))
    window = np.outer(g, g) / g.sum() ** 2
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = []
    for t in range(2):
        maps = []
        for c in range(3):
            for i in range(13 - 10):
                for j in range(14 - 10):
                    pa, pb = a[t, c, i:i + 11, j:j + 11], b[t, c, i:i + 11, j:j + 11]
                    ma, mb = (window * pa).sum(), (window * pb).sum()
                    va, vb = (window * pa * pa).sum() - ma**2, (window * pb * pb).sum() - mb**2
                    cov = (window * pa * pb).sum() - ma * mb
                    maps.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
        expected.append(np.mean(maps))
    out = ssim_per_frame(torch.from_numpy(b), torch.from_numpy(a))
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-12)


def test_colorfulness_is_ddcolors_absolute_opponent_variant():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (9, 7, 3)).astype(np.float64)
    R, G, B = img[..., 0], img[..., 1], img[..., 2]
    rg, yb = np.abs(R - G), np.abs(0.5 * (R + G) - B)
    expected = np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    out = colorfulness_per_frame(torch.from_numpy(img).permute(2, 0, 1)[None])
    assert out.item() == pytest.approx(expected, abs=1e-9)


def test_sum_states_merge_like_ddp():
    g = torch.Generator().manual_seed(3)
    pred = torch.rand(3, 5, 3, 12, 12, generator=g) * 255
    gt = torch.rand(3, 5, 3, 12, 12, generator=g) * 255
    whole = ColorizationMetrics()
    whole.update(pred, gt)
    rank0, rank1 = ColorizationMetrics(), ColorizationMetrics()
    rank0.update(pred[:1], gt[:1])
    rank1.update(pred[1:], gt[1:])
    rank0.merge_state(rank1)  # what the DDP "sum" reduction does with the states
    for key, value in whole.compute().items():
        assert rank0.compute()[key].item() == pytest.approx(value.item(), rel=1e-12)


def test_short_videos_and_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="more than 4 frames"):
        ColorizationMetrics().update(torch.zeros(1, 4, 3, 12, 12), torch.zeros(1, 4, 3, 12, 12))
    with pytest.raises(ValueError, match="at least 11x11"):
        ColorizationMetrics().update(torch.zeros(1, 6, 3, 8, 12), torch.zeros(1, 6, 3, 8, 12))
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        ColorizationMetrics().update(torch.zeros(1, 6, 3, 12, 12), torch.zeros(1, 6, 3, 12, 13))
