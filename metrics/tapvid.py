"""TAP-Vid point-tracking metrics (AJ, delta_avg, OA), exactly as the benchmark defines them.

The per-video numbers follow google-deepmind/tapnet ``compute_tapvid_metrics``
(``tapnet/tapvid/evaluation_datasets.py`` at c2cbab81cc06092b5f05bfe2da7bfec54e2079c9);
``tools/parity_tapvid_metric.py`` checks them against that function. The benchmark figure is
the plain mean of the per-video values over videos (not pooled over points).

Inputs use tracklight's convention (``DESIGN.md``): points ``(x, y)`` in pixels of a 256x256
frame with pixel centres at integer coordinates. The benchmark works in raster coordinates
(normalised x 256, pixel centres at ``i + 0.5``), so both tracks are shifted by ``+0.5`` before
the distance. The shift does not change distances in exact arithmetic; it is applied so that
float rounding matches the benchmark bit for bit. Distances are computed in the promoted
floating dtype of the two track tensors, at least float32 (numpy's behaviour on the same
inputs).

All values are fractions in [0, 1]; papers multiply them by 100.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

THRESHOLDS: tuple[int, ...] = (1, 2, 4, 8, 16)
QUERY_MODES: tuple[str, ...] = ("first", "strided")
METRIC_KEYS: tuple[str, ...] = (
    "aj",
    "delta_avg",
    "oa",
    *(f"jaccard_{t}" for t in THRESHOLDS),
    *(f"pts_within_{t}" for t in THRESHOLDS),
)


def _check_inputs(
    pred_tracks: Tensor,
    pred_visible: Tensor,
    gt_tracks: Tensor,
    gt_visible: Tensor,
    queries: Tensor,
    valid: Tensor | None,
) -> None:
    if gt_tracks.ndim != 4 or gt_tracks.shape[-1] != 2:
        raise ValueError(f"gt_tracks must be (B, T, N, 2), got {tuple(gt_tracks.shape)}")
    b, t, n, _ = gt_tracks.shape
    expected = {
        "pred_tracks": (pred_tracks, (b, t, n, 2)),
        "pred_visible": (pred_visible, (b, t, n)),
        "gt_visible": (gt_visible, (b, t, n)),
        "queries": (queries, (b, n, 3)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (from gt_tracks), got {tuple(tensor.shape)}")
    for name, tensor in (("pred_visible", pred_visible), ("gt_visible", gt_visible)):
        if tensor.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool tensor (True = visible), got {tensor.dtype}")
    if valid is not None:
        if tuple(valid.shape) not in ((b, n), (b, t, n)):
            raise ValueError(f"valid must have shape {(b, n)} or {(b, t, n)}, got {tuple(valid.shape)}")
        if valid.dtype != torch.bool:
            raise TypeError(f"valid must be a bool tensor, got {valid.dtype}")


def tapvid_metrics_per_video(
    pred_tracks: Tensor,
    pred_visible: Tensor,
    gt_tracks: Tensor,
    gt_visible: Tensor,
    queries: Tensor,
    query_mode: str,
    valid: Tensor | None = None,
) -> dict[str, Tensor]:
    """TAP-Vid metrics of each video in a batch.

    Args:
        pred_tracks, gt_tracks: ``(B, T, N, 2)`` ``(x, y)`` in pixels of the 256x256 frame,
            pixel centres at integers.
        pred_visible, gt_visible: ``(B, T, N)`` bool, True = visible.
        queries: ``(B, N, 3)`` ``(t, x, y)``; only ``t`` is used, rounded half-to-even like
            ``numpy.round`` (so ``t = 2.5`` is frame 2).
        query_mode: ``"first"`` scores the frames after the query frame, ``"strided"`` every
            frame except the query frame.
        valid: optional bool mask, ``(B, N)`` for padded / dummy queries that must not be
            scored, or ``(B, T, N)`` to also drop frames without an annotation.

    Returns:
        ``{key: (B,) float tensor}`` for every key in ``METRIC_KEYS``. A video with no
        evaluated point whose ground truth is visible gets NaN in ``pts_within_*`` and
        ``delta_avg`` (0 / 0, as the benchmark), and possibly in the others.
    """
    if query_mode not in QUERY_MODES:
        raise ValueError(f"query_mode must be one of {QUERY_MODES}, got {query_mode!r}")
    _check_inputs(pred_tracks, pred_visible, gt_tracks, gt_visible, queries, valid)
    num_frames = gt_tracks.shape[1]

    # torch.round is round-half-to-even, the same as numpy.round in the benchmark.
    query_frame = torch.round(queries[..., 0].double()).long()  # (B, N); double: exact for any input dtype
    in_range = (query_frame >= 0) & (query_frame < num_frames)
    query_valid = valid if valid is None or valid.ndim == 2 else valid.any(dim=1)
    must_be_in_range = in_range if query_valid is None else in_range | ~query_valid
    if not bool(must_be_in_range.all()):
        bad = queries[..., 0][~must_be_in_range]
        raise ValueError(f"query times must round into [0, {num_frames - 1}], got {bad.tolist()}")

    # Evaluation mask (B, T, N): the benchmark's eye-derived matrix indexed by query frame.
    frames = torch.arange(num_frames, device=gt_tracks.device).view(1, -1, 1)
    query_frame = query_frame.unsqueeze(1)
    evaluated = frames > query_frame if query_mode == "first" else frames != query_frame
    if valid is not None:
        evaluated = evaluated & (valid.unsqueeze(1) if valid.ndim == 2 else valid)

    dtype = torch.promote_types(torch.promote_types(pred_tracks.dtype, gt_tracks.dtype), torch.float32)
    # Raster coordinates (+0.5), see the module docstring.
    pred_raster = pred_tracks.to(dtype) + 0.5
    gt_raster = gt_tracks.to(dtype) + 0.5
    sq_dist = torch.sum(torch.square(pred_raster - gt_raster), dim=-1)  # (B, T, N)

    def count(mask: Tensor) -> Tensor:
        return (mask & evaluated).sum(dim=(1, 2)).to(torch.float64)

    out: dict[str, Tensor] = {"oa": count(pred_visible == gt_visible) / count(torch.ones_like(gt_visible))}
    num_gt_visible = count(gt_visible)
    for thresh in THRESHOLDS:
        within = sq_dist < thresh**2  # strict, as the benchmark
        correct = within & gt_visible
        true_pos = count(correct & pred_visible)
        false_pos = count(pred_visible & (~gt_visible | ~within))
        out[f"pts_within_{thresh}"] = count(correct) / num_gt_visible
        out[f"jaccard_{thresh}"] = true_pos / (num_gt_visible + false_pos)
    out["aj"] = torch.stack([out[f"jaccard_{t}"] for t in THRESHOLDS]).mean(dim=0)
    out["delta_avg"] = torch.stack([out[f"pts_within_{t}"] for t in THRESHOLDS]).mean(dim=0)
    return {key: out[key] for key in METRIC_KEYS}


class TapVidMetrics(Metric):
    """Benchmark TAP-Vid metrics: per-video values, then the plain mean over videos.

    ``compute()`` returns ``{key: scalar tensor}`` for every key in ``METRIC_KEYS``
    (``aj``, ``delta_avg``, ``oa``, ``jaccard_{1,2,4,8,16}``, ``pts_within_{1,2,4,8,16}``) as
    fractions in [0, 1].

    States are sums (per-video metric sums and video counts), so DDP reduction by summing
    gives exactly the mean over all videos of all ranks, however videos are split.

    Empty videos: a video with no evaluated point whose ground truth is visible has undefined
    metrics (the benchmark returns NaN for it, which makes the benchmark mean NaN). Here such
    a video is left out of every metric, counted in ``num_skipped`` and reported by a warning
    at ``compute()``; ``num_videos`` counts the videos that were scored. If no video was
    scored, every value is NaN.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    metric_sums: Tensor
    num_videos: Tensor
    num_skipped: Tensor

    def __init__(self, query_mode: str = "first", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if query_mode not in QUERY_MODES:
            raise ValueError(f"query_mode must be one of {QUERY_MODES}, got {query_mode!r}")
        self.query_mode = query_mode
        # float64 sums so that thousands of videos add up without float32 drift.
        self.add_state("metric_sums", torch.zeros(len(METRIC_KEYS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_videos", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_skipped", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        pred_tracks: Tensor,
        pred_visible: Tensor,
        gt_tracks: Tensor,
        gt_visible: Tensor,
        queries: Tensor,
        valid: Tensor | None = None,
    ) -> None:
        """Add a batch of videos; arguments as in ``tapvid_metrics_per_video``."""
        per_video = tapvid_metrics_per_video(
            pred_tracks, pred_visible, gt_tracks, gt_visible, queries, self.query_mode, valid
        )
        values = torch.stack([per_video[key] for key in METRIC_KEYS], dim=1)  # (B, K)
        defined = ~torch.isnan(values).any(dim=1)
        self.metric_sums += values[defined].sum(dim=0).to(self.metric_sums)
        self.num_videos += defined.sum()
        self.num_skipped += (~defined).sum()

    def compute(self) -> dict[str, Tensor]:
        """Mean over scored videos of each metric, as fractions in [0, 1]."""
        num_videos, num_skipped = int(self.num_videos), int(self.num_skipped)
        if num_skipped:
            rank_zero_warn(
                f"TapVidMetrics: {num_skipped} of {num_videos + num_skipped} videos have no evaluated"
                " point with visible ground truth; their metrics are undefined (NaN in the benchmark)"
                " and they are left out of the mean.",
                UserWarning,
            )
        if num_videos == 0:
            means = torch.full_like(self.metric_sums, float("nan"))
        else:
            means = self.metric_sums / num_videos
        return {key: means[i].float() for i, key in enumerate(METRIC_KEYS)}
