"""The conversion driver shared by every dataset: source sequences -> clips -> shards.

A reader (``datamodules/sources/``) lists sequences and reads frames; this module cuts each
sequence into clips (``clip_len`` frames every ``stride``; whole sequences when ``clip_len`` is
None), brings every frame to one stored resolution, encodes the clips with
``datamodules/shards.py`` and writes them, in parallel, as ``<out>/<name>-NNNN.tar`` with
``clips_per_shard`` clips of one sequence per shard.

Resolution: frames take the depth map's size when the source's differ (ScanNet colour is
1296x968, its depth 640x480; depth is never resampled unless asked), or ``size`` (H, W) when
given: images resampled (bicubic), depth and validity by nearest neighbour (a resampled depth
would invent values across edges), intrinsics and tracks mapped with pixel centres at integers:
u' = (u + 0.5) * W'/W - 0.5.

Frames: source JPEG bytes are stored as they are (no re-encoding) unless resized; otherwise
``frame_format`` "png" stores lossless PNG (the source's own bytes when they are 8-bit RGB PNG,
else the decoded or resized pixels), "jpeg" encodes at ``jpeg_quality``. Evaluation sets default
to "png" (the model must see the source's pixels, not our JPEG's), training sets to "jpeg".

Re-running into the same output: each shard is written to a hidden temporary name and renamed
when complete, so a shard under its final name is always whole. A shard already there is kept
(skipped) unless ``overwrite``; a shard whose clips lost frames to unreadable files also leaves
``<shard>.skipped.json`` naming them, and is redone on the next run (fix the file, run again).
The options are kept in ``<out>/convert.json``; a re-run with different options stops with an
error instead of mixing two conversions (``overwrite`` replaces them and removes this dataset's
shards that the new run does not write).

A missing or unreadable file skips the clip that needs it (named in the log, counted in the
summary); the rest converts. Nothing is unpickled and nothing pickled is written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from datamodules.shards import encode_clip, encode_jpeg, encode_png, write_shard
from datamodules.sources.base import DatasetSource, Frame, SequenceRef, SourceReadError

log = logging.getLogger(__name__)

MANIFEST = "convert.json"


@dataclass
class ConvertOptions:
    clip_len: int | None = 64  # frames per clip; None = whole sequence
    stride: int | None = None  # first-frame step between clips; None = clip_len (no overlap)
    size: tuple[int, int] | None = None  # stored (H, W); None = the source's (the depth map's)
    frame_format: str = "jpeg"  # "jpeg" or "png" for frames that must be encoded
    jpeg_quality: int = 95
    max_depth: float | None = None  # depth >= max_depth becomes invalid (sky)
    max_tracks: int | None = 2048  # tracks kept per clip (a seeded subset of those visible in it)
    clips_per_shard: int = 50
    workers: int = 1
    overwrite: bool = False

    def manifest(self) -> dict[str, Any]:
        """The options that decide the bytes (workers and overwrite do not)."""
        out = asdict(self)
        for key in ("workers", "overwrite"):
            out.pop(key)
        out["size"] = list(self.size) if self.size else None
        return out


@dataclass
class UnitResult:
    """What one shard's conversion did, summed into the run summary."""

    shard: str
    clips: int = 0
    frames: int = 0
    depth_pixels: int = 0
    invalid_depth_pixels: int = 0
    bytes: int = 0
    skipped_clips: int = 0
    skipped_files: list[str] = field(default_factory=list)
    reused: bool = False  # an existing complete shard was kept


@dataclass
class Unit:
    sequence: SequenceRef
    windows: list[list[int]]  # frame indices (into sequence.frames) of each clip
    path: Path
    key_prefix: str


def slug(text: str) -> str:
    """A sample key / file name part: letters, digits, '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"


def clip_windows(num_frames: int, clip_len: int | None, stride: int | None) -> list[list[int]]:
    """Start indices every `stride` frames, each clip `clip_len` frames; the last partial window is dropped."""
    if clip_len is None:
        return [list(range(num_frames))] if num_frames else []
    step = stride or clip_len
    return [list(range(s, s + clip_len)) for s in range(0, num_frames - clip_len + 1, step)]


def plan_units(source: DatasetSource, sequences: list[SequenceRef], out: Path, opts: ConvertOptions) -> list[Unit]:
    units = []
    for seq in sequences:
        windows = clip_windows(len(seq.frames), opts.clip_len, opts.stride)
        if not windows:
            log.warning("%s: %d frames, fewer than clip_len %s: no clip", seq.name, len(seq.frames), opts.clip_len)
        for part, first in enumerate(range(0, len(windows), opts.clips_per_shard)):
            name = f"{source.name}-{slug(seq.name)}-{part:04d}.tar"
            units.append(Unit(seq, windows[first:first + opts.clips_per_shard], out / name,
                              f"{source.name}_{slug(seq.name)}"))
    return units


def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == hw:
        return image
    return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.Resampling.BICUBIC))


def resize_nearest(array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest neighbour with pixel centres at integers: output pixel i samples floor((i + 0.5) * in / out)."""
    h, w = array.shape[:2]
    if (h, w) == hw:
        return array
    rows = np.minimum(((np.arange(hw[0]) + 0.5) * h / hw[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(hw[1]) + 0.5) * w / hw[1]).astype(np.int64), w - 1)
    return array[rows[:, None], cols[None, :]]


