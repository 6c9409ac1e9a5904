"""Convert CoTracker's Kubric folder layout into tracklight shards.

    python tools/convert_kubric.py /data/kubric/kubric_movi_f_120_frames_dense/movi_f /data/kubric_shards \
        --val-count 30 --workers 8

Input: one folder per sequence, `<seq>/<seq>.npy` (a pickled dict, read with the data-only
unpickler of `datamodules/safe_pickle.py` so it cannot run code: `coords` (N, T, 2)
pixels, `visibility` (N, T) that means OCCLUDED) and `<seq>/frames/*.png`; optional
per-frame depth `<seq>/depth*/NNN.npy`. The first `--val-count` sequences (sorted, as
CoTracker's `split="valid"`) go to `val/`, the rest to `train/`.

Coordinates: Kubric labels are raster coordinates (pixel centres at i + 0.5); tracklight
puts centres at integers, so 0.5 is subtracted (`--coords raster`, the default). Pass
`--coords as-is` to keep CoTracker's labels unchanged (its checkpoints learned that offset).
"""

from __future__ import annotations

import argparse
import logging
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.safe_pickle import load_object_npy  # noqa: E402
from datamodules.shards import ShardWriter, encode_clip  # noqa: E402

log = logging.getLogger("convert_kubric")


def find_sequences(root: Path) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"Kubric root {root} is not a directory")
    seqs = sorted(p for p in root.iterdir() if p.is_dir() and (p / f"{p.name}.npy").is_file())
    if not seqs:
        raise FileNotFoundError(f"no <seq>/<seq>.npy sequence folders under {root}")
    return seqs


def load_sequence(seq: Path, coords: str = "raster") -> dict:
    """Read one sequence folder into frames / tracks / visible (/ depth) arrays."""
    annotation = load_object_npy(seq / f"{seq.name}.npy")
    for key in ("coords", "visibility"):
        if key not in annotation:
            raise KeyError(f"{seq / (seq.name + '.npy')}: missing key {key!r} (has {sorted(annotation)})")
    frame_files = sorted((seq / "frames").glob("*.png"))
    if not frame_files:
        raise FileNotFoundError(f"{seq / 'frames'}: no PNG frames")
    frames = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in frame_files])
    tracks = np.asarray(annotation["coords"], dtype=np.float32).transpose(1, 0, 2)
    if coords == "raster":
        tracks = tracks - 0.5
    visible = ~np.asarray(annotation["visibility"], dtype=bool).T  # the file stores OCCLUDED
    if tracks.shape[0] != len(frame_files):
        raise ValueError(f"{seq}: {len(frame_files)} frames but coords cover {tracks.shape[0]}")
    out = {"frames": frames, "tracks": tracks, "visible": visible}
    depth_dirs = [d for d in sorted(seq.glob("depth*")) if d.is_dir()]
    if depth_dirs:
        depth_files = sorted(depth_dirs[0].glob("*.npy"))
        if len(depth_files) == len(frame_files):
            out["depth"] = np.stack([np.load(f, allow_pickle=False).astype(np.float32).squeeze() for f in depth_files])
    return out


def _encode(args: tuple[Path, str, int]) -> dict:
    seq, coords, quality = args
    data = load_sequence(seq, coords)
    depth = data.get("depth")
    return encode_clip(seq.name.replace(".", "_"), data["frames"], data["tracks"], data["visible"], fps=24.0,
                       source="kubric_movi_f", depth=depth, depth_valid=None if depth is None else depth > 0,
                       jpeg_quality=quality)


def convert(root: Path, out: Path, val_count: int = 30, workers: int = 4, coords: str = "raster",
            clips_per_shard: int = 100, jpeg_quality: int = 95) -> dict[str, int]:
    seqs = find_sequences(root)
    splits = {"val": seqs[:val_count], "train": seqs[val_count:]}
    counts = {}
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else _Serial() as pool:
        for split, split_seqs in splits.items():
            if not split_seqs:
                continue
            with ShardWriter(out / split, prefix=split, max_count=clips_per_shard) as writer:
                for sample in pool.map(_encode, [(s, coords, jpeg_quality) for s in split_seqs]):
                    writer.write_sample(sample)
                counts[split] = writer.count
    return counts


class _Serial:
    """In-process stand-in for a pool (workers=1 keeps tracebacks simple)."""

    def map(self, fn, items):  # noqa: ANN001, ANN201
        return map(fn, items)

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="folder holding one sub-folder per sequence")
    parser.add_argument("out", type=Path, help="output folder (train/ and val/ shards)")
    parser.add_argument("--val-count", type=int, default=30)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--coords", choices=["raster", "as-is"], default="raster")
    parser.add_argument("--clips-per-shard", type=int, default=100)
    parser.add_argument("--jpeg-quality", type=int, default=90)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    counts = convert(args.root, args.out, args.val_count, args.workers, args.coords, args.clips_per_shard,
                     args.jpeg_quality)
    print(f"wrote {counts} clips under {args.out}")


if __name__ == "__main__":
    main()
