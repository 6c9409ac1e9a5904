"""GPU validation in one run (issue 19): every check on one GPU within a time budget, one JSON of results.

    python tools/gpu_check.py --out DIR                  # one GPU, about --budget-s (480) seconds
    python tools/gpu_check.py --out DIR --cpu            # the same code paths at tiny sizes on the CPU

Parts, each with its own time limit and its own status (ok / failed, with the traceback or the tool's
last output / skipped, with the reason); a failing part never stops the others:

- gpu_tests: `python -m pytest -m gpu` over the test files that hold GPU tests (tests/test_gpu.py:
  bf16 training steps, bf16 vs float32, fused attention and torch.compile for every family), with
  every test's outcome and time;
- taptrv2_demo: `train.py experiment=taptrv2_tiny_synthetic` at 256x256 model resolution, CSV logger,
  trained for as long as the part's time allows (`trainer.max_time`), validated every 500 steps and at
  the stop: val AJ, delta_avg and OA against the zero-motion baseline of the same clips;
- tracktention_latency: tools/bench_video_depth.py at 518x518, 16 frames, 576 tracks, bf16: latency of
  the video model over the image model (its markdown tables, parsed);
- train_step_bench: tools/bench_train_step.py --model-size published: steps/s, peak memory and MFU per
  family for fp32, bf16 and bf16 + torch.compile, as many cases as the remaining time allows.

gpu_tests and taptrv2_demo run side by side (neither is a timing); the timed parts run alone after
them. DIR receives gpu_check.json (rewritten whenever a part changes state, so a killed run keeps
what finished) and gpu_check.log (everything printed, as it is printed) and nothing else; scratch files
(synthetic clips, run folders) go to --work-dir, by default a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("gpu_tests", "taptrv2_demo", "tracktention_latency", "train_step_bench")
MIN_PART_S = 15.0  # a part is not started with less time than this left


@dataclass
class Sizes:
    """What each part runs: published sizes on a GPU, tiny ones on a CPU."""

    device: str
    demo: list[str]  # train.py overrides added to the demo's
    demo_overhead_s: float  # the demo's start-up, data generation and last validation, outside max_time
    demo_max_train_s: float | None  # cap on the demo's training time (None: all the part's time)
    latency: list[str]  # tools/bench_video_depth.py arguments besides --device/--dtype
    bench: list[str]  # tools/bench_train_step.py arguments
    bench_case_timeout_s: float
    shares: dict[str, float] = field(default_factory=lambda: {
        "gpu_tests": 0.35, "taptrv2_demo": 0.55, "tracktention_latency": 0.1})


GPU = Sizes(
    device="cuda",
    # float32 (TF32 matmuls) as the published TAPTRv2 recipe; 1000-step checkpoints are enough here.
    demo=["model.arch.model_resolution=[256,256]", "trainer.precision=32-true", "trainer.val_check_interval=500",
          "data.num_workers=4", "checkpoint.every_n_steps=1000"],
    demo_overhead_s=90.0,  # imports, its 416 synthetic clips (0.1-0.2 s each on a CPU core), last validation
    demo_max_train_s=None,
    # 518x518, 16 frames, ViT-S and ViT-B, forward and training step, memory; windowed and dense attention.
    latency=["--quick", "--tracks", "576", "2048"],
    # Compiled cases run last and in this order, the quickest to compile (by guess) first.
    # One family's fp32 and bf16 after another, the main families first: a spent budget leaves complete
    # ratios. Compilation is covered by the GPU tests (a compiled bf16 run), not timed here.
    bench=["--model-size", "published", "--families", "cotracker3", "video_depth", "chrono", "taptrv2",
           "colorization", "--variants", "fp32", "bf16", "--family-major", "--warmup", "3", "--steps", "6"],
    bench_case_timeout_s=120.0,
)
TINY_TAPTR = ["model.arch.d_model=16", "model.arch.nheads=2", "model.arch.norm_groups=4", "model.arch.enc_layers=1",
              "model.arch.dec_layers=2", "model.arch.dim_feedforward=32", "model.arch.backbone_width=4",
              "model.arch.model_resolution=[32,32]"]
TINY_TRACKING_DATA = ["data.synthetic.height=32", "data.synthetic.width=32", "data.synthetic.num_frames=8",
                      "data.synthetic.num_tracks=32", "data.synthetic.num_train_clips=16",
                      "data.synthetic.num_val_clips=2", "data.clip_len=8", "data.val_clip_len=8",
                      "data.num_queries=8", "data.num_workers=0", "data.shuffle_buffer=2"]
CPU = Sizes(
    device="cpu",
    demo=["trainer.accelerator=cpu", *TINY_TAPTR, *TINY_TRACKING_DATA, "trainer.val_check_interval=100000"],
    demo_overhead_s=20.0,
    demo_max_train_s=4.0,
    latency=["--tiny", "--size", "28", "--frames", "2", "--tracks", "4", "--encoders", "vits", "--repeats", "1"],
    bench=["--model-size", "tiny", "--families", "taptrv2", "--variants", "fp32", "bf16", "--warmup", "1",
           "--steps", "1", "--device", "cpu", "--threads", "1",
           *[f"--override={o}" for o in TINY_TAPTR + ["data.clip_len=8", "data.synthetic.height=32",
                                                      "data.synthetic.width=32"]]],
    bench_case_timeout_s=60.0,
)


class Recorder:
    """The JSON of results and the console log, both written as things happen (thread-safe)."""

    def __init__(self, out: Path, header: dict[str, Any]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.json_path, self.log_path = out / "gpu_check.json", out / "gpu_check.log"
        self.lock = threading.RLock()  # re-entered by the SIGTERM handler, which runs in the main thread
        self.log_file = self.log_path.open("w", buffering=1)
        self.data: dict[str, Any] = {**header, "parts": {p: {"status": "pending"} for p in PARTS}}
        self.children: set[subprocess.Popen] = set()
        self.write()

    def log(self, message: str) -> None:
        with self.lock:
            print(message, flush=True)
            self.log_file.write(message + "\n")

    def set(self, part: str, result: dict[str, Any]) -> None:
        with self.lock:
            self.data["parts"][part] = result
            self._write()

    def update(self, **values: Any) -> None:
        with self.lock:
            self.data.update(values)
            self._write()

    def write(self) -> None:
        with self.lock:
            self._write()

    def _write(self) -> None:
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.json_path)


@dataclass
class Finished:
    returncode: int | None  # None: stopped at its time limit
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])


def run_logged(rec: Recorder, tag: str, cmd: list[str], timeout: float, env: dict[str, str]) -> Finished:
    """Run `cmd` in the repository root, every output line into the log as `[tag] line`; after `timeout`
    seconds its whole process group (DataLoader workers, compile workers) is killed."""
    rec.log(f"[{tag}] $ {' '.join(cmd)}  (time limit {timeout:.0f} s)")
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", bufsize=1, **group)
    rec.children.add(proc)
    lines: deque[str] = deque(maxlen=2000)

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip())
            rec.log(f"[{tag}] {line.rstrip()}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        returncode: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.wait()
        returncode = None
        rec.log(f"[{tag}] stopped at its time limit of {timeout:.0f} s")
    reader.join(timeout=10)
    rec.children.discard(proc)
    return Finished(returncode, list(lines))


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def failure(done: Finished, what: str) -> dict[str, Any]:
    reason = f"{what}: stopped at its time limit" if done.returncode is None else f"{what}: exit code {done.returncode}"
    return {"status": "failed", "reason": reason, "output_tail": done.tail()}


# ------------------------------------------------------------------------------------------ parsing
def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table in `text` as a list of rows, each a dict keyed by the header's cells."""
    tables: list[list[dict[str, str]]] = []
    block: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        stripped = line.strip()
        if stripped.startswith("|") and stripped.endswith("|"):
            block.append([c.strip() for c in stripped[1:-1].split("|")])
            continue
        if len(block) >= 2 and all(re.fullmatch(r":?-+:?", c) for c in block[1]):
            tables.append([dict(zip(block[0], row)) for row in block[2:]])
        block = []
    return tables


