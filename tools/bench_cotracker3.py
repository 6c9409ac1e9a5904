"""Inference speed of tracklight's CoTrackerThree vs the reference co-tracker code, same run.

    python tools/bench_cotracker3.py --reference-repo /path/to/co-tracker \
        [--frames 24 --points 64 --height 384 --width 512 --iters 4 --repeats 3 --device cpu]

Both models get the same weights (reference random init copied into ours with the strict
loader) and the same input. Runs alternate ours / reference so that load changes on a
shared machine hit both alike; the table shows median wall time per forward (no_grad,
eval mode), the ratio ours / reference (< 1 = ours faster) and our points per second
(tracked points / seconds per clip).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from models.cotracker3 import CoTrackerThree


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-repo", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--points", type=int, default=64)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="online,offline")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    sys.path.insert(0, str(args.reference_repo.resolve()))
    from cotracker.models.core.cotracker.cotracker3_offline import CoTrackerThreeOffline
    from cotracker.models.core.cotracker.cotracker3_online import CoTrackerThreeOnline

    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    video = (torch.rand(1, args.frames, 3, args.height, args.width, generator=g) * 255).to(device)
    queries = torch.cat([torch.randint(0, args.frames, (1, args.points, 1), generator=g).float(),
                         torch.rand(1, args.points, 2, generator=g) * torch.tensor([args.width - 1.0, args.height - 1.0])],
                        dim=-1).to(device)
    print(f"device {device}, threads {torch.get_num_threads()}, T={args.frames} N={args.points} "
          f"{args.height}x{args.width} iters={args.iters}, median of {args.repeats}")
    print(f"{'variant':<8} {'ours s':>9} {'reference s':>12} {'ours/ref':>9} {'ours points/s':>14}")
    for variant in args.variants.split(","):
        cls, window = (CoTrackerThreeOnline, 16) if variant == "online" else (CoTrackerThreeOffline, 60)
        torch.manual_seed(0)
        reference = cls(stride=4, corr_radius=3, window_len=window, model_resolution=(args.height, args.width))
        ours = CoTrackerThree(variant=variant, window_len=window, model_resolution=(args.height, args.width))
        ours.load_official(reference.state_dict())
        reference, ours = reference.to(device).eval(), ours.to(device).eval()
        # Called within this iteration only, so binding the loop's models late is what is meant.
        runs = {"ours": lambda: ours(video, queries, iters=args.iters),  # noqa: B023
                "reference": lambda: reference(video, queries, iters=args.iters)}  # noqa: B023
        times = {name: [] for name in runs}
        with torch.no_grad():
            for fn in runs.values():  # warm-up
                fn()
            for _ in range(args.repeats):
                for name, fn in runs.items():
                    times[name].append(timed(fn, device))
        ours_s, ref_s = statistics.median(times["ours"]), statistics.median(times["reference"])
        # points/s: tracked points per second of wall time for the whole T-frame clip
        print(f"{variant:<8} {ours_s:>9.2f} {ref_s:>12.2f} {ours_s / ref_s:>9.2f} {args.points / ours_s:>14.1f}")


if __name__ == "__main__":
    main()
