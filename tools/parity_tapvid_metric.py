"""Check ``metrics/tapvid.py`` against tapnet's ``compute_tapvid_metrics`` on random cases.

Usage:
    python -m tools.parity_tapvid_metric --reference-repo /path/to/tapnet [--cases 400]

``--reference-repo`` is a checkout of google-deepmind/tapnet (the metric was written against
c2cbab81cc06092b5f05bfe2da7bfec54e2079c9). Only the one pure-numpy function is taken from
``tapnet/tapvid/evaluation_datasets.py``: it is parsed with ``ast`` and compiled on its own, so
tapnet's heavy imports (tensorflow, mediapy, ...) are not needed. Cases are float32, b=2,
n=37, T=24, both query modes, with points exactly on and next to the thresholds, half-frame
query times, fully occluded tracks, and ``valid`` masks (compared with tapnet run on the
valid queries only). Prints the max abs difference per metric and overall; exits 1 if any
difference exceeds ``--tolerance`` or NaN patterns differ.
"""

from __future__ import annotations

import argparse
import ast
import sys
import typing
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from metrics.tapvid import METRIC_KEYS, TapVidMetrics, tapvid_metrics_per_video

REFERENCE_FILE = Path("tapnet/tapvid/evaluation_datasets.py")
REFERENCE_KEYS = {"aj": "average_jaccard", "delta_avg": "average_pts_within_thresh", "oa": "occlusion_accuracy"}


def load_reference(repo: Path) -> Callable[..., dict[str, np.ndarray]]:
    """Compile only ``compute_tapvid_metrics`` from the tapnet checkout."""
    source_path = repo / REFERENCE_FILE
    if not source_path.is_file():
        raise FileNotFoundError(f"{source_path} not found; --reference-repo must be a tapnet checkout")
    tree = ast.parse(source_path.read_text(), filename=str(source_path))
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "compute_tapvid_metrics"]
    if len(funcs) != 1:
        raise ValueError(f"compute_tapvid_metrics not found in {source_path}")
    namespace: dict[str, typing.Any] = {"np": np, "Mapping": typing.Mapping}
    exec(compile(ast.Module(body=funcs, type_ignores=[]), str(source_path), "exec"), namespace)
    return namespace["compute_tapvid_metrics"]


