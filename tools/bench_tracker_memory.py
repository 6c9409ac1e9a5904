"""Peak memory of one CoTracker3 training step for clip lengths T, 2T, 4T, with and without checkpointing.

    python tools/bench_tracker_memory.py [--variant online] [--frames 16] [--points 64] \
        [--height 128 --width 160] [--preset reduced|full] [--device cpu|cuda]

Each (clip length, mode) runs in a fresh subprocess: build the model and the clip, then
one forward_train + loss + backward, and report the peak *increase* over the memory held
before the step.
- CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus the
  allocated bytes before the step (exact tensor bytes).
- CPU: the process's resident-set high-water mark. After setup the kernel's mark is reset
  by writing 5 to /proc/self/clear_refs, and the step's peak is VmHWM minus the VmRSS at that
  moment (Linux /proc/self/status). This counts every page touched: tensors, allocator
  slack, one-time kernel workspaces; tracemalloc would not see tensor memory at all. The
  fresh process per run keeps one run's cached pages out of another's. Workers run with
  MALLOC_MMAP_THRESHOLD_=131072 so that glibc serves large blocks with mmap and returns
  them on free; with its default (a threshold that rises after frees) freed tensor blocks
  stay in the heap and RSS keeps growing with the number of allocations made, not with
  live memory. ``--glibc-default`` measures without it.
The loss is a stand-in that touches every output (coords, vis and conf logits of every
iteration and window); the real loss adds no per-frame state of note.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from models.cotracker3 import CoTrackerThree

PRESETS = {
    "reduced": dict(latent_dim=32, hidden_size=64, num_heads=4, time_depth=2, space_depth=2, num_virtual_tracks=16,
                    corr_levels=3, corr_radius=2, corr_hidden_dim=128, corr_out_dim=64),
    "full": {},
}


def proc_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1))


def worker(args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = CoTrackerThree(variant=args.variant, model_resolution=(args.height, args.width),
                           activation_checkpointing=args.checkpointing, **PRESETS[args.preset]).to(device).train()
    g = torch.Generator().manual_seed(1)
    video = (torch.rand(1, args.frames, 3, args.height, args.width, generator=g) * 255).to(device)
    t = torch.randint(0, args.frames, (1, args.points, 1), generator=g).float()
    xy = torch.rand(1, args.points, 2, generator=g) * torch.tensor([args.width - 1.0, args.height - 1.0])
    queries = torch.cat([t, xy], dim=-1).to(device)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the resident-set high-water mark
        before = proc_kib("VmRSS") * 1024
    windows = model.forward_train(video, queries, iters=args.iters)
    loss = sum(c.abs().mean() + torch.nn.functional.softplus(v).mean() + torch.nn.functional.softplus(f).mean()
               for w in windows for c, v, f in zip(w.coords, w.vis_logits, w.conf_logits))
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = proc_kib("VmHWM") * 1024
    return {"frames": args.frames, "windows": len(windows), "peak_mib": (peak - before) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="online", choices=("online", "offline"))
    parser.add_argument("--preset", default="reduced", choices=sorted(PRESETS))
    parser.add_argument("--frames", type=int, default=16, help="shortest clip; 2x and 4x are measured too")
    parser.add_argument("--points", type=int, default=64)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--glibc-default", action="store_true", help="keep glibc's dynamic mmap threshold")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    base = [sys.executable, __file__, "--worker", "--variant", args.variant, "--preset", args.preset,
            "--points", str(args.points), "--height", str(args.height), "--width", str(args.width),
            "--iters", str(args.iters), "--device", args.device]
    env = dict(os.environ)
    if not args.glibc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    measure = "cuda max_memory_allocated" if args.device.startswith("cuda") else "RSS high-water mark (/proc)"
    print(f"{args.variant} {args.preset} model, N={args.points}, {args.height}x{args.width}, iters={args.iters}, "
          f"device {args.device}; peak increase during one training step, {measure}")
    print(f"{'frames':>6} {'windows':>7} {'plain MiB':>10} {'x vs T':>7} {'ckpt MiB':>9} {'x vs T':>7} {'ckpt/plain':>10}")
    first: dict[bool, float] = {}
    for scale in (1, 2, 4):
        frames = args.frames * scale
        row = {}
        for checkpointing in (False, True):
            cmd = base + ["--frames", str(frames)] + (["--checkpointing"] if checkpointing else [])
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip()
                                .splitlines()[-1])
            row[checkpointing] = result
            first.setdefault(checkpointing, result["peak_mib"])
        plain, ckpt = row[False]["peak_mib"], row[True]["peak_mib"]
        print(f"{frames:>6} {row[True]['windows']:>7} {plain:>10.1f} {plain / first[False]:>7.2f} "
              f"{ckpt:>9.1f} {ckpt / first[True]:>7.2f} {ckpt / plain:>10.2f}")


if __name__ == "__main__":
    main()
