"""Converter throughput (frames/s) and bytes per frame against the source, one run.

    python tools/bench_convert.py --frames 24 --sequences 2 --workers 1 2

Writes `--sequences` synthetic sequences per layout (textured moving scenes from datamodules/synthetic.py, so images
compress like photographs rather than noise) in four original layouts to a temporary folder:
Sintel (1024x436 PNG + .dpt + .cam), ScanNet (1296x968 JPEG q95 colour, 640x480 uint16 depth,
pose text), PointOdyssey (960x540 JPEG + uint16 depth + anno.npz with 2048 tracks) and a
640x360 H.264 mp4 (`videos`). Each is converted with tools/convert.py's defaults (workers
parallelise over shards, i.e. over sequences). The baseline,
timed in the same run, is reading the source alone: every file opened and decoded once (what any
converter must do at least). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.synthetic import SyntheticConfig, generate_clip
from datamodules.video_files import Mp4Writer
from tools.convert import run


def scene(frames: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 frames and (T, H, W) depth of one synthetic scene, made at a quarter size and upsampled
    (the generator is slow at full size; bicubic upsampling keeps the texture statistics photograph-like)."""
    clip = generate_clip(seed, SyntheticConfig(height=height // 4, width=width // 4, num_frames=frames, num_tracks=8))
    images = np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BICUBIC))
                       for f in clip["frames"]])
    depth = np.stack([np.asarray(Image.fromarray(d).resize((width, height), Image.Resampling.BILINEAR))
                      for d in clip["depth"].astype(np.float32)])
    return images, depth


def write_sintel(root: Path, frames: int, seq: int) -> None:
    images, depth = scene(frames, 436, 1024, seq)
    tag = np.float32(202021.25).tobytes()
    for t in range(frames):
        stem = f"frame_{t + 1:04d}"
        for sub in (f"training/clean/alley_{seq}", f"training/depth/alley_{seq}", f"training/camdata_left/alley_{seq}"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[t]).save(root / f"training/clean/alley_{seq}" / f"{stem}.png")
        (root / f"training/depth/alley_{seq}" / f"{stem}.dpt").write_bytes(
            tag + np.int32(1024).tobytes() + np.int32(436).tobytes() + (depth[t] * 10).astype(np.float32).tobytes())
        K = np.array([[1120.0, 0, 511.5], [0, 1120.0, 217.5], [0, 0, 1]])
        (root / f"training/camdata_left/alley_{seq}" / f"{stem}.cam").write_bytes(
            tag + K.tobytes() + np.eye(3, 4).tobytes())


def write_scannet(root: Path, frames: int, seq: int) -> None:
    images, depth = scene(frames, 968, 1296, seq)
    scene_dir = root / f"scene{707 + seq:04d}_00"
    for sub in ("color", "depth", "pose", "intrinsic"):
        (scene_dir / sub).mkdir(parents=True, exist_ok=True)
    np.savetxt(scene_dir / "intrinsic" / "intrinsic_depth.txt", np.diag([577.6, 578.7, 1.0, 1.0]))
    for t in range(frames):
        Image.fromarray(images[t]).save(scene_dir / "color" / f"{t}.jpg", quality=95)
        small = np.asarray(Image.fromarray(depth[t]).resize((640, 480), Image.Resampling.NEAREST))
        Image.fromarray((small * 1000).astype(np.uint16)).save(scene_dir / "depth" / f"{t}.png")
        np.savetxt(scene_dir / "pose" / f"{t}.txt", np.eye(4))


def write_pointodyssey(root: Path, frames: int, index: int) -> None:
    images, depth = scene(frames, 540, 960, index)
    seq = root / "train" / f"ani{index}"
    (seq / "rgbs").mkdir(parents=True)
    (seq / "depths").mkdir()
    for t in range(frames):
        Image.fromarray(images[t]).save(seq / "rgbs" / f"rgb_{t:05d}.jpg", quality=95)
        Image.fromarray((depth[t] / 1000 * 65535).astype(np.uint16)).save(seq / "depths" / f"depth_{t:05d}.png")
    rng = np.random.default_rng(0)
    n = 2048
    np.savez(seq / "anno.npz", trajs_2d=rng.uniform(0, [959, 539], (frames, n, 2)).astype(np.float32),
             trajs_3d=np.zeros((frames, n, 3), np.float32), visibs=rng.random((frames, n)) > 0.2,
             valids=np.ones((frames, n), bool), intrinsics=np.tile(np.diag([800.0, 800.0, 1.0]), (frames, 1, 1)),
             extrinsics=np.tile(np.eye(4), (frames, 1, 1)))


def write_video(root: Path, frames: int, seq: int) -> None:
    images, _ = scene(frames, 360, 640, seq)
    with Mp4Writer(root / f"clip{seq}.mp4", fps=30) as writer:
        writer.write(images)


DATASETS = {  # name -> (writer, convert args, source files whose decode is the baseline)
    "sintel": (write_sintel, [], ("*.png", "*.dpt", "*.cam")),
    "scannet": (write_scannet, [], ("*.jpg", "*.png", "*.txt")),
    "pointodyssey": (write_pointodyssey, ["--split", "train", "--clip-len", "0"], ("*.jpg", "*.png", "*.npz")),
    "videos": (write_video, ["--clip-len", "0"], ("*.mp4",)),
}


def read_source(root: Path, patterns: tuple[str, ...]) -> None:
    """The baseline: open and decode every source file once."""
    import av

    for pattern in patterns:
        for path in root.rglob(pattern):
            if path.suffix in (".jpg", ".png"):
                np.asarray(Image.open(path))
            elif path.suffix == ".npz":
                with np.load(path) as npz:
                    [npz[k] for k in npz.files]
            elif path.suffix == ".mp4":
                with av.open(str(path)) as container:
                    [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            else:
                path.read_bytes()


def size(root: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in root.rglob(pattern) if p.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--sequences", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    print("| dataset (source layout) | workers | convert frames/s | read-only frames/s | convert / read-only | "
          "source bytes/frame | shard bytes/frame | shard / source |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (writer, extra, patterns) in DATASETS.items():
            src = Path(tmp) / name / "src"
            src.mkdir(parents=True)
            for seq in range(args.sequences):
                writer(src, args.frames, seq)
            frames = args.frames * args.sequences
            started = time.perf_counter()
            read_source(src, patterns)
            read_fps = frames / (time.perf_counter() - started)
            for workers in args.workers:
                out = Path(tmp) / name / f"out{workers}"
                started = time.perf_counter()
                run([name, str(src), str(out), "--workers", str(workers), "--no-progress", *extra])
                fps = frames / (time.perf_counter() - started)
                src_bytes, out_bytes = size(src) / frames, size(out, "*.tar") / frames
                print(f"| {name} | {workers} | {fps:.1f} | {read_fps:.1f} | {fps / read_fps:.2f} | "
                      f"{src_bytes / 1e3:.0f} kB | {out_bytes / 1e3:.0f} kB | {out_bytes / src_bytes:.2f} |", flush=True)


if __name__ == "__main__":
    main()
