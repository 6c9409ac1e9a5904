"""Does a from-scratch TAPTRv2 learn correspondence? Held-out error vs zero motion, per frame range.

    OMP_NUM_THREADS=2 python tools/probe_taptrv2_learning.py --steps 500 --lr 2e-3
    OMP_NUM_THREADS=2 python tools/probe_taptrv2_learning.py --overfit --steps 150   # one clip, held in

Trains the network (plain loop: the reference loss, AdamW, grad-norm clip 0.1, no EMA, no
augmentation) on a fresh pair of embedded synthetic clips every step, or on one clip with
`--overfit`, and every `--every` steps prints the mean pixel error of visible points on held-out
24-frame clips next to the zero-motion error, for frames 1-7 / 8-15 / 16-23 (first window,
then the windows that start from the previous window's output). A tracker that has learned
correspondence beats zero motion on the first range first.
"""

from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf

from datamodules.synthetic import SyntheticConfig, generate_clip
from lightning_modules.taptrv2_loss import TaptrV2LossConfig, taptrv2_loss
from models.taptrv2 import TaptrV2, TaptrV2Config

FRAME_RANGES = (slice(1, 8), slice(8, 16), slice(16, 24))


def tracking_clip(seed: int, frames: int, points: int) -> dict[str, torch.Tensor]:
    """One 64x64 synthetic clip with up to `points` queries at frame 0 on points visible there."""
    clip = generate_clip(seed, SyntheticConfig(num_frames=frames))
    tracks = torch.as_tensor(clip["tracks"]).float()[None]
    visible = torch.as_tensor(clip["visible"])[None]
    keep = visible[0, 0].nonzero().flatten()[:points]
    tracks, visible = tracks[:, :, keep], visible[:, :, keep]
    return {"video": torch.as_tensor(clip["frames"]).permute(0, 3, 1, 2).float()[None],
            "tracks": tracks, "visible": visible, "valid": torch.ones_like(visible),
            "queries": torch.cat([torch.zeros(1, len(keep), 1), tracks[:, 0]], -1)}


def collate(clips: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate clips along the batch, truncated to the smallest number of points."""
    n = min(c["queries"].shape[1] for c in clips)
    point_dim = {"video": None, "queries": 1}
    out = {}
    for key in clips[0]:
        dim = point_dim.get(key, 2)
        out[key] = torch.cat([c[key] if dim is None else c[key].narrow(dim, 0, n) for c in clips])
    return out


def range_errors(model: TaptrV2, held_out: list[dict[str, torch.Tensor]]) -> list[tuple[float, float]]:
    """(model error, zero-motion error) in pixels per frame range, averaged over the held-out clips."""
    model.eval()
    totals = torch.zeros(len(FRAME_RANGES), 2)
    with torch.no_grad():
        for clip in held_out:
            tracks, visible = clip["tracks"], clip["visible"]
            predicted = model(clip["video"], clip["queries"]).tracks
            for i, frames in enumerate(FRAME_RANGES):
                seen = visible[:, frames]
                totals[i, 0] += (predicted[:, frames] - tracks[:, frames]).norm(dim=-1)[seen].mean()
                totals[i, 1] += (tracks[:, :1] - tracks[:, frames]).norm(dim=-1)[seen].mean()
    model.train()
    return [tuple(row) for row in (totals / len(held_out)).tolist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-config", default="configs/model/taptrv2_tiny.yaml")
    parser.add_argument("--resolution", type=int, default=64, help="model_resolution (square)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--frames", type=int, default=12, help="training clip length (--overfit: 24)")
    parser.add_argument("--points", type=int, default=64, help="queries per clip")
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--overfit", action="store_true", help="train and evaluate on one clip")
    args = parser.parse_args()

    torch.manual_seed(0)
    arch = OmegaConf.merge(OmegaConf.structured(TaptrV2Config), OmegaConf.load(args.model_config).arch)
    OmegaConf.update(arch, "model_resolution", (args.resolution, args.resolution))
    model = TaptrV2(OmegaConf.to_object(arch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    loss_cfg = TaptrV2LossConfig(focal_alpha=0.5)  # as the tiny demo config
    single = tracking_clip(7, 24, args.points)
    held_out = [single] if args.overfit else [tracking_clip(10_000 + i, 24, args.points) for i in range(4)]
    start = time.time()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            ranges = " | ".join(f"{e:.2f} vs {z:.2f}" for e, z in range_errors(model, held_out))
            print(f"step {step:5d}  {time.time() - start:6.0f} s  px error vs zero motion, frames "
                  f"1-7 | 8-15 | 16-23: {ranges}", flush=True)
        if step == args.steps:
            break
        batch = single if args.overfit else collate([tracking_clip(2 * step + i, args.frames, args.points)
                                                     for i in range(2)])
        out = model(batch["video"], batch["queries"])
        loss = taptrv2_loss(out.layer_tracks, out.layer_apu_tracks, out.vis_logits, batch, loss_cfg)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()


if __name__ == "__main__":
    main()
