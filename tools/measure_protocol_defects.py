"""What each known defect of the reference video depth evaluation changes, measured on synthetic scenes.

The scenes are ray-cast here (boxes and spheres, exact z-depth, known cameras), so the ground
truth, the poses and the intrinsics are exact and every difference comes from the protocol.

1. TAE (VDA ``eval_tae.py``), on a ScanNet-like room: 480x640 depth, ScanNet's crop
   [8:-8, 11:-11], typical ScanNet depth intrinsics, a hand-held path (about 1 cm and 0.6 deg per
   frame, as at 30 fps). TAE with the principal point shifted by the crop (right) or not (the
   reference), and with a z-buffered reprojection (right) or last write wins (the reference), for
   the exact depth and for a prediction that flickers by 1 % per frame.
2. Sintel ground truth as VDA's extractor stores it (whole metres, /100.8, < 1 m lost; see
   ``metrics.depth_benchmark.reference_sintel_depth``) against the float depth, and whole metres
   alone (the quantisation without the unit error, which moves the 70 m cap to ~7 km), on
   Sintel-sized frames (436x1024): a close-up scene (a figure 0.5-2 m away) and a wide one
   (everything > 2 m), each with a far background at 150 m, beyond the cap, for the exact
   prediction and a noisy one (spatially smooth log-normal error, sigma 0.3).

    python tools/measure_protocol_defects.py              # full size, about a minute on 2 CPU cores
    python tools/measure_protocol_defects.py --scale 0.5  # smaller frames (crop and K scaled)
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from metrics.depth import depth_from_disparity, fit_scale_shift, temporal_alignment_error
from metrics.depth_benchmark import (
    VideoDepthBenchmarkMetric,
    crop_intrinsics,
    crop_slices,
    reference_sintel_depth,
)

Vec = tuple[float, float, float]


@dataclass
class Scene:
    room: tuple[Vec, Vec] | None = None  # an axis-aligned box the camera is inside
    boxes: list[tuple[Vec, Vec]] = field(default_factory=list)  # solid axis-aligned boxes (lo, hi)
    spheres: list[tuple[Vec, float]] = field(default_factory=list)  # (centre, radius)


def render_depth(scene: Scene, K: torch.Tensor, cam_to_world: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Exact z-depth (H, W) float64 of the nearest surface at every pixel centre; inf where none."""
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    ray = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], -1).reshape(-1, 3)
    d = ray @ cam_to_world[:3, :3].T  # z = 1 in the camera, so the ray parameter is the depth
    o = cam_to_world[:3, 3]
    inv = 1.0 / d  # +-inf along an axis the ray does not move on: the slab test still holds
    best = torch.full((d.shape[0],), math.inf, dtype=torch.float64)

    def slabs(lo: Vec, hi: Vec) -> tuple[torch.Tensor, torch.Tensor]:
        t1 = (torch.tensor(lo, dtype=torch.float64) - o) * inv
        t2 = (torch.tensor(hi, dtype=torch.float64) - o) * inv
        return torch.minimum(t1, t2).amax(1), torch.maximum(t1, t2).amin(1)

    if scene.room is not None:
        best = torch.minimum(best, slabs(*scene.room)[1])  # inside: the exit through a wall
    for lo, hi in scene.boxes:
        near, far = slabs(lo, hi)
        hit = (near <= far) & (near > 0)
        best = torch.where(hit, torch.minimum(best, near), best)
    for centre, radius in scene.spheres:
        oc = o - torch.tensor(centre, dtype=torch.float64)
        a, b, c = (d * d).sum(1), 2 * (d @ oc), oc @ oc - radius ** 2
        disc = b * b - 4 * a * c
        t = (-b - disc.clamp(min=0).sqrt()) / (2 * a)
        hit = (disc >= 0) & (t > 0)
        best = torch.where(hit, torch.minimum(best, t), best)
    return best.reshape(height, width)


