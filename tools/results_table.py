"""The README's default-run results table, reproduced from the current code over several seeds.

    python tools/results_table.py                              # seeds 42 43 44, 1000 steps, validation every 200
    python tools/results_table.py --seeds 42 --steps 400 --val-every 200
    python tools/results_table.py --collect runs/results_table/20250101-120000   # re-read finished runs

Each seed is one `python train.py` run of the default configuration (train.yaml: the reduced-width
CoTracker3 on the embedded synthetic data) with `seed=S logger=csv`, run one after another as
subprocesses. The validation metrics (AJ, delta_avg, OA and the zero-motion baseline, in percent)
are read back from each run's `metrics.csv`, and the script prints a markdown table of the mean
over seeds with the min-max spread, then the per-seed values and the wall time per 500 steps.
Extra `key=value` arguments after `--` go to every run (e.g. `-- data.num_workers=0`).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = (("AJ", "aj"), ("δ_avg", "delta_avg"), ("OA", "oa"))


def train_args(seed: int, run_dir: Path, steps: int, val_every: int, extra: list[str]) -> list[str]:
    return [f"seed={seed}", f"name=results_table-seed{seed}", f"run_dir={run_dir}", "logger=csv",
            f"trainer.max_steps={steps}", f"trainer.val_check_interval={val_every}",
            "trainer.enable_progress_bar=false", *extra]


def run_seed(seed: int, run_dir: Path, steps: int, val_every: int, extra: list[str]) -> float:
    """Train one seed to completion; return its wall time in seconds."""
    log_path = run_dir.parent / f"seed{seed}.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        done = subprocess.run([sys.executable, str(REPO / "train.py"), *train_args(seed, run_dir, steps, val_every, extra)],
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"seed {seed}: train.py exited with {done.returncode}; see {log_path}")
    return time.perf_counter() - started


def validation_rows(run_dir: Path) -> dict[int, dict[str, float]]:
    """{global step: {metric: value in percent}} from the run's CSV log (last version wins)."""
    logs = sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not logs:
        raise SystemExit(f"no metrics.csv under {run_dir / 'logs'}")
    rows: dict[int, dict[str, float]] = {}
    with open(logs[-1]) as f:
        for row in csv.DictReader(f):
            if row.get("val/aj"):
                # Lightning writes validation rows at the index of the step just taken (global step - 1).
                values = {k: 100 * float(row[f"val/{k}"]) for _, k in METRICS}
                values |= {f"zero_motion_{k}": 100 * float(row[f"val/zero_motion_{k}"]) for _, k in METRICS}
                rows[int(row["step"]) + 1] = values
    return rows


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if f"{min(values):.1f}" == f"{max(values):.1f}":
        return f"{mean:.1f}"
    return f"{mean:.1f} ({min(values):.1f}–{max(values):.1f})"


def markdown(per_seed: dict[int, dict[int, dict[str, float]]], steps: list[int]) -> str:
    seeds = sorted(per_seed)
    lines = ["| step | " + " | ".join(name for name, _ in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    baseline = [spread([per_seed[s][step][f"zero_motion_{k}"] for s in seeds for step in steps]) for _, k in METRICS]
    lines.append("| zero-motion baseline | " + " | ".join(baseline) + " |")
    for step in steps:
        lines.append(f"| {step} | " + " | ".join(spread([per_seed[s][step][k] for s in seeds]) for _, k in METRICS) + " |")
    return "\n".join(lines)


def per_seed_table(per_seed: dict[int, dict[int, dict[str, float]]], steps: list[int]) -> str:
    lines = ["| seed | step | " + " | ".join(name for name, _ in METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    for seed in sorted(per_seed):
        for step in steps:
            lines.append(f"| {seed} | {step} | " + " | ".join(f"{per_seed[seed][step][k]:.1f}" for _, k in METRICS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--steps", type=int, default=1000, help="trainer.max_steps of every run")
    parser.add_argument("--val-every", type=int, default=200, help="trainer.val_check_interval")
    parser.add_argument("--report", type=int, nargs="+", default=None,
                        help="steps shown in the table (default: every validation)")
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (default runs/results_table/<time>)")
    parser.add_argument("--collect", type=Path, default=None, help="only read the finished runs under this folder")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    out = args.collect or args.out or REPO / "runs" / "results_table" / time.strftime("%Y%m%d-%H%M%S")
    walls: dict[int, float] = {}
    if args.collect is None:
        if out.exists() and any(out.iterdir()):
            raise SystemExit(f"{out} is not empty; pick a new --out (or read it with --collect {out})")
        out.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            print(f"seed {seed}: training into {out / f'seed{seed}'} ...", flush=True)
            walls[seed] = run_seed(seed, out / f"seed{seed}", args.steps, args.val_every, extra)
    seeds = args.seeds if args.collect is None else sorted(int(p.name[4:]) for p in out.glob("seed*") if p.is_dir())
    per_seed = {seed: validation_rows(out / f"seed{seed}") for seed in seeds}
    common = sorted(set.intersection(*(set(rows) for rows in per_seed.values())))
    steps = [s for s in (args.report or common) if s in common]
    if not steps:
        raise SystemExit(f"no validation step common to every seed (found {common})")

    print(f"\nDefault run (`python train.py`), seeds {', '.join(map(str, seeds))}: mean over seeds "
          "(min–max), percent")
    print(markdown(per_seed, steps))
    print("\nPer seed:")
    print(per_seed_table(per_seed, steps))
    if walls:
        per_500 = [wall / args.steps * 500 / 60 for wall in walls.values()]
        print(f"\nWall time per 500 steps, validation included: {spread(per_500)} min (mean (min–max) over seeds)")
        print(f"Command: python tools/results_table.py --seeds {' '.join(map(str, seeds))} --steps {args.steps} "
              f"--val-every {args.val_every}" + (f" -- {' '.join(extra)}" if extra else ""))


if __name__ == "__main__":
    main()
