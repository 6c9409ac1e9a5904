"""Training-step speed and peak memory per family, for the GPU-efficiency options, in one run.

    python tools/bench_train_step.py                                   # every family, tiny CPU-demo configs
    python tools/bench_train_step.py --model-size published --steps 20 # published configs (GPU)
    python tools/bench_train_step.py --families taptrv2 --override data.batch_size=4 --json out.json
    python tools/bench_train_step.py --model-size published --variants bf16 bf16_compile --budget-s 200 \
        --case-timeout-s 90 --json out.json          # time-capped: cases past the budget are skipped

Cases run variant by variant (every family's fp32 first, then the next variant), so a time budget
cuts the least essential ones; `--json` is rewritten after every case, so a killed run keeps its rows.

Each family's LightningModule is built exactly as train.py builds it (configs/loader.py, then
train.build_module), and one real batch is drawn from the family's own DataModule on the embedded
synthetic data (sized to the config's crop and clip length; on-device augmentation is left out,
it is the data pipeline's cost, not the network's). A Lightning Trainer then runs full training
steps on that batch: the module's training_step (forward + loss), backward, gradient clipping,
its configure_optimizers optimiser and scheduler step, and its default callbacks (e.g. EMA).
`trainer.accumulate_grad_batches` is set to 1, so every step is an optimiser step.

Variants (each in a fresh subprocess, so one variant's caches and peak never leak into another):
- fp32: precision 32-true, attention through PyTorch's default SDPA backend choice (fused where
  it applies); the baseline every ratio is taken against, measured in the same run;
- sdpa_math: fp32 with scaled-dot-product attention forced onto the unfused MATH backend, i.e.
  what fused attention saves is fp32 / sdpa_math;
- bf16: precision bf16-mixed (torch.autocast on the device), as train.py's `precision: auto` on GPUs;
- channels_last: fp32 with `trainer.channels_last=true` (skipped when the network has no conv);
- compile: fp32 with `trainer.compile=true` (default on CUDA only: compiling takes minutes on a CPU);
- bf16_compile: bf16-mixed with `trainer.compile=true`, what `precision: auto` and compile give on GPUs
  (not in the default set).

float32 matmuls may use TF32, as train.py allows them (`torch.set_float32_matmul_precision("high")`).

Time: median over `--steps` steps after `--warmup` steps, with the device synchronised around each
step. MFU: the FLOPs of one training step (forward, backward, optimiser, as executed; counted once by
`torch.utils.flop_counter` during the first warm-up step, and for compiled variants taken from the
family's uncompiled rows) times steps/s, over the GPU's peak dense rate for the variant's precision
(callbacks/throughput.py; bf16, else TF32); CPUs have no peak, so no MFU. Peak memory, measured over
the timed steps only:
- CUDA: torch.cuda.max_memory_allocated after a reset at the end of warm-up: weights, gradients,
  optimiser state and activations;
- CPU: the resident-set high-water mark (/proc, reset after warm-up as in
  tools/bench_tracker_memory.py) minus the resident set at that moment: activations and
  temporaries, since weights and optimiser state are already resident.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from callbacks.throughput import peak_flops, precision_kind
from tools.bench_tracker_memory import proc_kib

FAMILIES = ("cotracker3", "chrono", "taptrv2", "video_depth", "colorization")
# Config overrides per family; the tiny ones are the CPU demo experiments, trained from scratch.
PRESETS: dict[str, dict[str, list[str]]] = {
    "tiny": {
        "cotracker3": [],  # train.yaml's default: cotracker3_tiny on the synthetic data
        "chrono": ["experiment=chrono_tiny_synthetic"],
        "taptrv2": ["experiment=taptrv2_tiny_synthetic"],
        "video_depth": ["experiment=depth_anything_tiny_synthetic", "model.init_from=null"],
        # A frozen colorizer without init_from is refused; training it too costs more, not less.
        "colorization": ["experiment=colorization_tiny_synthetic", "model.init_from=null", "model.freeze=[]"],
    },
    "published": {
        "cotracker3": ["experiment=cotracker3_kubric"],
        "chrono": ["experiment=chrono_vits_kubric"],
        "taptrv2": ["experiment=taptrv2_kubric"],
        "video_depth": ["experiment=depth_anything_vits_tracktention", "model.init_from=null"],
        # init_from is required to fit a frozen colorizer; random weights cost the same.
        "colorization": ["experiment=colorization_ddcolor_tracktention", "model.freeze=[]"],
    },
}
PRECISION = {"fp32": "32-true", "sdpa_math": "32-true", "bf16": "bf16-mixed", "channels_last": "32-true",
             "compile": "32-true", "bf16_compile": "bf16-mixed"}
CONFIG_FLAGS = {"channels_last": ["trainer.channels_last=true"], "compile": ["trainer.compile=true"],
                "bf16_compile": ["trainer.compile=true"]}
COMPILED = ("compile", "bf16_compile")
MIN_CASE_S = 10.0  # a case is not started with less time left than this


def family_overrides(family: str, size: str, cache_dir: str, extra: list[str]) -> list[str]:
    """Config overrides for one family: its preset, synthetic data instead of shards, no logging."""
    bench = ["logger=none", "trainer.devices=1", "trainer.accumulate_grad_batches=1", "data.train_shards=null",
             "data.val_shards=null", f"data.synthetic.cache_dir={cache_dir}", "data.num_workers=0",
             "data.shuffle_buffer=1", "data.synthetic.num_val_clips=1"]
    from configs.loader import override_args

    return override_args(PRESETS[size][family] + bench, extra)


def load_bench_config(overrides: list[str]) -> Any:
    """The resolved config, with the synthetic clips sized to the config's crop, clip length and batch."""
    from configs.loader import override_args
    from train import load_config

    _, cfg = load_config(overrides)
    d = cfg.data
    points = d.get("num_queries", d.get("num_tracks", 0))
    sized = [f"data.synthetic.num_train_clips={d.batch_size}",
             f"data.synthetic.num_frames={max(d.clip_len, d.synthetic.num_frames)}",
             # Twice the points: a query must be visible at the clip's first or middle frame, and the
             # synthetic scenes hide about a third of their points there (occluders, leaving the view).
             f"data.synthetic.num_tracks={max(2 * points, d.synthetic.num_tracks)}"]
    if d.crop_hw is not None:
        sized += [f"data.synthetic.height={d.crop_hw[0]}", f"data.synthetic.width={d.crop_hw[1]}"]
    return load_config(override_args(sized, overrides))[1]  # the caller's overrides win


