"""Stitch per-window outputs of a clip model (depth, colour) over a long video.

A video is cut into windows of ``window`` frames; consecutive windows share ``overlap``
frames. Each shared frame is a linear cross-fade from the earlier window to the later one
(weights (i + 1) / (overlap + 1)), so there is no jump at window borders. Relative outputs
(affine-invariant disparity) are first mapped onto the previous window with the least-squares
scale and shift over the shared frames, so the whole video keeps the first window's scale.
Frames are handed out as soon as no later window can change them.

``window_ranges`` cuts a video held in memory exactly as ``VideoReader.windows`` cuts a stream,
and ``stitched`` runs the stitcher over per-window outputs: prediction on video files and the
benchmark evaluation share both, so a benchmark number is what ``tools/predict.py`` would give.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

log = logging.getLogger(__name__)


def fit_scale_shift(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(s, b) minimising sum((s * pred + b - target)^2) over all elements (float64 solve)."""
    x, y = pred.double().flatten(), target.double().flatten()
    x_mean, y_mean = x.mean(), y.mean()
    var = ((x - x_mean) ** 2).sum()
    scale = ((x - x_mean) * (y - y_mean)).sum() / var if var > 0 else torch.ones((), dtype=torch.float64)
    return scale, y_mean - scale * x_mean


class WindowStitcher:
    """Feed windows (t, ...) in order with ``add``; it returns the frames that are final."""

    def __init__(self, overlap: int, align_scale_shift: bool) -> None:
        if overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {overlap}")
        self.overlap = overlap
        self.align = align_scale_shift
        self.pending: Tensor | None = None  # the last window's shared frames, not yet final

    def add(self, window: Tensor) -> Tensor:
        if self.pending is not None:
            k = self.pending.shape[0]
            if window.shape[0] <= k:
                raise ValueError(f"a window of {window.shape[0]} frames adds nothing after {k} shared frames")
            if self.align:
                window = self._aligned(window, k)
            weight = torch.arange(1, k + 1, dtype=window.dtype, device=window.device) / (k + 1)
            weight = weight.view(-1, *([1] * (window.dim() - 1)))
            window = torch.cat([(1 - weight) * self.pending + weight * window[:k], window[k:]])
        keep = self.overlap if window.shape[0] > self.overlap else 0  # a window that short is the last one
        self.pending = window[window.shape[0] - keep:] if keep else None
        return window[: window.shape[0] - keep]

    def _aligned(self, window: Tensor, k: int) -> Tensor:
        scale, shift = fit_scale_shift(window[:k], self.pending)
        if not torch.isfinite(scale) or scale <= 0:
            log.warning("window alignment found scale %.3g; keeping the window's own scale", float(scale))
            return window
        return (window.double() * scale + shift).to(window.dtype)

    def finish(self) -> Tensor | None:
        """The shared frames of the last window (None when there are none)."""
        pending, self.pending = self.pending, None
        return pending


def window_ranges(num_frames: int, length: int, overlap: int) -> list[range]:
    """Frame ranges of the windows over `num_frames` frames: `length` frames each, each starting with
    the previous window's last `overlap` frames; the last may be shorter and adds at least one frame
    (the windows of ``VideoReader.windows``)."""
    if not 0 <= overlap < length:
        raise ValueError(f"need 0 <= overlap < window length, got overlap {overlap}, length {length}")
    ranges, start = [], 0
    while True:
        ranges.append(range(start, min(start + length, num_frames)))
        if start + length >= num_frames:
            return ranges
        start += length - overlap


def stitched(outputs: Iterable[Tensor], overlap: int, align_scale_shift: bool) -> Iterator[Tensor]:
    """Stitch per-window outputs (t, ...) given in window order; yield frames as they become final."""
    stitcher = WindowStitcher(overlap, align_scale_shift)
    for output in outputs:
        done = stitcher.add(output)
        if len(done):
            yield done
    rest = stitcher.finish()
    if rest is not None:
        yield rest
