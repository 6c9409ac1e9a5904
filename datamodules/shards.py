"""The WebDataset shard schema for clips: the one place that decides bytes on disk.

One clip per sample. Members of a sample with key K (keys never contain dots):

    K.meta.json      {"schema_version", "height", "width", "num_frames", "num_tracks",
                      "fps", "source", "depth_kind" (optional), ...}
    K.000.jpg ...    one image per frame, zero-padded 3-digit index (4 digits past 999 frames):
                     JPEG (`.jpg`), or lossless PNG (`.png`, 8-bit RGB) where a clip must keep the
                     source's exact pixels (evaluation sets converted from PNG sources)
    K.tracks.npy     float32 (T, N, 2) pixel (x, y), pixel centres at integers; N may be 0
                     (colour or depth clips without tracks: tools/extract_tracks.py adds them)
    K.visible.npy    bool (T, N), True = visible
    K.depth.npz      optional: arrays `depth` float32 (T, H, W) and `valid` bool (T, H, W);
                     metric data stores metres (`meta.depth_units == "m"`)
    K.queries.npy    optional: float32 (N, 3) the (t, x, y) query each track was tracked from
                     (tracks made by a tracker, e.g. pre-extracted pseudo-labels)
    K.camera.npz     optional: `intrinsics` float64 (T, 3, 3), pixels of the STORED frames;
                     optional `cam_to_world` float64 (T, 4, 4) and `pose_valid` bool (T,)

Camera convention (one for every dataset; converters translate the source's): OpenCV axes,
x right, y down, z forward; `cam_to_world` maps camera coordinates to the source's world frame
(X_world = cam_to_world @ [X_cam, 1]), metres; the world frame itself (its origin, which way is
up) is the dataset's. Intrinsics follow the point convention above: pixel centres at integer
coordinates, so u = fx X / Z + cx puts the centre of the top-left pixel at u = 0. Frames whose
source pose is missing or not finite have `pose_valid` False and a NaN matrix.

Provenance in `meta.json` (written by tools/convert.py; every field optional for readers):
`dataset`, `sequence`, `split`, `source_frames` (the source's frame name or index per stored
frame, so protocol selections such as [30:140] can be re-derived), `depth_units`,
`depth_source` (the source encoding, e.g. "uint16 png / 1000"), `camera_convention`,
`pose_source_convention`, `frame_format` ("jpeg" or "png"), `frames_lossless` (the stored
frames decode to exactly the source's pixels: PNG members, or the source's own JPEG bytes),
`benchmark` (protocol clips only: name, crop, depth cap; see datamodules/depth_benchmarks.py).

Arrays are plain `.npy` / `.npz` read with `allow_pickle=False`; no member is ever
unpickled.

Two kinds of bad sample, told apart here and handled by the readers (shard_reader.py):
  - corrupt (`CorruptSampleError`): bytes that do not decode, i.e. a `meta.json` that is not a JSON
    object, a `.npy` / `.npz` that does not load (pickled arrays included), tracks holding NaN/Inf,
    a frame that is not an image or whose size differs from `meta.json`'s height x width.
    Damage: counted and skipped.
  - schema violation (`ShardFormatError`): well-formed bytes of another layout, i.e. a required
    member missing, another `schema_version`, arrays whose shapes do not fit the frames. Data
    written for another format or by another tool: a shard made of such samples stops training.

JPEG was chosen over a video codec because clips are sampled at random temporal offsets
(per-frame members decode only the frames a clip needs) and it beats the PNG-folder layout on
both speed and size (see BENCHMARKS.md).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import get_worker_info

from datamodules.errors import DataFormatError

SCHEMA_VERSION = 1
REQUIRED_MEMBERS = ("meta.json", "tracks.npy", "visible.npy")
_FRAME_MEMBER = re.compile(r"^(\d{3,5})\.(jpg|png)$")
FRAME_FORMATS = ("jpeg", "png")
CAMERA_CONVENTION = "opencv_cam_to_world"  # x right, y down, z forward; camera -> world; metres


class ShardFormatError(DataFormatError):
    """A sample that violates the schema (missing member, wrong shape or version)."""


class CorruptSampleError(ValueError):
    """A sample whose bytes do not decode (damaged data rather than another schema)."""


@dataclass
class Clip:
    """A clip as stored: frames still encoded so only the sampled frames are decoded."""

    key: str
    jpeg_frames: list[bytes]  # encoded frames as stored: JPEG, or PNG in lossless shards
    tracks: np.ndarray  # float32 (T, N, 2)
    visible: np.ndarray  # bool (T, N)
    meta: dict[str, Any]
    depth: np.ndarray | None = None  # float32 (T, H, W)
    depth_valid: np.ndarray | None = None  # bool (T, H, W)
    intrinsics: np.ndarray | None = None  # float64 (T, 3, 3), pixels of the stored frames
    cam_to_world: np.ndarray | None = None  # float64 (T, 4, 4), OpenCV axes, metres
    pose_valid: np.ndarray | None = None  # bool (T,), with cam_to_world
    source_url: str = ""
    queries: np.ndarray | None = None  # float32 (N, 3) (t, x, y)

    @property
    def num_frames(self) -> int:
        return len(self.jpeg_frames)

    def decode_frames(self, indices: range | list[int] | None = None) -> torch.Tensor:
        """Decode frames to a uint8 (t, H, W, 3) RGB tensor; CorruptSampleError names a bad frame."""
        indices = range(self.num_frames) if indices is None else indices
        size = (self.meta["height"], self.meta["width"]) if "height" in self.meta and "width" in self.meta else None
        names = [frame_member(i, self.num_frames) for i in indices]
        try:
            return decode_into_tensor([self.jpeg_frames[i] for i in indices], size, names)
        except CorruptSampleError as err:
            raise CorruptSampleError(f"{self.source_url} sample {self.key}: {err}") from None


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    # Full-resolution chroma (4:4:4): colour detail is tracking signal; 4:2:0 doubles the error.
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def encode_png(frame: np.ndarray) -> bytes:
    # Level 1: most of the size gain of zlib at a fraction of level 6's time on photographs.
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _is_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8"


def _is_png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n"


def frame_member(index: int, num_frames: int, data: bytes | None = None) -> str:
    """The member name of frame `index` in a clip of `num_frames` frames (3 digits, more past 999).

    The suffix follows the encoded bytes when given (PNG in lossless shards), else `.jpg`.
    """
    suffix = "png" if data is not None and _is_png(data) else "jpg"
    return f"{index:0{max(3, len(str(num_frames - 1)))}d}.{suffix}"


def decode_image(data: bytes, out: np.ndarray | None = None) -> np.ndarray:
    """Decode one encoded image to uint8 (H, W, 3) RGB, into `out` when given.

    JPEG goes through libjpeg-turbo via simplejpeg (1.4x faster than PIL here, bit-identical,
    and it writes into `out` without a copy); anything else through PIL. Data that does not decode,
    or an image whose size is not `out`'s, raises CorruptSampleError.
    """
    if _is_jpeg(data):
        try:  # simplejpeg reports corrupt data as ValueError
            if out is not None:  # it would fill the top of a larger buffer and leave the rest stale
                _check_size(simplejpeg.decode_jpeg_header(data)[:2], out.shape[:2])
            return simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)
        except CorruptSampleError:
            raise
        except ValueError as err:
            raise CorruptSampleError(f"corrupt JPEG: {err}") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            image = np.asarray(img.convert("RGB"))
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, zlib/struct errors... for bad bytes
        raise CorruptSampleError(f"not a decodable image ({type(err).__name__}: {err})") from None
    if out is not None:
        _check_size(image.shape[:2], out.shape[:2])
        out[...] = image
        return out
    return image


def _check_size(got: tuple[int, int], expected: tuple[int, int]) -> None:
    if tuple(got) != tuple(expected):
        raise CorruptSampleError(f"image of {got[0]}x{got[1]} pixels where the clip's frames are {expected[0]}x{expected[1]}")


def decode_into_tensor(images: list[bytes], size: tuple[int, int] | None = None,
                       names: list[str] | None = None) -> torch.Tensor:
    """Decode encoded images of one size (`size` = (H, W), else the first image's) into a uint8 (n, H, W, 3) tensor.

    Inside a DataLoader worker the tensor is allocated in shared memory, so handing it to
    the main process costs no extra copy (clips are megabytes; this halves loader time).
    CorruptSampleError names (`names[i]`, else the index) the first image that does not decode or
    has another size.
    """
    index = 0
    try:
        first = decode_image(images[0])
        if size is not None:
            _check_size(first.shape[:2], size)
        out = torch.empty((len(images), *first.shape), dtype=torch.uint8)
        if get_worker_info() is not None:
            out.share_memory_()
        view = out.numpy()
        view[0] = first
        for index in range(1, len(images)):
            decode_image(images[index], view[index])
    except CorruptSampleError as err:
        raise CorruptSampleError(f"{names[index] if names else f'image {index}'}: {err}") from None
    return out


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _load_npy(data: bytes, name: str, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as err:  # numpy raises ValueError, EOFError, OSError... for damaged or pickled data
        raise CorruptSampleError(f"{where}: member {name} is not a plain numpy array: {err}") from None


def _load_meta(data: bytes, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptSampleError(f"{where}: member meta.json is not JSON: {err}") from None
    if not isinstance(meta, dict):
        raise CorruptSampleError(f"{where}: member meta.json holds {type(meta).__name__}, not a JSON object")
    return meta


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
    frame_format: str = "jpeg",
    intrinsics: np.ndarray | None = None,
    cam_to_world: np.ndarray | None = None,
    pose_valid: np.ndarray | None = None,
    queries: np.ndarray | None = None,
) -> dict[str, Any]:
    """Build a WebDataset sample dict for one clip, validating shapes and dtypes.

    `encoded_frames`: the frames' existing JPEG or PNG bytes (e.g. from another shard or the source
    dataset), stored as they are instead of re-encoding `frames`, so rewriting a clip never loses
    quality; each member's suffix follows its bytes. `frame_format` ("jpeg" or "png") encodes
    `frames` otherwise. `intrinsics` (T, 3, 3) and `cam_to_world` (T, 4, 4) follow the camera
    convention of the module docstring; `pose_valid` (T,) defaults to "the matrix is finite".
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
    if frame_format not in FRAME_FORMATS:
        raise ShardFormatError(f"{key}: frame_format must be one of {FRAME_FORMATS}, got {frame_format!r}")
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
        if encoded_frames is not None:
            data = encoded_frames[t]
            if not (_is_jpeg(data) or _is_png(data)):
                raise ShardFormatError(f"{key}: encoded frame {t} is neither JPEG nor PNG")
        else:
            data = encode_png(frames[t]) if frame_format == "png" else encode_jpeg(frames[t], jpeg_quality)
        sample[frame_member(t, num_frames, data)] = data
    if depth is not None:
        if depth.shape != (num_frames, height, width):
            raise ShardFormatError(f"{key}: depth must be {(num_frames, height, width)}, got {depth.shape}")
        valid = np.isfinite(depth) if depth_valid is None else depth_valid.astype(bool)
        buf = io.BytesIO()
        np.savez_compressed(buf, depth=np.nan_to_num(depth).astype(np.float32), valid=valid)
        sample["depth.npz"] = buf.getvalue()
        meta["depth_kind"] = depth_kind
    if intrinsics is not None or cam_to_world is not None:
        sample["camera.npz"] = _camera_npz(key, num_frames, intrinsics, cam_to_world, pose_valid)
        meta["camera_convention"] = CAMERA_CONVENTION
    if queries is not None:
        if queries.shape != (tracks.shape[1], 3):
            raise ShardFormatError(f"{key}: queries must be (N={tracks.shape[1]}, 3) as (t, x, y), got {queries.shape}")
        sample["queries.npy"] = _npy_bytes(queries.astype(np.float32))
    sample["meta.json"] = json.dumps(meta).encode()
    return sample


