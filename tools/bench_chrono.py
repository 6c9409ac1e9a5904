"""Chrono vs CoTracker3 (its predictor): points per second, same clip, one run.

    python tools/bench_chrono.py --backbone vitb14 --feature-grid 64 --frames 24 --points 256 --size 256
    python tools/bench_chrono.py --backbone vits14 --feature-grid 16 --frames 8 --points 64   # small CPU run

Both models get random weights (their cost does not depend on the values), the same video
(B=1, T frames, size x size, 0..255) and the same queries, under torch.no_grad() in float32
on one device. Chrono runs its full inference (DINOv2 + adapters at feature_grid * 14 pixels,
correlation, soft-argmax, occlusion head); CoTracker3 runs CoTrackerThreePredictor with
the published architecture, `--iters` refinement iterations and no support grid. One warm-up
call each, then the median of `--repeats` timed calls. Points per second = tracked query points
/ seconds for the whole clip. Also prints the trainable parameters Chrono adds to DINOv2 ViT-S
and ViT-B (paper: 16.2M and 26.0M). The paper's 12.5x (Chrono ViT-B vs TAPIR) is a GPU figure.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from models.chrono import Chrono, ChronoConfig
from models.cotracker3 import CoTrackerThree, CoTrackerThreeConfig
from models.cotracker3_predictor import CoTrackerThreePredictor


def adapter_parameters(backbone: str) -> int:
    with torch.device("meta"):  # counts only: no memory, no initialisation
        return Chrono(ChronoConfig(backbone=backbone)).adapter_parameter_count()


def median_seconds(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up: allocator, kernels, position-embedding interpolation
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="vitb14", choices=["vits14", "vitb14"])
    parser.add_argument("--feature-grid", type=int, default=64, help="Chrono tokens per side (64 = published 896 px)")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--points", type=int, default=256)
    parser.add_argument("--size", type=int, default=256, help="video height and width")
    parser.add_argument("--cotracker-variant", default="online", choices=["online", "offline"])
    parser.add_argument("--cotracker-resolution", type=int, nargs=2, default=[384, 512], metavar=("H", "W"))
    parser.add_argument("--iters", type=int, default=6, help="CoTracker3 refinement iterations (evaluation: 6)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    video = (torch.rand(1, args.frames, 3, args.size, args.size, generator=gen) * 255).to(device)
    queries = torch.cat([
        torch.randint(0, args.frames, (1, args.points, 1), generator=gen).float(),
        torch.rand(1, args.points, 2, generator=gen) * (args.size - 1),
    ], dim=-1).to(device)

    torch.manual_seed(0)
    chrono = Chrono(ChronoConfig(backbone=args.backbone, feature_grid=args.feature_grid)).to(device).eval()
    cotracker = CoTrackerThree(CoTrackerThreeConfig(variant=args.cotracker_variant,
                                                    model_resolution=tuple(args.cotracker_resolution)))
    predictor = CoTrackerThreePredictor(cotracker.to(device).eval(), iters=args.iters, support_grid_size=0)

    with torch.no_grad():
        chrono_s = median_seconds(lambda: chrono(video, queries), args.repeats, sync)
        # The online model tracks forwards only; evaluation fills earlier frames by running backwards.
        backward = args.cotracker_variant == "online"
        cotracker_s = median_seconds(lambda: predictor(video, queries, backward_tracking=backward), args.repeats, sync)

    name = {"vits14": "ViT-S/14", "vitb14": "ViT-B/14"}[args.backbone]
    side = args.feature_grid * 14
    print(f"\nclip: {args.frames} frames x {args.size}x{args.size}, {args.points} query points at random frames, "
          f"device {device}, torch threads {torch.get_num_threads()}\n")
    print("| model | seconds / clip | points / s | ratio |")
    print("|---|---:|---:|---:|")
    base = args.points / cotracker_s
    rows = [
        (f"CoTracker3 {args.cotracker_variant} ({args.iters} iters, {args.cotracker_resolution[0]}x"
         f"{args.cotracker_resolution[1]}{', + backward pass' if backward else ''})", cotracker_s),
        (f"Chrono {name} ({side}x{side} input, {args.feature_grid}x{args.feature_grid} tokens)", chrono_s),
    ]
    for label, seconds in rows:
        pts = args.points / seconds
        print(f"| {label} | {seconds:.3f} | {pts:.1f} | {pts / base:.2f}x |")
    print("\n| backbone | Chrono adapter + head parameters | paper |")
    print("|---|---:|---:|")
    for backbone, paper in (("vits14", "16.2M"), ("vitb14", "26.0M")):
        print(f"| {backbone} | {adapter_parameters(backbone):,} | {paper} |")


if __name__ == "__main__":
    main()