def junit_results(path: Path) -> list[dict[str, Any]]:
    """Each test of a pytest --junitxml file: name, outcome, seconds and, if it failed, the message."""
    results = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = ((node.get("message") or "") + "\n" + (node.text or "")).strip()[-3000:]
                break
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        results.append({"test": name, "outcome": outcome, "seconds": float(case.get("time") or 0.0),
                        **({"message": message} if message and outcome != "passed" else {})})
    return results


def read_validations(run_dir: Path) -> tuple[list[dict[str, float]], dict[str, float]]:
    """From the CSV logger's metrics.csv: one row per validation (step, val/* metrics) and the last
    training figures (step, train/loss, perf/step_time_s)."""
    files = sorted(run_dir.glob("logs/version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        return [], {}
    validations, last = [], {}
    with files[-1].open() as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if v not in ("", None) and k}
            if "val/aj" in values:
                validations.append({k: v for k, v in values.items() if k == "step" or k.startswith("val/")})
            elif "train/loss" in values:
                last = {k: values[k] for k in ("step", "train/loss", "perf/step_time_s") if k in values}
    return validations, last


# ------------------------------------------------------------------------------------------ parts
@dataclass
class Context:
    rec: Recorder
    sizes: Sizes
    work: Path
    env: dict[str, str]
    cuda: bool
    parts: set[str]  # the parts selected to run
    gpu_tests_k: str | None = None  # pytest -k expression for the GPU tests

    def python(self, *args: str) -> list[str]:
        return [sys.executable, *args]


def verbose_results(lines: list[str]) -> list[dict[str, Any]]:
    """Outcomes from `pytest -v` lines, for a run stopped before it wrote its JUnit file."""
    found = (re.match(r"(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b", line) for line in lines)
    return [{"test": m[1], "outcome": m[2].lower()} for m in found if m]


def gpu_tests(ctx: Context, timeout: float) -> dict[str, Any]:
    # tests/test_gpu.py last: its last test (torch.compile) is the slowest, and a time limit should cut it only.
    files = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("test_*.py"),
                                                      key=lambda p: (p.name == "test_gpu.py", p.name))
             if "pytest.mark.gpu" in p.read_text()]
    xml = ctx.work / "gpu_tests.xml"
    select = ["-k", ctx.gpu_tests_k] if ctx.gpu_tests_k else []
    done = run_logged(ctx.rec, "gpu_tests", ctx.python("-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-v",
                                                       "-rfEs", f"--junitxml={xml}", *select, *files), timeout, ctx.env)
    tests = junit_results(xml) if xml.is_file() else verbose_results(done.lines)
    counts = dict(Counter(t["outcome"] for t in tests))
    result = {"files": files, "counts": counts, "tests": tests}
    if done.returncode == 0 and not ctx.cuda and tests and counts == {"skipped": len(tests)}:
        return {"status": "skipped", "reason": f"no CUDA (pytest ran; all {len(tests)} GPU tests skipped)", **result}
    if done.returncode == 0 and tests:
        return {"status": "ok", **result}
    return {**failure(done, "pytest"), **result}


