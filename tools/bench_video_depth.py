"""Cost of turning Depth Anything V2 into a video model with Tracktention, measured in one run.

For each encoder: FLOPs of one clip through the image and the video model (counted on the meta
device with the dense attention, so the ratio is device-independent); then, on the chosen device,
the latency of one clip through the image model frame by frame vs. the video model with each
Tracktention attention implementation (``windowed``, ``dense``: the same function), for a forward
pass and for a training step (forward + backward, every parameter trainable). Same weights, same
input, same process; the variants alternate within every repeat (median of ``--repeats``), so
load from other processes hits all of them alike and the overhead is a ratio against a baseline
measured alongside it. The Tracktention output projections (zero at initialisation, when the
video model equals the image model) get random non-zero weights, and ``--visible`` of the track
points are visible. With ``--memory``, the peak memory of each variant: on CUDA
``torch.cuda.max_memory_allocated`` in this process; on a CPU, each case in a fresh process, the
resident-set high-water mark over the step (tools/bench_tracker_memory.py explains the method).
Optionally the cost of track pre-extraction per clip: CoTracker3 (published architecture, random
weights) on ``--queries`` random space-time queries, tracked both ways.

    python tools/bench_video_depth.py --quick                              # 518x518, 16 frames, 576 tracks, S and B
    python tools/bench_video_depth.py --quick --device cuda --dtype bf16 --tracks 576 2048   # GPU, bf16 autocast
    python tools/bench_video_depth.py --encoders vits --tracks 576 2048 --memory --tracker
    python tools/bench_video_depth.py --flops-only --tracks 576 108        # FLOP table only

At a reduced size the grid has fewer tokens while the track count stays, so Tracktention's share
is larger than at 518 (576 tracks vs 1369 tokens there); ``--tracks`` takes several counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.tracktention import ATTENTION_IMPLS, set_attention
from models.video_depth import (
    TracktentionConfig,
    VideoDepthAnything,
    VideoDepthConfig,
    count_parameters,
)
from tools.bench_tracker_memory import proc_kib

IMAGE = "image"
# --tiny: a narrow 4-block architecture for exercising this script in tests (not a benchmark).
TINY_ARCH = dict(embed_dim=32, depth=4, num_heads=2, features=16, out_channels=[8, 16, 32, 32], layer_idx=[0, 1, 2, 3])


class Timer:
    """Seconds of one call: (wall, process CPU) on a CPU, the CPU time summed over threads (less
    sensitive than wall time to other processes competing for the cores); (GPU time by CUDA
    events after a synchronize, the same) on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> tuple[float, float]:
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            seconds = start.elapsed_time(end) / 1e3
            return seconds, seconds
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu


def model_config(encoder: str, tiny: bool = False) -> VideoDepthConfig:
    if not tiny:
        return VideoDepthConfig(encoder=encoder)
    return VideoDepthConfig(encoder=encoder, **TINY_ARCH,
                            tracktention=TracktentionConfig(inner_dim=32, num_heads=2))


def build_model(encoder: str, device: torch.device, tiny: bool = False, seed: int = 0) -> VideoDepthAnything:
    """Video depth model with random weights and non-zero Tracktention output projections."""
    torch.manual_seed(seed)
    model = VideoDepthAnything(model_config(encoder, tiny))
    with torch.no_grad():
        for layer in model.tracktention.layers.values():
            layer.out_proj.weight.normal_(0.0, 0.02)
            layer.out_proj.bias.normal_(0.0, 0.02)
    return model.to(device)


