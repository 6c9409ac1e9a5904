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
import pickle
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.safe_pickle import load_object_npy
from datamodules.shards import ShardWriter, encode_clip

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
    frames = np.stack([_read_png(f) for f in frame_files])
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


class ConversionError(ValueError):
    """A sequence that cannot be converted; the message names the sequence and the file."""


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for damaged files
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None


def _encode(args: tuple[Path, str, int]) -> dict:
    seq, coords, quality = args
    try:
        data = load_sequence(seq, coords)
        depth = data.get("depth")
        return encode_clip(seq.name.replace(".", "_"), data["frames"], data["tracks"], data["visible"], fps=24.0,
                           source="kubric_movi_f", depth=depth, depth_valid=None if depth is None else depth > 0,
                           jpeg_quality=quality)
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as err:  # UnsafePickleError included
        # One plain message: it crosses the process pool without the worker's traceback.
        raise ConversionError(f"sequence {seq.name}: {err.args[0] if isinstance(err, KeyError) else err}") from None


def convert(root: Path, out: Path, val_count: int = 30, workers: int = 4, coords: str = "raster",
            clips_per_shard: int = 100, jpeg_quality: int = 95) -> dict[str, int]:
    """Write `out/val` and `out/train`; all or nothing: a failure leaves no shard behind.

    Shards are written into a staging folder inside `out` and moved into place once every sequence
    converted; `out/train` / `out/val` must not exist yet (no mixing with an earlier conversion).
    """
    seqs = find_sequences(root)
    splits = {"val": seqs[:val_count], "train": seqs[val_count:]}
    existing = [str(out / split) for split, split_seqs in splits.items() if split_seqs and (out / split).exists()]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); remove it or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=out))
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        counts = {}
        for split, split_seqs in splits.items():
            if not split_seqs:
                continue
            jobs = [(s, coords, jpeg_quality) for s in split_seqs]
            with ShardWriter(staging / split, prefix=split, max_count=clips_per_shard) as writer:
                for sample in (pool.map(_encode, jobs) if pool else map(_encode, jobs)):
                    writer.write_sample(sample)
                counts[split] = writer.count
        for split in counts:
            (staging / split).rename(out / split)
        return counts
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # after a failure: do not convert the rest
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
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
    try:
        counts = convert(args.root, args.out, args.val_count, args.workers, args.coords, args.clips_per_shard,
                         args.jpeg_quality)
    except (ConversionError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}; nothing was written", file=sys.stderr)
        return 2
    print(f"wrote {counts} clips under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