def training_batch(cfg: Any) -> dict[str, torch.Tensor]:
    """One training batch from the family's own DataModule (synthetic clips), as the model receives it."""
    from train import build_datamodule

    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    return dm.on_after_batch_transfer(batch, 0)  # dtype conversion; no trainer, so no augmentation


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(Callback):
    """Timing each training batch and the peak memory after `warmup` batches; with `count_flops`, the
    FLOPs of the first batch (a warm-up batch, so the counter's overhead is never timed)."""

    def __init__(self, warmup: int, device: torch.device, count_flops: bool = False) -> None:
        self.warmup, self.device = warmup, device
        self.count_flops = count_flops and warmup > 0
        self.times: list[float] = []
        self.before = 0
        self.peak = 0
        self.flops: int | None = None
        self._counter: FlopCounterMode | None = None

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        if self.count_flops and batch_idx == 0:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
        sync(self.device)
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        sync(self.device)
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops = self._counter.get_total_flops()
            self._counter = None
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self.start)
        if batch_idx == self.warmup - 1:  # optimiser state now exists: measure only the steady state
            self.before = self._reset_peak()

    def on_train_end(self, trainer: Any, module: Any) -> None:
        sync(self.device)
        self.peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" \
            else proc_kib("VmHWM") * 1024 - self.before

    def _reset_peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return 0
        Path("/proc/self/clear_refs").write_text("5")  # reset the resident-set high-water mark
        return proc_kib("VmRSS") * 1024


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    """One (family, variant) in this process: steps/s and peak memory, or the reason it was skipped."""
    import lightning as L
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from models.memory_format import has_4d_weights
    from train import build_module, resolve_precision

    overrides = family_overrides(args.family, args.model_size, args.cache_dir, args.override)
    from configs.loader import override_args

    cfg = load_bench_config(override_args(overrides, CONFIG_FLAGS.get(args.variant, [])))
    L.seed_everything(cfg.seed, verbose=False)
    torch.set_float32_matmul_precision("high")  # as train.py: float32 matmuls may use TF32
    module = build_module(cfg)
    if args.variant == "channels_last" and not has_4d_weights(module.model):
        return {"skipped": "no 4-d conv weights"}
    batch = training_batch(cfg)
    device = torch.device(args.device)
    # The counter cannot trace a compiled graph; a compiled step does the FLOPs of the uncompiled one.
    timer = StepTimer(args.warmup, device, count_flops=args.variant not in COMPILED)
    precision = resolve_precision(PRECISION[args.variant])
    trainer = L.Trainer(
        accelerator=device.type, devices=1, precision=precision,
        max_steps=args.warmup + args.steps, limit_val_batches=0, num_sanity_val_steps=0,
        gradient_clip_val=cfg.trainer.gradient_clip_val, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )
    attention = sdpa_kernel(SDPBackend.MATH) if args.variant == "sdpa_math" else nullcontext()
    with attention:
        # batch_size=None: the loader hands over the ready batch as is, every step.
        trainer.fit(module, train_dataloaders=DataLoader([batch] * (args.warmup + args.steps), batch_size=None))
    peak = peak_flops(device, precision_kind(precision))
    return {"steps_per_s": 1.0 / statistics.median(timer.times), "peak_mib": timer.peak / 2**20,
            "flops_per_step": timer.flops, "peak_tflops": peak / 1e12 if peak else None}