def camera(position: Vec, yaw_deg: float, pitch_deg: float, roll_deg: float) -> torch.Tensor:
    """OpenCV camera-to-world (x right, y down, z forward): yaw about y, pitch about x, roll about z."""
    def rot(axis: int, deg: float) -> torch.Tensor:
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        i, j = [(1, 2), (2, 0), (0, 1)][axis]
        m = torch.eye(3, dtype=torch.float64)
        m[i, i] = m[j, j] = c
        m[i, j], m[j, i] = -s, s
        return m

    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = rot(1, yaw_deg) @ rot(0, pitch_deg) @ rot(2, roll_deg)
    pose[:3, 3] = torch.tensor(position, dtype=torch.float64)
    return pose


def smooth_noise(frames: int, height: int, width: int, generator: torch.Generator, cells: int = 8) -> torch.Tensor:
    """Zero-mean, unit-std, spatially smooth noise (frames, H, W)."""
    coarse = torch.randn(frames, 1, cells, cells, generator=generator, dtype=torch.float64)
    noise = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)[:, 0]
    return (noise - noise.mean()) / noise.std()


# ---------------------------------------------------------------------------------------- TAE
ROOM = Scene(room=((-2.5, -1.3, -1.5), (2.5, 1.4, 4.5)),
             boxes=[((-1.3, 0.65, 1.8), (0.1, 1.4, 2.7)),     # a table
                    ((1.0, -0.5, 2.8), (2.4, 1.4, 4.3)),      # a cabinet
                    ((-0.5, 0.9, 0.9), (0.2, 1.4, 1.4))],     # a stool close to the camera
             spheres=[((0.6, 0.35, 2.2), 0.3), ((-1.6, -0.2, 3.6), 0.45)])


def tae_experiment(scale: float, frames: int, seed: int) -> list[tuple[str, list[float]]]:
    H, W = round(480 * scale), round(640 * scale)
    K = torch.tensor([[577.87 * scale, 0, (640 * scale - 1) / 2], [0, 577.87 * scale, (480 * scale - 1) / 2],
                      [0, 0, 1]], dtype=torch.float64)
    crop = (round(8 * scale), -round(8 * scale), round(11 * scale), -round(11 * scale))
    poses = torch.stack([camera((0.3 + 0.008 * k, 0.05 * math.sin(k / 9), -0.8 + 0.006 * k),
                                -4.0 + 0.6 * k, -8.0 + 1.5 * math.sin(k / 7), 1.0 * math.sin(k / 5))
                         for k in range(frames)])
    gt = torch.stack([render_depth(ROOM, K, p, H, W) for p in poses])
    assert torch.isfinite(gt).all(), "the room must enclose the camera"
    generator = torch.Generator().manual_seed(seed)
    flicker = (1 + 0.01 * torch.randn(frames, 1, 1, generator=generator, dtype=torch.float64)) \
        * (1 + 0.01 * smooth_noise(frames, H, W, generator))
    rows, cols = crop_slices(crop, H, W)
    Ks = K.expand(frames, 3, 3)
    results = []
    for name, pred in (("exact depth", 1.0 / gt), ("1 % flicker per frame", flicker / gt)):
        g, p = gt[:, rows, cols], pred[:, rows, cols]
        valid = (g > 1e-3) & (g < 10.0)
        depth = depth_from_disparity(p, *fit_scale_shift(p, g, valid), 10.0)
        shifted, unshifted = crop_intrinsics(Ks, rows.start, cols.start), Ks
        values = [temporal_alignment_error(depth, shifted, poses)[0].item(),
                  temporal_alignment_error(depth, unshifted, poses)[0].item(),
                  temporal_alignment_error(depth, shifted, poses, reference=True)[0].item(),
                  temporal_alignment_error(depth, unshifted, poses, reference=True)[0].item()]
        for reference, expected in ((False, values[0]), (True, values[3])):  # the metric's two modes
            metric = VideoDepthBenchmarkMetric(cap=10.0, prediction="disparity", crop=crop, compute_tae=True,
                                               tae_reference=reference)
            metric.update("room", pred.float(), gt.float(), intrinsics=K, cam_to_world=poses)
            assert abs(metric.compute()["tae"].item() - expected) < 1e-3 * max(expected, 1e-3)
        results.append((name, values))
    return results