def _camera_npz(key: str, num_frames: int, intrinsics: np.ndarray | None, cam_to_world: np.ndarray | None,
                pose_valid: np.ndarray | None) -> bytes:
    if intrinsics is None:
        raise ShardFormatError(f"{key}: cam_to_world needs intrinsics")
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    if intrinsics.shape != (num_frames, 3, 3) or not np.isfinite(intrinsics).all():
        raise ShardFormatError(f"{key}: intrinsics must be finite ({num_frames}, 3, 3), got {intrinsics.shape}")
    arrays = {"intrinsics": intrinsics}
    if cam_to_world is not None:
        cam_to_world = np.asarray(cam_to_world, dtype=np.float64)
        if cam_to_world.shape != (num_frames, 4, 4):
            raise ShardFormatError(f"{key}: cam_to_world must be ({num_frames}, 4, 4), got {cam_to_world.shape}")
        finite = np.isfinite(cam_to_world).all(axis=(1, 2))
        valid = finite if pose_valid is None else np.asarray(pose_valid, dtype=bool) & finite
        if valid.shape != (num_frames,):
            raise ShardFormatError(f"{key}: pose_valid must be ({num_frames},), got {valid.shape}")
        arrays["cam_to_world"] = np.where(valid[:, None, None], cam_to_world, np.nan)
        arrays["pose_valid"] = valid
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # small: compression buys nothing
    return buf.getvalue()