def scale_points(points: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """(..., 2) pixel (x, y) with centres at integers, from one image size to another."""
    scale = np.array([to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]])
    return (points + 0.5) * scale - 0.5


def scale_intrinsics(intrinsics: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    sx, sy = to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]
    out = np.array(intrinsics, dtype=np.float64)
    out[..., 0, :] *= sx
    out[..., 1, :] *= sy
    out[..., 0, 2] += 0.5 * sx - 0.5
    out[..., 1, 2] += 0.5 * sy - 0.5
    return out


class ClipBuilder:
    """Reads the frames of one unit's clips (each frame once, in order) and encodes the clips."""

    def __init__(self, source: DatasetSource, opts: ConvertOptions, split_meta: dict[str, Any]) -> None:
        self.source, self.opts, self.split_meta = source, opts, split_meta

    def stored_hw(self, frame: Frame) -> tuple[int, int]:
        native = frame.depth.shape if frame.depth is not None else frame.image.shape[:2]
        return tuple(self.opts.size) if self.opts.size else tuple(native)

    def frame_bytes(self, frame: Frame, hw: tuple[int, int]) -> tuple[bytes, bool]:
        """The stored frame's bytes and whether they decode to the source's exact pixels."""
        image = frame.image
        if image.shape[:2] == hw and frame.encoded is not None:
            is_jpeg = frame.encoded[:2] == b"\xff\xd8"
            if is_jpeg or self.opts.frame_format == "png":
                return frame.encoded, True
        if self.opts.frame_format == "png":  # lossless from the (possibly resized) pixels
            return encode_png(resize_image(image, hw)), image.shape[:2] == hw
        return encode_jpeg(resize_image(image, hw), self.opts.jpeg_quality), False

    def build(self, unit: Unit, window: list[int], frames: dict[int, Frame]) -> tuple[dict[str, Any], dict[str, int]]:
        seq, opts = unit.sequence, self.opts
        first = frames[window[0]]
        hw = self.stored_hw(first)
        native_hw = first.depth.shape if first.depth is not None else first.image.shape[:2]
        encoded, lossless = [], True
        for i in window:
            data, exact = self.frame_bytes(frames[i], hw)
            encoded.append(data)
            lossless &= exact
        stats = {"depth_pixels": 0, "invalid_depth_pixels": 0}
        depth = valid = None
        if first.depth is not None:
            depth = np.stack([resize_nearest(frames[i].depth, hw) for i in window]).astype(np.float32)
            valid = np.stack([resize_nearest(frames[i].valid, hw) for i in window]) & np.isfinite(depth)
            if opts.max_depth is not None:
                valid &= depth < opts.max_depth
            depth = np.where(valid, depth, 0.0).astype(np.float32)
            stats["depth_pixels"], stats["invalid_depth_pixels"] = int(valid.size), int((~valid).sum())
        intrinsics = cam_to_world = None
        if first.intrinsics is not None:
            intrinsics = scale_intrinsics(np.stack([frames[i].intrinsics for i in window]), native_hw, hw)
            if first.cam_to_world is not None:
                cam_to_world = np.stack([frames[i].cam_to_world for i in window])
        tracks, visible = self.tracks(unit, window, native_hw, hw)
        start = window[0]
        key = f"{unit.key_prefix}_{start:06d}"
        meta = {
            **self.split_meta,
            "sequence": seq.name,
            "source_frames": [seq.frame_names[i] for i in window],
            "frame_format": "png" if encoded[0][:2] != b"\xff\xd8" else "jpeg",
            "frames_lossless": bool(lossless),
            **({"frames_resized_from": list(first.image.shape[:2])} if first.image.shape[:2] != hw else {}),
            **({"depth_units": "m", "depth_source": self.source.depth_source} if depth is not None else {}),
            **({"pose_source_convention": self.source.pose_source_convention} if cam_to_world is not None else {}),
            **self.source.meta(seq),
        }
        shape_only = np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (len(window), *hw, 3))  # frames are in `encoded`
        sample = encode_clip(key, shape_only, tracks, visible, fps=seq.fps, source=self.source.name, depth=depth,
                             depth_valid=valid, extra_meta=meta, encoded_frames=encoded, intrinsics=intrinsics,
                             cam_to_world=cam_to_world)
        return sample, stats

    def tracks(self, unit: Unit, window: list[int], native_hw: tuple[int, int],
               hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        found = self.source.read_tracks(unit.sequence, window)
        if found is None:
            return np.zeros((len(window), 0, 2), np.float32), np.zeros((len(window), 0), bool)
        tracks, visible = found
        finite = np.isfinite(tracks).all(-1)
        visible = visible & finite
        tracks = np.where(finite[..., None], tracks, 0.0)
        tracks = scale_points(tracks, native_hw, hw).astype(np.float32)
        H, W = hw
        visible &= (tracks[..., 0] >= 0) & (tracks[..., 0] <= W - 1) & (tracks[..., 1] >= 0) & (tracks[..., 1] <= H - 1)
        keep = np.flatnonzero(visible.any(0))
        if self.opts.max_tracks is not None and len(keep) > self.opts.max_tracks:
            rng = np.random.default_rng(list(f"{unit.key_prefix}{window[0]}".encode()))  # same subset on a re-run
            keep = np.sort(rng.choice(keep, self.opts.max_tracks, replace=False))
        return tracks[:, keep], visible[:, keep]


def convert_unit(source: DatasetSource, unit: Unit, opts: ConvertOptions, split_meta: dict[str, Any]) -> UnitResult:
    """Read, encode and write one shard (in a worker process); unreadable files skip their clip."""
    result = UnitResult(str(unit.path))
    builder = ClipBuilder(source, opts, split_meta)
    cache: dict[int, Frame] = {}
    bad: dict[int, str] = {}

    def samples() -> Iterator[dict[str, Any]]:
        for window in unit.windows:
            for i in [k for k in cache if k < window[0]]:
                del cache[i]
            for i in window:
                if i not in cache and i not in bad:
                    try:
                        cache[i] = source.read_frame(unit.sequence, i)
                    except SourceReadError as err:
                        bad[i] = str(err)
                        result.skipped_files.append(str(err))
                        log.warning("skipping: %s", err)
            if any(i in bad for i in window):
                result.skipped_clips += 1
                continue
            try:
                sample, stats = builder.build(unit, window, cache)
            except SourceReadError as err:  # e.g. an unreadable annotation file for the clip's tracks
                result.skipped_clips += 1
                result.skipped_files.append(str(err))
                log.warning("skipping: %s", err)
                continue
            result.clips += 1
            result.frames += len(window)
            result.depth_pixels += stats["depth_pixels"]
            result.invalid_depth_pixels += stats["invalid_depth_pixels"]
            yield sample

    result.bytes = write_shard(unit.path, samples())
    skipped_note = unit.path.with_name(unit.path.name + ".skipped.json")
    if result.skipped_files:
        skipped_note.write_text(json.dumps({"skipped_clips": result.skipped_clips, "files": result.skipped_files}, indent=1))
    else:
        skipped_note.unlink(missing_ok=True)
    if result.clips == 0:
        unit.path.unlink(missing_ok=True)  # an empty shard would only make readers warn
    return result


def _check_manifest(out: Path, dataset: str, manifest: dict[str, Any], overwrite: bool) -> None:
    path = out / MANIFEST
    if not path.exists() or overwrite:
        return
    old = json.loads(path.read_text()).get(dataset)
    if old is not None and old["options"] != manifest:
        changed = sorted(k for k in manifest if old["options"].get(k) != manifest.get(k))
        raise ValueError(f"{out} holds a {dataset} conversion with other options ({', '.join(changed)}); "
                         "pass --overwrite to replace it or choose another output folder")


def _write_manifest(out: Path, dataset: str, manifest: dict[str, Any], summary: dict[str, Any]) -> None:
    path = out / MANIFEST
    data = json.loads(path.read_text()) if path.exists() else {}
    data[dataset] = {"options": manifest, "summary": summary}
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _done(unit: Unit) -> bool:
    return unit.path.exists() and not unit.path.with_name(unit.path.name + ".skipped.json").exists()


def convert(source: DatasetSource, split: str, out: Path, opts: ConvertOptions, sequences: list[SequenceRef],
            split_meta: dict[str, Any] | None = None, progress: bool = True,
            listing_skips: list[str] | None = None) -> dict[str, Any]:
    """Convert `sequences` of `source` into shards under `out`; returns the summary (also in convert.json).

    `listing_skips`: sources already found missing or unreadable while listing, named in the summary."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    # Sequences are not part of it: a re-run after more of a dataset was downloaded converts the new ones.
    manifest = {**opts.manifest(), "split": split,
                **({"benchmark": split_meta["benchmark"]["name"]} if split_meta and "benchmark" in split_meta else {})}
    _check_manifest(out, source.name, manifest, opts.overwrite)
    split_meta = {"dataset": source.name, "split": split, **(split_meta or {})}
    units = plan_units(source, sequences, out, opts)
    planned = {u.path.name for u in units}
    if opts.overwrite:  # shards of an earlier, different conversion of this dataset
        for stale in out.glob(f"{source.name}-*.tar"):
            if stale.name not in planned:
                stale.unlink()
    todo, results = [], []
    for unit in units:
        if opts.overwrite or not _done(unit):
            todo.append(unit)
        else:
            results.append(UnitResult(str(unit.path), reused=True, bytes=unit.path.stat().st_size))
    frames_of = {str(u.path): sum(len(w) for w in u.windows) for u in todo}
    started = time.perf_counter()
    with tqdm(total=sum(frames_of.values()), unit="frame", desc=f"{source.name} {split}", disable=not progress) as bar:
        for result in _run(source, todo, opts, split_meta):
            bar.update(frames_of[result.shard])
            results.append(result)
    seconds = time.perf_counter() - started
    summary = summarise(results, seconds)
    summary["skipped_files"] = list(listing_skips or []) + summary["skipped_files"]
    summary["sequences"] = len(sequences)
    _write_manifest(out, source.name, manifest, summary)
    return summary


def _run(source: DatasetSource, units: list[Unit], opts: ConvertOptions,
         split_meta: dict[str, Any]) -> Iterator[UnitResult]:
    if opts.workers <= 1 or len(units) <= 1:
        for unit in units:
            yield convert_unit(source, unit, opts, split_meta)
        return
    # Bounded submission: at most 2 units per worker in flight, so memory stays flat on big datasets.
    with ProcessPoolExecutor(max_workers=opts.workers) as pool:
        pending: set[Future] = set()
        queue = iter(units)
        for unit in queue:
            pending.add(pool.submit(convert_unit, source, unit, opts, split_meta))
            if len(pending) >= 2 * opts.workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        for future in pending:
            yield future.result()


def summarise(results: list[UnitResult], seconds: float) -> dict[str, Any]:
    written = [r for r in results if not r.reused]
    frames = sum(r.frames for r in written)
    depth_pixels = sum(r.depth_pixels for r in written)
    return {
        "shards_written": len(written),
        "shards_kept": len(results) - len(written),
        "clips": sum(r.clips for r in written),
        "frames": frames,
        "invalid_depth_fraction": (sum(r.invalid_depth_pixels for r in written) / depth_pixels) if depth_pixels else None,
        "bytes_written": sum(r.bytes for r in written),
        "bytes_kept": sum(r.bytes for r in results if r.reused),
        "skipped_clips": sum(r.skipped_clips for r in written),
        "skipped_files": [f for r in written for f in r.skipped_files],
        "seconds": round(seconds, 3),
        "frames_per_second": round(frames / seconds, 2) if seconds > 0 and frames else None,
    }


def format_summary(summary: dict[str, Any], out: Path) -> str:
    invalid = summary["invalid_depth_fraction"]
    lines = [
        f"wrote {summary['clips']} clips, {summary['frames']} frames, {summary['shards_written']} shards, "
        f"{summary['bytes_written'] / 1e6:.1f} MB to {out} in {summary['seconds']:.1f} s"
        + (f" ({summary['frames_per_second']} frames/s)" if summary["frames_per_second"] else ""),
        f"invalid depth: {'n/a (no depth)' if invalid is None else f'{100 * invalid:.2f}% of pixels'}",
    ]
    if summary["shards_kept"]:
        lines.append(f"kept {summary['shards_kept']} complete shards from an earlier run "
                     f"({summary['bytes_kept'] / 1e6:.1f} MB; --overwrite rewrites them)")
    if summary["skipped_clips"] or summary["skipped_files"]:
        lines.append(f"skipped {summary['skipped_clips']} clips; {len(summary['skipped_files'])} source file(s) "
                     f"or sequence(s) missing or unreadable (all listed in {out / MANIFEST}):")
        lines.extend(f"  {f}" for f in summary["skipped_files"][:20])
        if len(summary["skipped_files"]) > 20:
            lines.append(f"  ... and {len(summary['skipped_files']) - 20} more")
    return "\n".join(lines)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
