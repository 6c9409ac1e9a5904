"""The WebDataset shard schema for clips: the one place that decides bytes on disk.

One clip per sample. Members of a sample with key K (keys never contain dots):

    K.meta.json      {"schema_version", "height", "width", "num_frames", "num_tracks",
                      "fps", "source", "depth_kind" (optional), ...}
    K.000.jpg ...    one JPEG per frame, zero-padded 3-digit index (4 digits past 999 frames)
    K.tracks.npy     float32 (T, N, 2) pixel (x, y), pixel centres at integers
    K.visible.npy    bool (T, N), True = visible
    K.depth.npz      optional: arrays `depth` float32 (T, H, W) and `valid` bool (T, H, W)
    K.queries.npy    optional: float32 (N, 3) the (t, x, y) query each track was tracked from
                     (tracks made by a tracker, e.g. pre-extracted pseudo-labels)

Arrays are plain `.npy` / `.npz` read with `allow_pickle=False`; no member is ever
unpickled. JPEG was chosen over a video codec because clips are sampled at random
temporal offsets (per-frame members decode only the frames a clip needs) and it beats the
PNG-folder layout on both speed and size (see BENCHMARKS.md).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import get_worker_info

SCHEMA_VERSION = 1
REQUIRED_MEMBERS = ("meta.json", "tracks.npy", "visible.npy")
_FRAME_MEMBER = re.compile(r"^(\d{3,5})\.jpg$")


class ShardFormatError(ValueError):
    """A sample that violates the schema (missing member, wrong shape or version)."""


@dataclass
class Clip:
    """A clip as stored: frames still JPEG-encoded so only the sampled frames are decoded."""

    key: str
    jpeg_frames: list[bytes]
    tracks: np.ndarray  # float32 (T, N, 2)
    visible: np.ndarray  # bool (T, N)
    meta: dict[str, Any]
    depth: np.ndarray | None = None  # float32 (T, H, W)
    depth_valid: np.ndarray | None = None  # bool (T, H, W)
    source_url: str = ""
    queries: np.ndarray | None = None  # float32 (N, 3) (t, x, y)

    @property
    def num_frames(self) -> int:
        return len(self.jpeg_frames)

    def decode_frames(self, indices: range | list[int] | None = None) -> torch.Tensor:
        """Decode frames to a uint8 (t, H, W, 3) RGB tensor."""
        indices = range(self.num_frames) if indices is None else indices
        return decode_into_tensor([self.jpeg_frames[i] for i in indices])


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    # Full-resolution chroma (4:4:4): colour detail is tracking signal; 4:2:0 doubles the error.
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def _is_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8"


def decode_image(data: bytes, out: np.ndarray | None = None) -> np.ndarray:
    """Decode one encoded image to uint8 (H, W, 3) RGB, into `out` when given.

    JPEG goes through libjpeg-turbo via simplejpeg (1.4x faster than PIL here, bit-identical,
    and it writes into `out` without a copy); anything else through PIL.
    """
    if _is_jpeg(data):
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)
        except ValueError as err:  # simplejpeg reports corrupt data as ValueError; readers skip OSError
            raise OSError(f"corrupt JPEG: {err}") from err
    with Image.open(io.BytesIO(data)) as img:
        image = np.asarray(img.convert("RGB"))
    if out is not None:
        out[...] = image
        return out
    return image


def decode_into_tensor(images: list[bytes]) -> torch.Tensor:
    """Decode encoded images into one uint8 (n, H, W, 3) tensor.

    Inside a DataLoader worker the tensor is allocated in shared memory, so handing it to
    the main process costs no extra copy (clips are megabytes; this halves loader time).
    """
    first = decode_image(images[0])
    out = torch.empty((len(images), *first.shape), dtype=torch.uint8)
    if get_worker_info() is not None:
        out.share_memory_()
    view = out.numpy()
    view[0] = first
    for i in range(1, len(images)):
        decode_image(images[i], view[i])
    return out


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _load_npy(data: bytes, name: str, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as err:
        raise ShardFormatError(f"{where}: member {name} is not a plain numpy array: {err}") from err


def encode_clip(
    key: str,
    frames: np.ndarray,
    tracks: np.ndarray,
    visible: np.ndarray,
    *,
    fps: float = 24.0,
    source: str = "unknown",
    depth: np.ndarray | None = None,
    depth_valid: np.ndarray | None = None,
    depth_kind: str = "depth",
    extra_meta: dict[str, Any] | None = None,
    jpeg_quality: int = 90,
    encoded_frames: Sequence[bytes] | None = None,
    queries: np.ndarray | None = None,
) -> dict[str, Any]:
    """Build a WebDataset sample dict for one clip, validating shapes and dtypes.

    `encoded_frames`: the frames' existing JPEG bytes (e.g. from another shard), stored as they are
    instead of re-encoding `frames`, so rewriting a clip never loses quality.
    """
    if "." in key or "/" in key:
        raise ShardFormatError(f"sample key {key!r} must not contain '.' or '/'")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ShardFormatError(f"{key}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    num_frames, height, width, _ = frames.shape
    if tracks.ndim != 3 or tracks.shape[0] != num_frames or tracks.shape[2] != 2:
        raise ShardFormatError(f"{key}: tracks must be (T={num_frames}, N, 2), got {tracks.shape}")
    if visible.shape != tracks.shape[:2]:
        raise ShardFormatError(f"{key}: visible must be {tracks.shape[:2]}, got {visible.shape}")
    if depth_kind not in ("depth", "disparity"):
        raise ShardFormatError(f"{key}: depth_kind must be 'depth' or 'disparity', got {depth_kind!r}")
    digits = max(3, len(str(num_frames - 1)))
    meta = {
        "schema_version": SCHEMA_VERSION,
        "height": int(height),
        "width": int(width),
        "num_frames": int(num_frames),
        "num_tracks": int(tracks.shape[1]),
        "fps": float(fps),
        "source": source,
        **(extra_meta or {}),
    }
    sample: dict[str, Any] = {
        "__key__": key,
        "tracks.npy": _npy_bytes(tracks.astype(np.float32)),
        "visible.npy": _npy_bytes(visible.astype(bool)),
    }
    if encoded_frames is not None and len(encoded_frames) != num_frames:
        raise ShardFormatError(f"{key}: {len(encoded_frames)} encoded frames for {num_frames} frames")
    for t in range(num_frames):
        sample[f"{t:0{digits}d}.jpg"] = encoded_frames[t] if encoded_frames is not None \
            else encode_jpeg(frames[t], jpeg_quality)
    if depth is not None:
        if depth.shape != (num_frames, height, width):
            raise ShardFormatError(f"{key}: depth must be {(num_frames, height, width)}, got {depth.shape}")
        valid = np.isfinite(depth) if depth_valid is None else depth_valid.astype(bool)
        buf = io.BytesIO()
        np.savez_compressed(buf, depth=np.nan_to_num(depth).astype(np.float32), valid=valid)
        sample["depth.npz"] = buf.getvalue()
        meta["depth_kind"] = depth_kind
    if queries is not None:
        if queries.shape != (tracks.shape[1], 3):
            raise ShardFormatError(f"{key}: queries must be (N={tracks.shape[1]}, 3) as (t, x, y), got {queries.shape}")
        sample["queries.npy"] = _npy_bytes(queries.astype(np.float32))
    sample["meta.json"] = json.dumps(meta).encode()
    return sample


def decode_clip(sample: dict[str, Any]) -> Clip:
    """Parse a raw WebDataset sample (member name -> bytes) into a Clip.

    Raises ShardFormatError naming the shard and key for schema violations; corrupt
    JPEG data is only detected when frames are decoded.
    """
    key = sample.get("__key__", "?")
    url = sample.get("__url__", "?")
    where = f"{url} sample {key}"
    missing = [m for m in REQUIRED_MEMBERS if m not in sample]
    frame_names = sorted((n for n in sample if _FRAME_MEMBER.match(n)), key=lambda n: int(n.split(".")[0]))
    if not frame_names:
        missing.append("NNN.jpg frames")
    if missing:
        raise ShardFormatError(f"{where}: missing required member(s) {missing}; present: {sorted(k for k in sample if not k.startswith('__'))}")
    meta = json.loads(sample["meta.json"])
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ShardFormatError(f"{where}: schema_version {version}, this reader understands {SCHEMA_VERSION}")
    tracks = _load_npy(sample["tracks.npy"], "tracks.npy", where).astype(np.float32, copy=False)
    visible = _load_npy(sample["visible.npy"], "visible.npy", where).astype(bool, copy=False)
    if tracks.shape[0] != len(frame_names) or visible.shape != tracks.shape[:2]:
        raise ShardFormatError(
            f"{where}: {len(frame_names)} frames but tracks {tracks.shape} / visible {visible.shape}"
        )
    clip = Clip(key, [sample[n] for n in frame_names], tracks, visible, meta, source_url=url)
    if "depth.npz" in sample:
        with np.load(io.BytesIO(sample["depth.npz"]), allow_pickle=False) as arrays:
            clip.depth, clip.depth_valid = arrays["depth"], arrays["valid"]
    if "queries.npy" in sample:
        clip.queries = _load_npy(sample["queries.npy"], "queries.npy", where).astype(np.float32, copy=False)
        if clip.queries.shape != (tracks.shape[1], 3):
            raise ShardFormatError(f"{where}: queries {clip.queries.shape} do not match {tracks.shape[1]} tracks")
    return clip


class ShardWriter:
    """Write clips to `<directory>/<prefix>-%06d.tar`, starting a new shard at size/count limits."""

    def __init__(self, directory: str | Path, prefix: str = "clips", max_count: int = 200,
                 max_size: float = 1e9) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._writer = wds.ShardWriter(
            str(self.directory / f"{prefix}-%06d.tar"), maxcount=max_count, maxsize=max_size, verbose=0
        )
        self.count = 0

    def write(self, key: str, frames: np.ndarray, tracks: np.ndarray, visible: np.ndarray, **kwargs: Any) -> None:
        self.write_sample(encode_clip(key, frames, tracks, visible, **kwargs))

    def write_sample(self, sample: dict[str, Any]) -> None:
        """Write a sample already built by `encode_clip` (e.g. in a worker process)."""
        self._writer.write(sample)
        self.count += 1

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def expand_shards(pattern: str | list[str]) -> list[str]:
    """Expand a shard spec (brace pattern, glob, directory, URL, or list) into shard URLs.

    Raises FileNotFoundError naming the pattern if nothing matches.
    """
    import braceexpand
    import glob

    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    urls: list[str] = []
    for pat in patterns:
        if "://" in pat or pat.startswith("pipe:"):
            urls.extend(braceexpand.braceexpand(pat))
            continue
        path = Path(pat)
        if path.is_dir():
            urls.extend(sorted(str(p) for p in path.glob("*.tar")))
            continue
        for expanded in braceexpand.braceexpand(pat):
            urls.extend(sorted(glob.glob(expanded)) if any(c in expanded for c in "*?[") else
                        ([expanded] if Path(expanded).exists() else []))
    if not urls:
        raise FileNotFoundError(f"shard pattern {pattern!r} matches no files")
    return urls