# ---------------------------------------------------------------------------------------- Sintel
GROUND = ((-500.0, 1.5, -500.0), (500.0, 3.0, 500.0))
FAR_WALL = ((-500.0, -300.0, 150.0), (500.0, 3.0, 160.0))  # beyond the 70 m cap
CLOSE_UP = Scene(boxes=[GROUND, FAR_WALL, ((-6.0, -4.0, 9.0), (-2.0, 1.5, 13.0)),
                        ((3.0, -8.0, 25.0), (9.0, 1.5, 32.0))],
                 spheres=[((0.15, 0.1, 0.9), 0.35), ((0.15, -0.45, 1.05), 0.2), ((-0.6, 0.6, 1.8), 0.3)])
WIDE = Scene(boxes=[GROUND, FAR_WALL, ((-6.0, -4.0, 9.0), (-2.0, 1.5, 13.0)), ((3.0, -8.0, 25.0), (9.0, 1.5, 32.0)),
                    ((-20.0, -15.0, 45.0), (-8.0, 1.5, 55.0))],
             spheres=[((1.5, 0.7, 4.0), 0.8), ((-1.0, 0.9, 2.6), 0.6)])


SINTEL_TARGETS = {
    "float metres (ours)": lambda gt: gt,
    "whole metres, 70 m cap": lambda gt: reference_sintel_depth(gt) * (65535 / 650),
    "VDA: whole metres / 100.8": reference_sintel_depth,
}


def sintel_experiment(scale: float, frames: int, seed: int) -> list[tuple[str, str, dict[str, dict[str, float]]]]:
    H, W = round(436 * scale), round(1024 * scale)
    K = torch.tensor([[1120.0 * scale, 0, (W - 1) / 2], [0, 1120.0 * scale, (H - 1) / 2], [0, 0, 1]],
                     dtype=torch.float64)
    poses = [camera((0.02 * k, -0.3, 0.05 * k), 1.0 * k, -3.0, 0.0) for k in range(frames)]
    generator = torch.Generator().manual_seed(seed)
    results = []
    for scene_name, scene in (("close-up (figure at 0.5-2 m)", CLOSE_UP), ("wide (everything > 2 m)", WIDE)):
        gt = torch.stack([render_depth(scene, K, p, H, W) for p in poses])
        noisy = torch.exp(0.3 * smooth_noise(frames, H, W, generator)) / gt
        for pred_name, pred in (("exact", 1.0 / gt), ("noisy", noisy)):
            row = {}
            for label, target in SINTEL_TARGETS.items():
                metric = VideoDepthBenchmarkMetric(cap=70.0, prediction="disparity")
                metric.update("sintel", pred.float(), target(gt).float())
                out, per_video = metric.compute(), metric.per_video()[0]
                row[label] = {k: out[k].item() for k in ("abs_rel", "delta1", "rmse")}
                row[label]["valid"] = per_video["valid_pixels"] / gt.numel()
            results.append((scene_name, pred_name, row))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="frame size relative to ScanNet / Sintel")
    parser.add_argument("--frames", type=int, default=30, help="frames of the ScanNet-like path")
    parser.add_argument("--sintel-frames", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 0.05 <= args.scale <= 2 or args.frames < 2 or args.sintel_frames < 1:
        parser.error("--scale must be in [0.05, 2], --frames >= 2, --sintel-frames >= 1")

    print(f"TAE (x100) on a ScanNet-like room, {args.frames} frames, scale {args.scale}:\n")
    print("| prediction | right: K shifted by the crop, z-buffer | K not shifted | last write wins | "
          "both (= eval_tae.py) |")
    print("|---|---|---|---|---|")
    for name, values in tae_experiment(args.scale, args.frames, args.seed):
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + " |")

    print(f"\nSintel ground truth as stored: AbsRel / δ1 / RMSE (valid pixels), {args.sintel_frames} frames, "
          "cap 70 (RMSE in the ground truth's unit):\n")
    print("| scene | prediction | " + " | ".join(SINTEL_TARGETS) + " |")
    print("|---|---|" + "---|" * len(SINTEL_TARGETS))
    for scene_name, pred_name, row in sintel_experiment(args.scale, args.sintel_frames, args.seed):
        cells = [f"{r['abs_rel']:.4f} / {r['delta1']:.4f} / {r['rmse']:.3g} ({r['valid']:.1%})" for r in row.values()]
        print(f"| {scene_name} | {pred_name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
