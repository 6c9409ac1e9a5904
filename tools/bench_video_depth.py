"""Cost of turning Depth Anything V2 into a video model with Tracktention, measured in one run.

For each encoder: FLOPs of one clip through the image and the video model (counted on the meta
device, so the ratio is device-independent), parameters of the image model and of the Tracktention layers (default
placement and width, models/video_depth.py), and the latency of one clip through the image model
frame by frame vs. through the video model (same weights, same input, same process, interleaved
repeats, median), so the overhead is a ratio against a baseline measured alongside it. Then the
cost of track pre-extraction per clip: CoTracker3 (published architecture, random weights — the
cost does not depend on them) on `--queries` random space-time queries, tracked both ways.

    python tools/bench_video_depth.py                                  # 518x518, 16 frames, 576 tracks
    python tools/bench_video_depth.py --size 224 --tracker-resolution 192 256   # reduced, for CPUs
    python tools/bench_video_depth.py --flops-only --tracks 576 108            # FLOP table only

At a reduced size the grid has fewer tokens while the track count stays, so Tracktention's share
is larger than at 518 (576 tracks vs 1369 tokens there); `--tracks` takes several counts, e.g. the
one with the same tracks-per-token ratio as 576 at 518.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.cotracker3 import CoTrackerThree, CoTrackerThreeConfig  # noqa: E402
from models.cotracker3_predictor import CoTrackerThreePredictor  # noqa: E402
from models.video_depth import (  # noqa: E402
    TrackPreprocessor,
    VideoDepthAnything,
    VideoDepthConfig,
    count_parameters,
)


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def bench_encoder(encoder: str, size: int, frames: int, track_counts: list[int], repeats: int,
                  device: torch.device) -> list[dict[str, object]]:
    torch.manual_seed(0)
    model = VideoDepthAnything(VideoDepthConfig(encoder=encoder)).to(device).eval()
    video = torch.rand(1, frames, 3, size, size, device=device) * 255
    rows = []
    with torch.inference_mode():
        model.forward_image(video)  # warm-up
        for m in track_counts:
            tracks = torch.rand(1, frames, m, 2, device=device) * (size - 1)
            visible = torch.ones(1, frames, m, dtype=torch.bool, device=device)
            model(video, tracks, visible)  # warm-up
            image_t, video_t = [], []
            for _ in range(repeats):  # interleaved, so load changes hit both alike
                image_t += timed(lambda: model.forward_image(video), 1)
                video_t += timed(lambda: model(video, tracks, visible), 1)
            base, full = statistics.median(image_t), statistics.median(video_t)
            rows.append({"encoder": encoder, "tracks": m, "image_params": count_parameters(model.image),
                         "added_params": count_parameters(model.tracktention),
                         "layers": model.tracktention.block_indices, "image_s": base, "video_s": full,
                         "overhead": full / base - 1})
    return rows


def count_flops(encoder: str, size: int, frames: int, tracks: int) -> tuple[int, int]:
    """FLOPs of one clip through the image model and the video model, counted on the meta device
    (no memory, no time): the device-independent share of Tracktention."""
    with torch.device("meta"):
        model = VideoDepthAnything(VideoDepthConfig(encoder=encoder)).eval()
        video = torch.empty(1, frames, 3, size, size)
        points = torch.empty(1, frames, tracks, 2)
        visible = torch.ones(1, frames, tracks, dtype=torch.bool)
    counts = []
    for run in (lambda: model.forward_image(video), lambda: model(video, points, visible)):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            run()
        counts.append(counter.get_total_flops())
    return counts[0], counts[1]


def bench_tracker(frames: int, size: int, queries: int, resolution: tuple[int, int], repeats: int,
                  device: torch.device) -> float:
    torch.manual_seed(0)
    model = CoTrackerThree(CoTrackerThreeConfig(variant="offline", model_resolution=resolution)).to(device).eval()
    pre = TrackPreprocessor(CoTrackerThreePredictor(model, iters=6, support_grid_size=0), queries)
    video = torch.rand(1, frames, 3, size, size, device=device) * 255
    pre(video)  # warm-up
    return statistics.median(timed(lambda: pre(video), repeats))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["vits", "vitb"])
    parser.add_argument("--size", type=int, default=518, help="square frame size (multiple of 14)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--tracks", type=int, nargs="+", default=[576])
    parser.add_argument("--queries", type=int, default=576, help="track pre-extraction queries")
    parser.add_argument("--tracker-resolution", type=int, nargs=2, default=[384, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--flops-only", action="store_true", help="only the FLOP table (instant, any machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"FLOPs per clip ({args.frames} x {args.size}x{args.size}), counted by FlopCounterMode\n")
    print("| encoder | tracks | image model TFLOP | video model TFLOP | FLOP overhead |")
    print("|---|---|---|---|---|")
    for encoder in args.encoders:
        for m in args.tracks:
            image, video = count_flops(encoder, args.size, args.frames, m)
            print(f"| {encoder} | {m} | {image / 1e12:.2f} | {video / 1e12:.2f} | {video / image - 1:+.1%} |")
    if args.flops_only:
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\ndevice: {name}; clip {args.frames} x {args.size}x{args.size}; fp32; median of {args.repeats}\n")
    print("| encoder | tracks | image params | + Tracktention params | layers after blocks | image model s/clip "
          "| video model s/clip | latency overhead |")
    print("|---|---|---|---|---|---|---|---|")
    for encoder in args.encoders:
        for r in bench_encoder(encoder, args.size, args.frames, args.tracks, args.repeats, device):
            print(f"| {r['encoder']} | {r['tracks']} | {r['image_params'] / 1e6:.1f} M | "
                  f"{r['added_params'] / 1e6:.1f} M ({r['added_params'] / r['image_params']:.0%}) | {r['layers']} | "
                  f"{r['image_s']:.3f} | {r['video_s']:.3f} | {r['overhead']:+.1%} |", flush=True)
    seconds = bench_tracker(args.frames, args.size, args.queries, tuple(args.tracker_resolution), args.repeats, device)
    print(f"\ntrack pre-extraction (CoTracker3 offline, {args.queries} random space-time queries, both directions, "
          f"model resolution {tuple(args.tracker_resolution)}): {seconds:.3f} s per {args.frames}-frame clip")


if __name__ == "__main__":
    main()