def taptrv2_demo(ctx: Context, timeout: float) -> dict[str, Any]:
    train_s = timeout - ctx.sizes.demo_overhead_s
    if ctx.sizes.demo_max_train_s is not None:
        train_s = min(train_s, ctx.sizes.demo_max_train_s)
    if train_s < 1:
        return {"status": "skipped", "reason": f"{timeout:.0f} s leave no training time after its start-up"}
    seconds = int(train_s)
    max_time = f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    run_dir = ctx.work / "taptrv2_demo"
    overrides = ["experiment=taptrv2_tiny_synthetic", "name=taptrv2_tiny_synthetic_gpu_check", "logger=csv",
                 f"run_dir={run_dir}", f"data.synthetic.cache_dir={ctx.work / 'synthetic'}",
                 f"trainer.max_time={max_time}", "trainer.max_steps=1000000", "trainer.enable_progress_bar=false",
                 *ctx.sizes.demo]
    done = run_logged(ctx.rec, "taptrv2_demo", ctx.python("train.py", *overrides), timeout, ctx.env)
    validations, last_train = read_validations(run_dir)
    result: dict[str, Any] = {"overrides": overrides, "max_time": max_time, "validations": validations,
                              "last_train": last_train}
    if done.returncode != 0 or not validations:
        return {**failure(done, "train.py"), **result}
    final = validations[-1]
    result["final"] = {"step": final.get("step"), "aj": final.get("val/aj"),
                       "zero_motion_aj": final.get("val/zero_motion_aj"),
                       "delta_avg": final.get("val/delta_avg"), "zero_motion_delta_avg": final.get("val/zero_motion_delta_avg"),
                       "oa": final.get("val/oa"), "zero_motion_oa": final.get("val/zero_motion_oa")}
    return {"status": "ok", **result}