def random_case(rng: np.random.Generator, b: int, n: int, t: int, mode: str) -> dict[str, np.ndarray]:
    """One batch in tracklight's convention (pixel centres at integers), float32."""
    # Ground truth on a 1/8 px grid so that gt + integer offsets are exact in float32.
    gt = (rng.integers(0, 256 * 8, size=(b, t, n, 2)) / 8.0 - 0.5).astype(np.float32)
    kind = rng.integers(0, 4, size=(b, t, n))
    thresholds = np.array([1, 2, 4, 8, 16], dtype=np.float32)
    radius = thresholds[rng.integers(0, 5, size=(b, t, n))]
    # kind 0: exactly on a threshold along one axis; 1: a hair inside; 2: a hair outside;
    # 3: uniform noise up to 20 px.
    radius = np.where(kind == 1, np.nextafter(radius, 0), radius)
    radius = np.where(kind == 2, np.nextafter(radius, 100), radius)
    axis = rng.integers(0, 2, size=(b, t, n))
    sign = rng.choice([-1.0, 1.0], size=(b, t, n)).astype(np.float32)
    offset = np.zeros_like(gt)
    offset[..., 0] = np.where(axis == 0, sign * radius, 0)
    offset[..., 1] = np.where(axis == 1, sign * radius, 0)
    noise = rng.uniform(-20, 20, size=gt.shape).astype(np.float32)
    offset = np.where((kind == 3)[..., None], noise, offset)
    pred = (gt + offset).astype(np.float32)

    gt_visible = rng.random((b, t, n)) > rng.uniform(0.1, 0.6)
    pred_visible = rng.random((b, t, n)) > 0.3
    gt_visible[:, :, : max(1, n // 10)] = False  # some tracks never visible
    if rng.random() < 0.1:
        gt_visible[-1] = False  # a video with nothing visible: undefined metrics (NaN)
    # Query times: integers and half-frames (numpy rounds x.5 to even).
    query_t = rng.integers(0, t, size=(b, n)).astype(np.float32)
    half = (rng.random((b, n)) < 0.3) & (query_t < t - 1)
    query_t = np.where(half, query_t + 0.5, query_t)
    if mode == "first" and rng.random() < 0.5:
        query_t[:, :3] = t - 1  # empty evaluation set for these queries
    queries = np.concatenate([query_t[..., None], rng.uniform(-0.5, 255.5, size=(b, n, 2))], axis=-1)
    valid = rng.random((b, n)) > 0.2 if rng.random() < 0.3 else np.ones((b, n), dtype=bool)
    return {
        "pred_tracks": pred,
        "pred_visible": pred_visible,
        "gt_tracks": gt,
        "gt_visible": gt_visible,
        "queries": queries.astype(np.float32),
        "valid": valid,
    }


def reference_per_video(
    reference: Callable[..., dict[str, np.ndarray]], case: dict[str, np.ndarray], mode: str
) -> dict[str, np.ndarray]:
    """tapnet's per-video metrics, one video at a time on its valid queries."""
    per_key: dict[str, list[float]] = {key: [] for key in METRIC_KEYS}
    for i in range(case["gt_tracks"].shape[0]):
        keep = case["valid"][i]
        # tapnet layout: (t, y, x) queries, (n, T) occlusion, (n, T, 2) raster tracks.
        queries = case["queries"][i, keep][None]
        out = reference(
            query_points=np.stack([queries[..., 0], queries[..., 2] + 0.5, queries[..., 1] + 0.5], axis=-1),
            gt_occluded=~case["gt_visible"][i][:, keep].T[None],
            gt_tracks=(case["gt_tracks"][i][:, keep].transpose(1, 0, 2) + np.float32(0.5))[None],
            pred_occluded=~case["pred_visible"][i][:, keep].T[None],
            pred_tracks=(case["pred_tracks"][i][:, keep].transpose(1, 0, 2) + np.float32(0.5))[None],
            query_mode=mode,
        )
        for key in METRIC_KEYS:
            per_key[key].append(float(out[REFERENCE_KEYS.get(key, key)][0]))
    return {key: np.array(values) for key, values in per_key.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-repo", type=Path, required=True, help="tapnet checkout")
    parser.add_argument("--cases", type=int, default=400, help="random cases (split over both modes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-7)
    args = parser.parse_args()

    reference = load_reference(args.reference_repo)
    rng = np.random.default_rng(args.seed)
    max_diff = {key: 0.0 for key in METRIC_KEYS}
    max_mean_diff = 0.0
    nan_mismatches = 0
    nan_videos = 0
    for case_index in range(args.cases):
        mode = ("first", "strided")[case_index % 2]
        case = random_case(rng, b=2, n=37, t=24, mode=mode)
        with np.errstate(divide="ignore", invalid="ignore"):
            ref = reference_per_video(reference, case, mode)
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in case.items()}
        ours = {k: v.numpy() for k, v in tapvid_metrics_per_video(query_mode=mode, **tensors).items()}
        for key in METRIC_KEYS:
            ref_nan, our_nan = np.isnan(ref[key]), np.isnan(ours[key])
            nan_mismatches += int(np.sum(ref_nan != our_nan))
            both = ~ref_nan & ~our_nan
            if both.any():
                max_diff[key] = max(max_diff[key], float(np.max(np.abs(ref[key][both] - ours[key][both]))))
        # The Metric's mean over videos against numpy's mean of tapnet's defined videos.
        defined = ~np.any(np.stack([np.isnan(ref[k]) for k in METRIC_KEYS]), axis=0)
        nan_videos += int(np.sum(~defined))
        if defined.any():
            metric = TapVidMetrics(query_mode=mode)
            metric.update(**tensors)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the expected empty-video warning
                means = metric.compute()
            for key in METRIC_KEYS:
                diff = abs(float(means[key]) - float(np.mean(ref[key][defined])))
                max_mean_diff = max(max_mean_diff, diff)

    for key in METRIC_KEYS:
        print(f"{key:>14s}  max abs diff {max_diff[key]:.3e}")
    overall = max(max_diff.values())
    print(f"cases: {args.cases} (b=2, n=37, T=24, float32, first + strided), videos with NaN in tapnet: {nan_videos}")
    print(f"per-video max abs diff: {overall:.3e}; NaN pattern mismatches: {nan_mismatches}")
    print(f"mean-over-videos max abs diff (TapVidMetrics.compute, float32 output): {max_mean_diff:.3e}")
    ok = overall <= args.tolerance and nan_mismatches == 0 and max_mean_diff <= 1e-6
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