def run_in_subprocess(family: str, variant: str, args: argparse.Namespace, timeout: float | None = None
                      ) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", "--family", family, "--variant", variant,
           "--model-size", args.model_size, "--warmup", str(args.warmup), "--steps", str(args.steps),
           "--device", args.device, "--cache-dir", args.cache_dir]
    cmd += [f"--override={o}" for o in args.override] + (["--threads", str(args.threads)] if args.threads else [])
    # glibc returns large freed blocks to the OS, so RSS tracks live memory (see bench_tracker_memory.py).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        return {"failed": lines[-1][:160], "traceback": "\n".join(lines[-30:])}
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Steps/s and peak memory of each row relative to its family's fp32 row from the same run, and the
    achieved TFLOP/s and MFU (a compiled row takes the FLOPs counted in its family's uncompiled rows)."""
    base = {r["family"]: r for r in rows if r["variant"] == "fp32" and "steps_per_s" in r}
    counted = {r["family"]: r["flops_per_step"] for r in rows if r.get("flops_per_step")}
    for r in rows:
        if "steps_per_s" not in r:
            continue
        flops = r.get("flops_per_step") or counted.get(r["family"])
        if flops:
            r["tflops_per_s"] = flops * r["steps_per_s"] / 1e12
            if r.get("peak_tflops"):
                r["mfu"] = r["tflops_per_s"] / r["peak_tflops"]
        b = base.get(r["family"])
        if b is None:
            continue
        r["speed_ratio"] = r["steps_per_s"] / b["steps_per_s"]
        r["memory_ratio"] = r["peak_mib"] / b["peak_mib"] if b["peak_mib"] > 0 else math.nan


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| family | variant | steps/s | x vs fp32 | peak MiB | x vs fp32 | TFLOP/s | MFU | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "steps_per_s" in r:
            tflops = f"{r['tflops_per_s']:.1f}" if "tflops_per_s" in r else ""
            mfu = f"{r['mfu']:.1%}" if "mfu" in r else ""
            lines.append(f"| {r['family']} | {r['variant']} | {r['steps_per_s']:.3f} "
                         f"| {r.get('speed_ratio', math.nan):.2f} | {r['peak_mib']:.1f} "
                         f"| {r.get('memory_ratio', math.nan):.2f} | {tflops} | {mfu} | |")
        else:
            note = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r['failed']}"
            lines.append(f"| {r['family']} | {r['variant']} | | | | | | | {note} |")
    return "\n".join(lines)


def write_json(path: str, name: str, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps({"device": name, "args": vars(args), "rows": rows}, indent=1))
    tmp.replace(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--model-size", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--variants", nargs="+", choices=sorted(PRECISION),
                        help="default: all; compile only on CUDA (it takes minutes on a CPU)")
    parser.add_argument("--override", action="append", default=[], help="config key=value, e.g. data.batch_size=4")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "tracklight_bench_train_step"),
                        help="synthetic clips are generated here once and reused")
    parser.add_argument("--json", help="also write the rows to this file (after every case)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no case after this many seconds; the rest are reported as skipped")
    parser.add_argument("--case-timeout-s", type=float, default=None, help="stop a case that runs longer")
    parser.add_argument("--family-major", action="store_true",
                        help="run each family's variants together (default: each variant over all families)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variants is None:
        args.variants = ["fp32", "sdpa_math", "bf16", "channels_last"] + (["compile"] if args.device == "cuda" else [])
    else:  # ratios need the baseline from the same run, and it runs first
        args.variants = ["fp32", *[v for v in args.variants if v != "fp32"]]
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every (family, variant), print the markdown table, and return its rows."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:  # child process: one case, JSON on the last line
        print(json.dumps(run_variant(args)))
        return []
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; {args.model_size} configs; median of {args.steps} steps after {args.warmup} warm-up; "
          f"overrides {args.override or 'none'}\n", flush=True)
    order = {(f, v): i for i, (f, v) in enumerate((f, v) for f in args.families for v in args.variants)}
    deadline = time.monotonic() + args.budget_s if args.budget_s is not None else math.inf
    rows = []
    # Default: every family's baseline first, so a budget cuts the optional variants. --family-major: one
    # family's variants after another, so a budget leaves complete ratios for the families it reached.
    cases = ([(f, v) for f in args.families for v in args.variants] if args.family_major
             else [(f, v) for v in args.variants for f in args.families])
    for family, variant in cases:
        left = deadline - time.monotonic()
        if left < MIN_CASE_S:
            result = {"skipped": "time budget spent"}
        else:
            timeout = min(args.case_timeout_s or math.inf, left)
            result = run_in_subprocess(family, variant, args, None if math.isinf(timeout) else timeout)
        rows.append({"family": family, "variant": variant, **result})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # progress: a long run keeps finished rows
        if args.json:
            write_json(args.json, name, args, rows)
    rows.sort(key=lambda r: order[(r["family"], r["variant"])])
    add_ratios(rows)
    print(markdown_table(rows), flush=True)
    if args.json:
        write_json(args.json, name, args, rows)
    return rows


if __name__ == "__main__":
    main()
