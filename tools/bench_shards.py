"""Shard loader vs CoTracker's folder-of-PNG layout: clips/s and bytes/clip, same clips, one run.

    python tools/bench_shards.py --clips 48 --size 256 --frames 24 --workers 2

Writes the same synthetic clips in both layouts to a temporary folder, then reads every clip
fully (all frames decoded into the same uint8 tensor type, tracks and visibility loaded)
through a DataLoader with the same number of workers, twice per layout (the better pass
counts, so page-cache state is equal). Only the format differs. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from datamodules.safe_pickle import load_object_npy
from datamodules.shard_reader import SkipCounter, iter_shard
from datamodules.shards import ShardWriter, decode_clip, decode_into_tensor
from datamodules.synthetic import SyntheticConfig, generate_clip


def write_png_folders(root: Path, clips: list[dict]) -> None:
    for i, clip in enumerate(clips):
        seq = root / f"seq{i:05d}"
        (seq / "frames").mkdir(parents=True)
        for t, frame in enumerate(clip["frames"]):
            Image.fromarray(frame).save(seq / "frames" / f"{t:03d}.png")
        annotation = {"coords": clip["tracks"].transpose(1, 0, 2), "visibility": ~clip["visible"].T}
        np.save(seq / f"seq{i:05d}.npy", annotation, allow_pickle=True)


class PngFolders(Dataset):
    def __init__(self, root: Path) -> None:
        self.seqs = sorted(p for p in root.iterdir() if p.is_dir())

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        seq = self.seqs[i]
        annotation = load_object_npy(seq / f"{seq.name}.npy")
        frames = decode_into_tensor([f.read_bytes() for f in sorted((seq / "frames").glob("*.png"))])
        return {"frames": frames, "tracks": annotation["coords"], "visible": ~annotation["visibility"]}


class Shards(IterableDataset):
    def __init__(self, urls: list[str]) -> None:
        self.urls = urls

    def __iter__(self):  # noqa: ANN204
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info else (0, 1)
        for url in self.urls[wid::n]:
            for raw in iter_shard(url, SkipCounter()):
                clip = decode_clip(raw)
                yield {"frames": clip.decode_frames(), "tracks": clip.tracks, "visible": clip.visible}


def clips_per_second(dataset: Dataset | IterableDataset, workers: int, passes: int = 2) -> float:
    best = 0.0
    for _ in range(passes):
        loader = DataLoader(dataset, batch_size=None, num_workers=workers)
        start = time.perf_counter()
        count = sum(1 for _ in loader)
        best = max(best, count / (time.perf_counter() - start))
    return best


def folder_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--tracks", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clips-per-shard", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)

    cfg = SyntheticConfig(height=args.size, width=args.size, num_frames=args.frames, num_tracks=args.tracks)
    clips = [generate_clip(seed, cfg) for seed in range(args.clips)]
    with tempfile.TemporaryDirectory() as tmp:
        png_root, shard_root = Path(tmp) / "png", Path(tmp) / "shards"
        write_png_folders(png_root, clips)
        with ShardWriter(shard_root, max_count=args.clips_per_shard) as writer:
            for i, clip in enumerate(clips):
                writer.write(f"seq{i:05d}", clip["frames"], clip["tracks"], clip["visible"], source="synthetic")
        urls = sorted(str(p) for p in shard_root.glob("*.tar"))
        png_rate = clips_per_second(PngFolders(png_root), args.workers)
        shard_rate = clips_per_second(Shards(urls), args.workers)
        png_bytes, shard_bytes = folder_bytes(png_root) / args.clips, folder_bytes(shard_root) / args.clips

    print(f"{args.clips} synthetic clips, {args.frames} frames {args.size}x{args.size}, {args.tracks} tracks, "
          f"{args.workers} workers, {os.cpu_count()} CPUs")
    print("| layout | clips/s | ratio | bytes/clip | ratio |")
    print("|---|---|---|---|---|")
    print(f"| PNG folders (CoTracker layout) | {png_rate:.2f} | 1.00x | {png_bytes / 1e6:.2f} MB | 1.00x |")
    print(f"| tracklight shards (JPEG q90 4:4:4) | {shard_rate:.2f} | {shard_rate / png_rate:.2f}x | "
          f"{shard_bytes / 1e6:.2f} MB | {shard_bytes / png_bytes:.2f}x |")


if __name__ == "__main__":
    main()