def tracktention_latency(ctx: Context, timeout: float) -> dict[str, Any]:
    cmd = ctx.python("tools/bench_video_depth.py", "--device", ctx.sizes.device, "--dtype", "bf16", *ctx.sizes.latency)
    done = run_logged(ctx.rec, "tracktention_latency", cmd, timeout, ctx.env)
    found = {"command": cmd, "tables": markdown_tables(done.text)}  # a stopped run keeps its finished rows
    if done.returncode == 0:
        return {"status": "ok", **found, "output_tail": done.tail()}
    return {**failure(done, "bench_video_depth.py"), **found}


def train_step_bench(ctx: Context, timeout: float) -> dict[str, Any]:
    path = ctx.work / "train_step.json"
    budget = max(timeout - 20.0, 0.0)  # room for the last case's kill and the table
    cmd = ctx.python("tools/bench_train_step.py", *ctx.sizes.bench, "--budget-s", f"{budget:.0f}",
                     "--case-timeout-s", f"{ctx.sizes.bench_case_timeout_s:.0f}", "--json", str(path),
                     "--cache-dir", str(ctx.work / "bench_cache"))
    done = run_logged(ctx.rec, "train_step_bench", cmd, timeout, ctx.env)
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    failed = [f"{r['family']}/{r['variant']}: {r['failed']}" for r in rows if "failed" in r]
    skipped = [f"{r['family']}/{r['variant']}" for r in rows if "skipped" in r]
    result = {"command": cmd, "rows": rows, "measured": sum("steps_per_s" in r for r in rows),
              "skipped_cases": skipped, "failed_cases": failed}
    if done.returncode != 0:
        return {**failure(done, "bench_train_step.py"), **result}
    if failed:
        return {"status": "failed", "reason": f"{len(failed)} case(s) failed", **result}
    return {"status": "ok", **result}


def summary_line(part: str, r: dict[str, Any]) -> str:
    """One line of figures per part for the closing table."""
    if part == "gpu_tests" and "counts" in r:
        return ", ".join(f"{n} {k}" for k, n in sorted(r["counts"].items()))
    if part == "taptrv2_demo" and "final" in r:
        f = r["final"]
        return (f"step {f['step']:.0f}: val AJ {f['aj']:.4f} vs zero-motion {f['zero_motion_aj']:.4f}, "
                f"delta_avg {f['delta_avg']:.4f} vs {f['zero_motion_delta_avg']:.4f}")
    if part == "tracktention_latency":
        cells = [f"{row.get('encoder', '?')} {row.get('tracks', '?')}: {value}" for table in r.get("tables") or []
                 for row in table for key, value in row.items() if "overhead" in key.lower() and "flop" not in key.lower()]
        if cells:
            return "; ".join(cells)
    if part == "train_step_bench" and "rows" in r:
        return f"{r['measured']} cases measured, {len(r['failed_cases'])} failed, {len(r['skipped_cases'])} skipped for time"
    return r["reason"].splitlines()[0][:120] if r.get("reason") else ""


# ------------------------------------------------------------------------------------------ run
def environment(cuda: bool) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
    }
    for package in ("lightning", "torchmetrics", "kornia", "numpy"):
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            env[package] = None
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        env["driver"] = smi.stdout.strip() or None
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True) \
        if shutil.which("git") else None
    env["commit"] = git.stdout.strip() if git is not None and git.returncode == 0 else None
    return env


