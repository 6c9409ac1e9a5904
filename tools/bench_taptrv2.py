"""TAPTRv2 vs CoTracker3 offline: time, memory and FLOPs per clip, same clip, same run.

Both models have their published sizes and random weights (cost does not depend on the values) and
track the same queries on the same video; each model resizes the video to its own
`--*-resolution`. Every (model, points) case runs in a fresh subprocess so that its peak memory
is its own: on CUDA `torch.cuda.max_memory_allocated`, on CPU the process's peak resident set
(which includes the ~0.3 GB of the Python process and torch itself). Time is the median of
`--repeats` forwards after one warm-up (eval mode, no_grad); FLOPs are counted for one forward by
`torch.utils.flop_counter`.

    python tools/bench_taptrv2.py                              # published: 24 frames, 512x512, 800 / 5000 points
    python tools/bench_taptrv2.py --frames 16 --size 256 --taptr-resolution 256 256 \\
        --cotracker-resolution 256 256 --repeats 1             # reduced, for CPUs
    python tools/bench_taptrv2.py ... --memory-only            # peak memory only (one forward per case)

The paper (Appendix A.2, A100): TAPTRv2 69.1 FPS / 143.4 GFLOPs at 800 points, 14.6 FPS / 354.2
GFLOPs at 5000 points.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.cotracker3 import CoTrackerThree, CoTrackerThreeConfig
from models.cotracker3_predictor import CoTrackerThreePredictor
from models.taptrv2 import TaptrV2, TaptrV2Config


def build(model: str, resolution: tuple[int, int], iters: int) -> tuple[torch.nn.Module, object]:
    if model == "taptrv2":
        net = TaptrV2(TaptrV2Config(model_resolution=resolution))
        return net, lambda video, queries: net(video, queries)
    # The predictor resizes the video to the model resolution, as TAPTRv2 does inside its forward.
    net = CoTrackerThreePredictor(CoTrackerThree(CoTrackerThreeConfig(variant="offline", model_resolution=resolution)),
                                  iters=iters, support_grid_size=0)
    return net, lambda video, queries: net(video, queries)


def run_case(args: argparse.Namespace) -> dict[str, float]:
    """One (model, points) case in this process; returns seconds, peak GiB and GFLOPs per clip."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    resolution = tuple(args.taptr_resolution if args.model == "taptrv2" else args.cotracker_resolution)
    net, forward = build(args.model, resolution, args.iters)
    net = net.to(device).eval()
    g = torch.Generator().manual_seed(0)
    video = (torch.rand(1, args.frames, 3, args.size, args.size, generator=g) * 255).to(device)
    points = args.points[0]
    # Queries on the first frame, as in TAP-Vid "first" evaluation.
    queries = torch.cat([torch.zeros(1, points, 1),
                         torch.rand(1, points, 2, generator=g) * (args.size - 1)], dim=-1).to(device)

    def once() -> None:
        forward(video, queries)
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        once()  # warm-up (with --memory-only the one forward measured)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(0 if args.memory_only else args.repeats):
            start = time.perf_counter()
            once()
            times.append(time.perf_counter() - start)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**30
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        if args.memory_only:
            return {"seconds": None, "peak_gib": peak, "gflops": None}
        with FlopCounterMode(display=False) as counter:
            forward(video, queries)
    return {"seconds": statistics.median(times), "peak_gib": peak, "gflops": counter.get_total_flops() / 1e9}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=512, help="square input video size")
    parser.add_argument("--points", type=int, nargs="+", default=[800, 5000])
    parser.add_argument("--taptr-resolution", type=int, nargs=2, default=[512, 512])
    parser.add_argument("--cotracker-resolution", type=int, nargs=2, default=[384, 512])
    parser.add_argument("--iters", type=int, default=4, help="CoTracker3 refinement iterations")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory-only", action="store_true",
                        help="one forward per case: peak memory, no time or FLOPs")
    parser.add_argument("--models", nargs="+", default=["cotracker3", "taptrv2"], choices=["cotracker3", "taptrv2"])
    parser.add_argument("--model", choices=["taptrv2", "cotracker3"], help=argparse.SUPPRESS)  # one case
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:  # child process: one case, JSON on the last line
        print(json.dumps(run_case(args)))
        return
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device}; clip {args.frames} x {args.size}x{args.size}; TAPTRv2 at "
          f"{tuple(args.taptr_resolution)}, CoTracker3 offline at {tuple(args.cotracker_resolution)} with "
          f"{args.iters} iterations; fp32; " + ("one forward per case, peak memory only\n" if args.memory_only
                                                   else f"median of {args.repeats}\n"))
    print("| points | model | s/clip | frames/s | peak memory GiB | GFLOPs/clip | time vs CoTracker3 |")
    print("|---|---|---|---|---|---|---|")
    for points in args.points:
        rows = {}
        for model in args.models:
            child = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--model", model,
                     "--points", str(points)]
            done = subprocess.run(child, capture_output=True, text=True)
            if done.returncode != 0:
                rows[model] = None
                print(f"| {points} | {model} | failed: {done.stderr.strip().splitlines()[-1][:120]} |||||", flush=True)
                continue
            rows[model] = json.loads(done.stdout.strip().splitlines()[-1])
        base = rows.get("cotracker3")
        for model, r in rows.items():
            if r is None:
                continue
            if r["seconds"] is None:  # --memory-only
                ratio = f"{r['peak_gib'] / base['peak_gib']:.2f}x memory" if base else "n/a"
                print(f"| {points} | {model} | - | - | {r['peak_gib']:.2f} | - | {ratio} |", flush=True)
                continue
            ratio = f"{r['seconds'] / base['seconds']:.2f}x" if base else "n/a"
            print(f"| {points} | {model} | {r['seconds']:.2f} | {args.frames / r['seconds']:.2f} | "
                  f"{r['peak_gib']:.2f} | {r['gflops']:.0f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
