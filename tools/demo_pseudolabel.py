"""CPU demo of pseudo-label fine-tuning: every stage with one command, then the results table.

    OMP_NUM_THREADS=1 python tools/demo_pseudolabel.py --out runs/pseudolabel_demo [--control]

Stages (each skipped when its output is already complete, so an interrupted demo resumes):

1. teacher        the reduced-width CoTracker3 (`python train.py` defaults) trained on the default
                  synthetic domain ("domain A") for --teacher-steps;
2. student_start  the same model trained for only --student-steps (another seed): the weaker
                  checkpoint the student starts from;
3. plaid shards   the "plaid" synthetic domain ("domain B": flat-colour plaid textures, swinging
                  motions): --train-videos unlabelled videos (their labels are not written) and
                  --val-clips labelled held-out clips;
4. finetune       `experiment=cotracker3_pseudolabel_tiny_synthetic`: the student fine-tuned on the
                  unlabelled plaid videos with pseudo-labels from the teacher's .ckpt (on the fly:
                  SIFT queries, the online teacher's 5x5 support grid, vis > 0.9);
5. control        (--control) the student trained for the same steps, learning rate and schedule on
                  labelled domain-A clips instead: more training without the new domain;
6. evaluation     `train.py validate` of every final checkpoint (last.ckpt: no selection on the
                  evaluation clips) on the held-out plaid clips; TAP-Vid metrics at 256x256.

Every training and validation runs `train.py` with the printed arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import train
from datamodules.shards import ShardWriter
from datamodules.synthetic import SyntheticConfig, generate_clip

VAL_SEED0 = 100_000  # plaid evaluation clips: seeds disjoint from the training videos


def run_train(argv: list[str]) -> object:
    print("\n$ python train.py " + " ".join(argv), flush=True)
    return train.run(argv)


def finished(run_dir: Path, steps: int) -> bool:
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return False
    return torch.load(last, map_location="cpu", weights_only=True).get("global_step", -1) >= steps


def common(run_dir: Path, name: str) -> list[str]:
    return [f"name={name}", f"run_dir={run_dir}", "logger=csv", "trainer.enable_progress_bar=false"]


def write_plaid(root: Path, videos: int, frames: int, val_clips: int, val_frames: int) -> None:
    """Unlabelled plaid videos (no tracks written) and labelled held-out plaid clips."""
    if (root / "DONE").exists():
        return
    train_cfg = SyntheticConfig(num_frames=frames, num_tracks=1, domain="plaid")
    with ShardWriter(root / "train", prefix="plaid", max_count=max(1, videos // 16)) as writer:
        for seed in range(videos):
            clip = generate_clip(seed, train_cfg)
            writer.write(f"plaid{seed:06d}", clip["frames"], np.zeros((frames, 0, 2), np.float32),
                         np.zeros((frames, 0), bool), fps=clip["meta"]["fps"], source="synthetic-plaid-unlabelled")
    val_cfg = SyntheticConfig(num_frames=val_frames, num_tracks=256, domain="plaid")
    with ShardWriter(root / "val", prefix="plaid", max_count=val_clips) as writer:
        for seed in range(VAL_SEED0, VAL_SEED0 + val_clips):
            clip = generate_clip(seed, val_cfg)
            writer.write(f"plaid{seed:06d}", clip["frames"], clip["tracks"], clip["visible"],
                         fps=clip["meta"]["fps"], source="synthetic-plaid")
    (root / "DONE").touch()


def evaluate(ckpt: Path, val: Path, run_dir: Path, clip_len: int, queries: int) -> dict[str, float]:
    results = run_train(["validate", f"ckpt={ckpt}", *common(run_dir, run_dir.name), f"data.train_shards={val}",
                         f"data.val_shards={val}", f"data.val_clip_len={clip_len}", f"data.val_num_queries={queries}",
                         "data.num_workers=0"])
    return {k: float(v) for k, v in results[0].items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/pseudolabel_demo"))
    parser.add_argument("--teacher-steps", type=int, default=3000)
    parser.add_argument("--student-steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=600)
    parser.add_argument("--train-videos", type=int, default=200)
    parser.add_argument("--video-frames", type=int, default=48)
    parser.add_argument("--val-clips", type=int, default=32)
    parser.add_argument("--val-frames", type=int, default=24)
    parser.add_argument("--val-queries", type=int, default=32)
    parser.add_argument("--control", action="store_true", help="also train the control (more domain-A training)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = args.out
    teacher, student = out / "teacher", out / "student_start"
    finetuned, control = out / "finetune", out / "control"

    if not finished(teacher, args.teacher_steps):
        run_train([*common(teacher, "pl_demo_teacher"), f"trainer.max_steps={args.teacher_steps}",
                   "trainer.val_check_interval=1000", "data.num_workers=1"])
    if not finished(student, args.student_steps):
        run_train([*common(student, "pl_demo_student_start"), f"trainer.max_steps={args.student_steps}",
                   f"trainer.val_check_interval={args.student_steps}", "seed=7", "data.num_workers=1"])
    plaid = out / "plaid"
    write_plaid(plaid, args.train_videos, args.video_frames, args.val_clips, args.val_frames)
    start_ckpt = student / "checkpoints" / "last.ckpt"
    # Shared by the fine-tuning and the control run: the same steps, optimiser and schedule.
    schedule = [f"trainer.max_steps={args.finetune_steps}", "trainer.val_check_interval=200", "model.lr=2e-4",
                "model.weight_decay=1e-5", "model.warmup_pct=0.0", "trainer.gradient_clip_val=10.0",
                f"model.init_from={start_ckpt}"]
    if not finished(finetuned, args.finetune_steps):
        teachers = f"model.teachers=[{{checkpoint: {teacher / 'checkpoints' / 'last.ckpt'}, kind: tracklight}}]"
        run_train(["experiment=cotracker3_pseudolabel_tiny_synthetic", *common(finetuned, "pl_demo_finetune"),
                   *schedule, teachers, f"data.train_shards={plaid / 'train'}", f"data.val_shards={plaid / 'val'}",
                   "data.clip_len=16", f"data.val_clip_len={args.val_frames}",
                   f"data.val_num_queries={args.val_queries}"])
    if args.control and not finished(control, args.finetune_steps):
        run_train([*common(control, "pl_demo_control"), *schedule, "data.num_workers=1", "seed=7"])

    rows = [(f"teacher (domain A, {args.teacher_steps} steps)", teacher),
            (f"student start (domain A, {args.student_steps} steps)", student),
            (f"student fine-tuned on unlabelled plaid, pseudo-labels ({args.finetune_steps} steps)", finetuned)]
    if args.control:
        rows.append((f"control: student + {args.finetune_steps} more labelled domain-A steps", control))
    table = []
    for label, run_dir in rows:
        metrics = evaluate(run_dir / "checkpoints" / "last.ckpt", plaid / "val", out / "eval" / run_dir.name,
                           args.val_frames, args.val_queries)
        table.append((label, metrics))
    baseline = table[0][1]
    print(f"\nHeld-out plaid clips: {args.val_clips} clips x {args.val_frames} frames, {args.val_queries} queries "
          "each (first visible frame); TAP-Vid metrics at 256x256, x100")
    print("| model | AJ | δ_avg | OA |\n|---|---|---|---|")
    print(f"| zero-motion baseline | {100 * baseline['val/zero_motion_aj']:.1f} | "
          f"{100 * baseline['val/zero_motion_delta_avg']:.1f} | {100 * baseline['val/zero_motion_oa']:.1f} |")
    for label, m in table:
        print(f"| {label} | {100 * m['val/aj']:.1f} | {100 * m['val/delta_avg']:.1f} | {100 * m['val/oa']:.1f} |")


if __name__ == "__main__":
    main()
