"""Video colorization metrics (torchmetrics, sum states, DDP-correct).

Every metric is computed on RGB frames quantised to 8 bits (clamp to [0, 255], round to the
nearest integer), as the reference scripts read them from saved PNGs, on the 0..255 scale.
Per-frame values are averaged over the frames of a video, then over videos (plain mean).

- ``psnr``: per frame 20 log10(255 / sqrt(MSE)) over all pixels and the 3 channels (TCVC /
  BasicSR ``calculate_psnr``); a frame identical to its ground truth gives +inf, as there.
- ``ssim``: per frame, the Wang et al. SSIM map with an 11x11 Gaussian window (sigma 1.5),
  C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, over the valid region only (no padding: the map
  is (H - 10) x (W - 10)), averaged over the map and the 3 channels (BasicSR ``calculate_ssim``
  on RGB). Frames must be at least 11 x 11.
- ``colorfulness`` (and ``colorfulness_gt`` for the ground truth): Hasler & Suesstrunk's
  M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2) with rg = |R - G| and
  yb = |(R + G) / 2 - B|, population std, on 0..255 — the variant DDColor reports
  (``basicsr/metrics/colorfulness.py``); the paper's opponents are signed.
- ``cdc`` (and ``cdc_gt``), Color Distribution Consistency, exactly as TCVC's
  ``stage1/utils/cdc.py``: for every frame and channel a 256-bin histogram of the 8-bit values
  divided by H * W; for a frame gap k, the mean over t of the Jensen-Shannon divergence
  JSD(h(t), h(t + k)) = KL(p || m) / 2 + KL(q || m) / 2 with m = (p + q) / 2 and natural
  logarithms (scipy ``entropy``); per video and channel sum_k w_k * mean_t JSD for k in
  (1, 2, 4), w_k = 1/3; the mean over videos, then over the three channels (which equals the
  mean over videos of the per-video channel mean). Lower is better. A video needs more than 4
  frames (gap 4); TCVC's script would return NaN for shorter ones, here it is an error.

FID is not computed: it needs an Inception network and its weights, which this package does not
ship.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

CDC_GAPS = (1, 2, 4)
CDC_WEIGHTS = (1 / 3, 1 / 3, 1 / 3)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def quantise(rgb: Tensor) -> Tensor:
    """RGB 0..255 float -> the 8-bit values as float64 (clamped, rounded half to even like numpy)."""
    return rgb.detach().double().clamp(0, 255).round()


def channel_histograms(frames: Tensor) -> Tensor:
    """(T, 3, H, W) 8-bit values -> (T, 3, 256) histograms divided by H * W."""
    T, C, H, W = frames.shape
    idx = frames.long().flatten(2)
    hist = torch.zeros(T, C, 256, dtype=torch.float64, device=frames.device)
    hist.scatter_add_(2, idx, torch.ones_like(idx, dtype=torch.float64))
    return hist / (H * W)


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen-Shannon divergence along the last dim (natural log), with 0 log 0 = 0."""
    m = (p + q) / 2

    def kl(a: Tensor) -> Tensor:  # a > 0 implies m > 0
        return torch.where(a > 0, a * torch.log(a / torch.where(a > 0, m, 1.0)), torch.zeros_like(a)).sum(-1)

    return 0.5 * kl(p) + 0.5 * kl(q)


def cdc_per_channel(frames: Tensor, gaps: tuple[int, ...] = CDC_GAPS,
                    weights: tuple[float, ...] = CDC_WEIGHTS) -> Tensor:
    """One video's CDC per channel (3,): frames (T, 3, H, W) 8-bit values (see the module docstring)."""
    T = frames.shape[0]
    if T <= max(gaps):
        raise ValueError(f"CDC needs more than {max(gaps)} frames per video (frame gaps {gaps}), got {T}")
    hist = channel_histograms(frames)
    score = torch.zeros(frames.shape[1], dtype=torch.float64, device=frames.device)
    for gap, weight in zip(gaps, weights):
        score = score + weight * js_divergence(hist[:-gap], hist[gap:]).mean(0)
    return score


def psnr_per_frame(pred: Tensor, gt: Tensor) -> Tensor:
    """(T,) PSNR in dB of 8-bit frames (T, 3, H, W)."""
    mse = (pred - gt).pow(2).flatten(1).mean(1)
    return 20.0 * torch.log10(255.0 / mse.sqrt())


def _gaussian_window(device: torch.device) -> Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-x * x / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_per_frame(pred: Tensor, gt: Tensor) -> Tensor:
    """(T,) SSIM of 8-bit frames (T, 3, H, W): valid-region 11x11 Gaussian map, mean over channels."""
    T, C, H, W = pred.shape
    if min(H, W) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {H}x{W}")
    window = _gaussian_window(pred.device)
    x, y = pred.reshape(T * C, 1, H, W), gt.reshape(T * C, 1, H, W)

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(z, window)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.view(T, -1).mean(1)


def colorfulness_per_frame(frames: Tensor) -> Tensor:
    """(T,) DDColor's colourfulness of RGB frames (T, 3, H, W) on 0..255."""
    r, g, b = frames.double().unbind(1)
    rg = (r - g).abs().flatten(1)
    yb = (0.5 * (r + g) - b).abs().flatten(1)
    std_root = torch.sqrt(rg.var(1, unbiased=False) + yb.var(1, unbiased=False))
    mean_root = torch.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2)
    return std_root + 0.3 * mean_root


class ColorizationMetrics(Metric):
    """PSNR, SSIM, colourfulness and CDC of predicted colour videos against ground truth.

    ``update(pred_rgb, gt_rgb)`` with (B, T, 3, H, W) RGB 0..255 tensors (any float range; values
    are quantised to 8 bits). ``compute()`` returns the means over all videos seen on all ranks.
    """

    full_state_update = False
    names = ("psnr", "ssim", "colorfulness", "colorfulness_gt", "cdc", "cdc_gt")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in self.names:
            self.add_state(f"{name}_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_videos", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred_rgb: Tensor, gt_rgb: Tensor) -> None:
        if pred_rgb.shape != gt_rgb.shape or pred_rgb.dim() != 5 or pred_rgb.shape[2] != 3:
            raise ValueError(f"prediction {tuple(pred_rgb.shape)} and ground truth {tuple(gt_rgb.shape)} must both "
                             "be (B, T, 3, H, W)")
        for pred, gt in zip(quantise(pred_rgb), quantise(gt_rgb)):
            values = {
                "psnr": psnr_per_frame(pred, gt).mean(),
                "ssim": ssim_per_frame(pred, gt).mean(),
                "colorfulness": colorfulness_per_frame(pred).mean(),
                "colorfulness_gt": colorfulness_per_frame(gt).mean(),
                "cdc": cdc_per_channel(pred).mean(),
                "cdc_gt": cdc_per_channel(gt).mean(),
            }
            for name, value in values.items():
                state = getattr(self, f"{name}_sum")
                setattr(self, f"{name}_sum", state + value.to(state.device))
            self.num_videos += 1

    def compute(self) -> dict[str, Tensor]:
        n = self.num_videos
        if n == 0:
            return {name: torch.tensor(math.nan, dtype=torch.float64) for name in self.names}
        return {name: getattr(self, f"{name}_sum") / n for name in self.names}


__all__ = [
    "ColorizationMetrics",
    "cdc_per_channel",
    "channel_histograms",
    "colorfulness_per_frame",
    "js_divergence",
    "psnr_per_frame",
    "quantise",
    "ssim_per_frame",
]