def decode_clip(sample: dict[str, Any]) -> Clip:
    """Parse a raw WebDataset sample (member name -> bytes) into a Clip.

    Raises ShardFormatError (schema violation) or CorruptSampleError (damaged bytes), naming the shard,
    key and member; frames are only checked when they are decoded (Clip.decode_frames).
    """
    key = sample.get("__key__", "?")
    url = sample.get("__url__", "?")
    where = f"{url} sample {key}"
    missing = [m for m in REQUIRED_MEMBERS if m not in sample]
    frame_names = sorted((n for n in sample if _FRAME_MEMBER.match(n)), key=lambda n: int(n.split(".")[0]))
    if not frame_names:
        missing.append("NNN.jpg or NNN.png frames")
    if missing:
        raise ShardFormatError(f"{where}: missing required member(s) {missing}; present: {sorted(k for k in sample if not k.startswith('__'))}")
    meta = _load_meta(sample["meta.json"], where)
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ShardFormatError(f"{where}: schema_version {version}, this reader understands {SCHEMA_VERSION}")
    tracks = _load_npy(sample["tracks.npy"], "tracks.npy", where).astype(np.float32, copy=False)
    visible = _load_npy(sample["visible.npy"], "visible.npy", where).astype(bool, copy=False)
    if not np.isfinite(tracks).all():  # NaN labels would reach the loss and the augmentation's re-querying
        raise CorruptSampleError(f"{where}: member tracks.npy holds {int((~np.isfinite(tracks)).sum())} NaN/Inf values")
    if tracks.shape[0] != len(frame_names) or visible.shape != tracks.shape[:2]:
        raise ShardFormatError(
            f"{where}: {len(frame_names)} frames but tracks {tracks.shape} / visible {visible.shape}"
        )
    clip = Clip(key, [sample[n] for n in frame_names], tracks, visible, meta, source_url=url)
    if "depth.npz" in sample:
        try:
            with np.load(io.BytesIO(sample["depth.npz"]), allow_pickle=False) as arrays:
                clip.depth, clip.depth_valid = arrays["depth"], arrays["valid"]
        except Exception as err:  # zipfile / zlib / numpy errors for damaged data
            raise CorruptSampleError(f"{where}: member depth.npz does not load: {type(err).__name__}: {err}") from None
    if "camera.npz" in sample:
        try:
            with np.load(io.BytesIO(sample["camera.npz"]), allow_pickle=False) as arrays:
                clip.intrinsics = arrays["intrinsics"]
                if "cam_to_world" in arrays:
                    clip.cam_to_world, clip.pose_valid = arrays["cam_to_world"], arrays["pose_valid"]
        except Exception as err:  # zipfile / zlib / numpy errors for damaged data
            raise CorruptSampleError(f"{where}: member camera.npz does not load: {type(err).__name__}: {err}") from None
        if clip.intrinsics.shape != (clip.num_frames, 3, 3):
            raise ShardFormatError(f"{where}: camera.npz intrinsics {clip.intrinsics.shape} for {clip.num_frames} frames")
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


def write_shard(path: str | Path, samples: Iterable[dict[str, Any]]) -> int:
    """Write `samples` to the tar `path` atomically: a hidden temporary file renamed when complete,
    so a shard under its final name is never partial. Returns its size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as stream:
            writer = wds.TarWriter(stream)
            for sample in samples:
                writer.write(sample)
            writer.close()
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


def expand_shards(pattern: str | list[str]) -> list[str]:
    """Expand a shard spec (brace pattern, glob, directory, URL, or list) into shard URLs.

    Raises FileNotFoundError naming the pattern if nothing matches.
    """
    import glob

    import braceexpand

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