def make_clip(frames: int, size: int, tracks: int, visible: float, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(1, frames, 3, size, size, generator=g) * 255
    points = torch.rand(1, frames, tracks, 2, generator=g) * (size - 1)
    vis = torch.rand(1, frames, tracks, generator=g) < visible
    return video.to(device), points.to(device), vis.to(device)


def step_fn(model: VideoDepthAnything, variant: str, mode: str, clip, autocast):
    """One forward (no grad) or training step (forward + backward) of a variant: IMAGE or an attention impl."""
    video, points, vis = clip

    def run() -> torch.Tensor:
        with autocast():
            if variant == IMAGE:
                return model.forward_image(video)
            return model(video, points, vis)

    if mode == "forward":
        def forward() -> None:
            with torch.no_grad():
                run()
        return forward

    def train() -> None:
        model.zero_grad(set_to_none=True)
        run().float().mean().backward()
    return train


def prepare(model: VideoDepthAnything, variant: str, mode: str) -> None:
    if variant != IMAGE:
        set_attention(model, variant)
    model.train(mode == "train")


def time_cases(model, variants: list[str], mode: str, clip, repeats: int, timer: Timer,
               autocast) -> dict[str, dict[str, float]]:
    """Per variant: median wall and CPU seconds per call, and the median over repeats of its time
    over the image model's in the same repeat (the variants alternate within every repeat)."""
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for variant in variants:  # warm-up
        prepare(model, variant, mode)
        step_fn(model, variant, mode, clip, autocast)()
    for _ in range(repeats):
        for variant in variants:
            prepare(model, variant, mode)
            times[variant].append(timer(step_fn(model, variant, mode, clip, autocast)))
    model.zero_grad(set_to_none=True)
    base = times[IMAGE]
    return {v: {"wall_s": statistics.median(w for w, _ in t), "cpu_s": statistics.median(c for _, c in t),
                "wall_ratio": statistics.median(w / b[0] for (w, _), b in zip(t, base)),
                "cpu_ratio": statistics.median(c / b[1] for (_, c), b in zip(t, base))}
            for v, t in times.items()}


def cuda_peak(model, variant: str, mode: str, clip, autocast) -> dict[str, float]:
    """Peak allocated GiB during one step (after a warm-up) and its increase over the memory held before."""
    prepare(model, variant, mode)
    fn = step_fn(model, variant, mode, clip, autocast)
    fn()
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    model.zero_grad(set_to_none=True)
    return {"peak_gib": peak / 2**30, "step_gib": (peak - before) / 2**30}


def cpu_peak_worker(args: argparse.Namespace) -> dict[str, float]:
    """In a fresh process: one warm-up step, then the resident-set high-water mark over one step."""
    device = torch.device("cpu")
    model = build_model(args.encoders[0], device, args.tiny)
    clip = make_clip(args.frames, args.size, args.tracks[0], args.visible, device)
    autocast = autocast_factory(device, args.dtype)
    prepare(model, args.variant, args.modes[0])
    fn = step_fn(model, args.variant, args.modes[0], clip, autocast)
    fn()
    model.zero_grad(set_to_none=True)
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    before = proc_kib("VmRSS")
    fn()
    peak = proc_kib("VmHWM")
    return {"peak_gib": peak / 2**20, "step_gib": (peak - before) / 2**20}


def cpu_peak(args: argparse.Namespace, encoder: str, variant: str, mode: str, tracks: int) -> dict[str, float] | None:
    cmd = [sys.executable, __file__, "--worker", "--encoders", encoder, "--variant", variant, "--modes", mode,
           "--tracks", str(tracks), "--size", str(args.size), "--frames", str(args.frames),
           "--visible", str(args.visible), "--dtype", args.dtype] + (["--tiny"] if args.tiny else [])
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")  # freed blocks go back to the OS (see the docstring)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"  memory case {encoder}/{variant}/{mode}/{tracks} failed: "
              f"{(done.stderr.strip().splitlines() or ['?'])[-1][:160]}", flush=True)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def autocast_factory(device: torch.device, dtype: str):
    if dtype == "fp32":
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def count_flops(encoder: str, size: int, frames: int, tracks: int, tiny: bool = False) -> tuple[int, int]:
    """FLOPs of one clip through the image model and the video model (dense attention), counted on
    the meta device (no memory, no time): the device-independent share of Tracktention."""
    with torch.device("meta"):
        model = VideoDepthAnything(model_config(encoder, tiny)).eval()
        video = torch.empty(1, frames, 3, size, size)
        points = torch.empty(1, frames, tracks, 2)
        visible = torch.ones(1, frames, tracks, dtype=torch.bool)
    set_attention(model, "dense")  # the windowed path needs values (its windows depend on the data)
    counts = []
    for run in (lambda: model.forward_image(video), lambda: model(video, points, visible)):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            run()
        counts.append(counter.get_total_flops())
    return counts[0], counts[1]