def run_part(ctx: Context, name: str, fn: Callable[[Context, float], dict[str, Any]], limit: float,
             deadline: float) -> None:
    if name not in ctx.parts:
        ctx.rec.set(name, {"status": "skipped", "reason": "not selected (--parts)"})
        return
    timeout = min(limit, deadline - time.monotonic())
    if timeout < MIN_PART_S:
        ctx.rec.set(name, {"status": "skipped", "reason": f"time budget spent ({max(timeout, 0):.0f} s left)"})
        return
    ctx.rec.log(f"== {name}: started, time limit {timeout:.0f} s")
    ctx.rec.set(name, {"status": "running", "time_limit_s": round(timeout)})
    start = time.monotonic()
    try:
        result = fn(ctx, timeout)
    except Exception:
        result = {"status": "failed", "reason": "gpu_check.py raised", "error": traceback.format_exc()}
    result["seconds"] = round(time.monotonic() - start, 1)
    ctx.rec.set(name, result)
    ctx.rec.log(f"== {name}: {result['status']} after {result['seconds']} s")


def print_summary(rec: Recorder) -> None:
    rec.log("\n| part | status | s | result |\n|---|---|---:|---|")
    for part in PARTS:
        r = rec.data["parts"][part]
        rec.log(f"| {part} | {r['status']} | {r.get('seconds', '')} | {summary_line(part, r)} |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="gets gpu_check.json and gpu_check.log only")
    parser.add_argument("--budget-s", type=float, default=480.0, help="time for all parts together")
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU: checks the script itself")
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch files (default: a temporary folder)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="run only these parts (a second lease re-runs what the first could not finish)")
    parser.add_argument("--share", action="append", default=[], metavar="PART=FRACTION",
                        help="fraction of the budget a part may use (train_step_bench takes what is left)")
    parser.add_argument("--gpu-tests-k", default=None, help="pytest -k expression selecting GPU tests")
    args = parser.parse_args(argv)
    try:
        args.share = {k: float(v) for k, v in (s.split("=", 1) for s in args.share)}
    except ValueError:
        parser.error(f"--share takes PART=FRACTION, got {args.share}")
    if set(args.share) - set(PARTS):
        parser.error(f"--share: unknown part(s) {sorted(set(args.share) - set(PARTS))}; parts are {PARTS}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = time.monotonic()
    deadline = start + args.budget_s
    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    sizes = CPU if args.cpu else GPU
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    rec = Recorder(args.out, {"tool": "tools/gpu_check.py", "mode": "cpu" if args.cpu else "gpu",
                              "budget_s": args.budget_s, "command": sys.argv, "finished": False})
    rec.update(environment=environment(cuda))
    rec.log(f"gpu_check: mode {'cpu' if args.cpu else 'gpu'}, budget {args.budget_s:.0f} s, work dir {work}, "
            f"environment {json.dumps(rec.data['environment'])}")
    if not cuda and not args.cpu:
        for part in PARTS:
            rec.set(part, {"status": "skipped", "reason": "no CUDA device (use --cpu for the CPU check)"})
        print_summary(rec)
        return rec.data

    def stop(signum: int, frame: Any) -> None:  # a killed run still leaves a readable JSON and no orphans
        for proc in list(rec.children):
            kill_group(proc)
        rec.update(finished=False, interrupted=f"signal {signum}")
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    ctx = Context(rec, sizes, work, env, cuda, set(args.parts), args.gpu_tests_k)
    budget, shares = args.budget_s, {**sizes.shares, **args.share}
    demo = threading.Thread(target=run_part, args=(ctx, "taptrv2_demo", taptrv2_demo,
                                                    shares["taptrv2_demo"] * budget, deadline), daemon=True)
    demo.start()
    run_part(ctx, "gpu_tests", gpu_tests, shares["gpu_tests"] * budget, deadline)
    demo.join()
    run_part(ctx, "tracktention_latency", tracktention_latency, shares["tracktention_latency"] * budget, deadline)
    run_part(ctx, "train_step_bench", train_step_bench, math.inf, deadline - 5.0)
    rec.update(finished=True, total_s=round(time.monotonic() - start, 1))
    print_summary(rec)
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return rec.data


if __name__ == "__main__":
    main()