def bench_tracker(frames: int, size: int, queries: int, resolution: tuple[int, int], repeats: int,
                  device: torch.device) -> float:
    from models.cotracker3 import CoTrackerThree, CoTrackerThreeConfig
    from models.cotracker3_predictor import CoTrackerThreePredictor, TrackPreprocessor

    torch.manual_seed(0)
    model = CoTrackerThree(CoTrackerThreeConfig(variant="offline", model_resolution=resolution)).to(device).eval()
    pre = TrackPreprocessor(CoTrackerThreePredictor(model, iters=6, support_grid_size=0), queries)
    video = torch.rand(1, frames, 3, size, size, device=device) * 255
    pre(video)  # warm-up
    timer = Timer(device)
    return statistics.median(timer(lambda: pre(video))[0] for _ in range(repeats))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["vits", "vitb"])
    parser.add_argument("--size", type=int, default=518, help="square frame size (multiple of 14)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--tracks", type=int, nargs="+", default=None, help="track counts (default 576)")
    parser.add_argument("--visible", type=float, default=0.8, help="fraction of visible track points")
    parser.add_argument("--attention", nargs="+", default=list(ATTENTION_IMPLS), choices=ATTENTION_IMPLS)
    parser.add_argument("--modes", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 = autocast")
    parser.add_argument("--memory", action="store_true", help="also the peak memory of every case")
    parser.add_argument("--tracker", action="store_true", help="also time CoTracker3 track pre-extraction")
    parser.add_argument("--queries", type=int, default=576, help="track pre-extraction queries")
    parser.add_argument("--tracker-resolution", type=int, nargs=2, default=[384, 512])
    parser.add_argument("--flops-only", action="store_true", help="only the FLOP table (instant, any machine)")
    parser.add_argument("--quick", action="store_true",
                        help="518x518, 16 frames, vits + vitb, forward + train, memory, 3 repeats (576 tracks "
                             "unless --tracks)")
    parser.add_argument("--json", help="write every measured row to this file")
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny architecture: exercises the script, measures nothing")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:  # the published setting; --tracks may add counts
        args.encoders, args.size, args.frames = ["vits", "vitb"], 518, 16
        args.modes, args.memory, args.repeats = ["forward", "train"], True, 3
    args.tracks = args.tracks or [576]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(cpu_peak_worker(args)))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")

    rows: list[dict[str, object]] = []
    print(f"FLOPs per clip ({args.frames} x {args.size}x{args.size}, dense attention), counted by FlopCounterMode\n")
    print("| encoder | tracks | image model TFLOP | video model TFLOP | FLOP overhead |")
    print("|---|---|---|---|---|")
    for encoder in args.encoders:
        for m in args.tracks:
            image, video = count_flops(encoder, args.size, args.frames, m, args.tiny)
            print(f"| {encoder} | {m} | {image / 1e12:.2f} | {video / 1e12:.2f} | {video / image - 1:+.1%} |",
                  flush=True)
            rows.append({"kind": "flops", "encoder": encoder, "tracks": m, "image_flops": image, "video_flops": video})
    if not args.flops_only:
        device = torch.device(args.device)
        name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        autocast = autocast_factory(device, args.dtype)
        variants = [IMAGE] + list(args.attention)
        print(f"\ndevice: {name}; clip {args.frames} x {args.size}x{args.size}; {args.dtype}; {args.visible:.0%} of "
              f"track points visible; non-zero output projections; median of {args.repeats}, variants interleaved\n")
        cpu = device.type == "cpu"
        print("Overhead: median over repeats of (video / image model in the same repeat) - 1"
              + ("; wall time, and process CPU time in brackets" if cpu else "") + ".\n")
        print("| encoder | tracks | mode | image params | + Tracktention | " + " | ".join(
            f"{v} s" for v in variants) + " | " + " | ".join(f"{v} overhead" for v in args.attention) + " |")
        print("|" + "---|" * (5 + len(variants) + len(args.attention)))
        timer = Timer(device)
        for encoder in args.encoders:
            model = build_model(encoder, device, args.tiny)
            for m in args.tracks:
                clip = make_clip(args.frames, args.size, m, args.visible, device)
                for mode in args.modes:
                    secs = time_cases(model, variants, mode, clip, args.repeats, timer, autocast)
                    row = {"kind": "latency", "encoder": encoder, "tracks": m, "mode": mode, "device": name,
                           "dtype": args.dtype, "seconds": secs}
                    rows.append(row)
                    print(f"| {encoder} | {m} | {mode} | {count_parameters(model.image) / 1e6:.1f} M | "
                          f"{count_parameters(model.tracktention) / 1e6:.1f} M | "
                          + " | ".join(f"{secs[v]['wall_s']:.3f}" for v in variants) + " | "
                          + " | ".join(f"{secs[v]['wall_ratio'] - 1:+.1%}"
                                       + (f" ({secs[v]['cpu_ratio'] - 1:+.1%})" if cpu else "")
                                       for v in args.attention) + " |", flush=True)
            if args.memory:
                for m in args.tracks:
                    clip = make_clip(args.frames, args.size, m, args.visible, device)
                    for mode in args.modes:
                        peaks = {}
                        for variant in variants:
                            peaks[variant] = (cuda_peak(model, variant, mode, clip, autocast) if device.type == "cuda"
                                              else cpu_peak(args, encoder, variant, mode, m))
                        rows.append({"kind": "memory", "encoder": encoder, "tracks": m, "mode": mode, "peaks": peaks})
                        base = peaks[IMAGE]
                        text = " | ".join(
                            "failed" if p is None else f"{variant}: {p['peak_gib']:.2f} GiB peak, {p['step_gib']:.2f} "
                            "in the step" + ("" if base is None or variant == IMAGE else
                                             f" ({p['peak_gib'] / base['peak_gib'] - 1:+.1%} peak, "
                                             f"{p['step_gib'] / max(base['step_gib'], 1e-9) - 1:+.1%} step)")
                            for variant, p in peaks.items())
                        print(f"memory {encoder} {m} tracks {mode}: {text}", flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if args.tracker:
            seconds = bench_tracker(args.frames, args.size, args.queries, tuple(args.tracker_resolution),
                                    args.repeats, device)
            rows.append({"kind": "tracker", "seconds": seconds})
            print(f"\ntrack pre-extraction (CoTracker3 offline, {args.queries} random space-time queries, both "
                  f"directions, model resolution {tuple(args.tracker_resolution)}): {seconds:.3f} s per "
                  f"{args.frames}-frame clip")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
