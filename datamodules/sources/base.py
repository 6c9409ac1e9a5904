"""What a dataset reader gives the conversion driver, and the byte-level readers datasets share.

A reader (one module per dataset beside this one) only knows how to list its sequences and read
one frame: image, depth in metres with a validity mask, camera in the convention of
``datamodules/shards.py`` (OpenCV axes, camera-to-world, metres, pixel centres at integers).
Everything else (clip cutting, workers, atomic writes, skip-and-count, the summary) is the
driver's, ``datamodules/conversion.py``.

A file that is missing or unreadable raises :class:`SourceReadError` naming it; the driver skips
the clip that needs it, counts it, and converts the rest.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

# Axis change OpenCV camera (x right, y down, z forward) <- a camera with x left, y up, z forward
# (PyTorch3D); the matrix is its own inverse.
FLIP_XY = np.diag([-1.0, -1.0, 1.0])


class SourceReadError(Exception):
    """A source file that is missing or unreadable; the message starts with its path."""


@dataclass
class Frame:
    """One source frame. `image` (decoded) or `encoded` (the source's JPEG/PNG bytes) or both."""

    image: np.ndarray | None = None  # uint8 (H, W, 3) RGB
    encoded: bytes | None = None  # stored as-is when no resize is needed (no re-encoding)
    depth: np.ndarray | None = None  # float32 (h, w) metres; may differ in size from the image
    valid: np.ndarray | None = None  # bool (h, w)
    intrinsics: np.ndarray | None = None  # (3, 3) in pixels of the DEPTH map when there is one, else of the image
    cam_to_world: np.ndarray | None = None  # (4, 4) OpenCV axes, metres; NaN when the source pose is invalid


@dataclass
class SequenceRef:
    """A source sequence: its name, its frames (reader-specific references) and their source names."""

    name: str
    frames: list[Any]  # what read_frame needs for each frame (paths, indices, ...)
    frame_names: list[str]  # the source's name or index of each frame, recorded in meta.source_frames
    fps: float = 30.0
    extra: dict[str, Any] = field(default_factory=dict)  # reader-specific per-sequence data


class DatasetSource:
    """Base of the per-dataset readers. Subclasses set the class attributes and implement
    `sequences` and `read_frame` (and `read_tracks` when the dataset has point tracks)."""

    name: ClassVar[str]
    splits: ClassVar[tuple[str, ...]]  # the source's own splits; "bench" is added for protocol datasets
    lossless_frames: ClassVar[bool] = False  # evaluation sets keep PNG sources lossless by default
    depth_source: ClassVar[str | None] = None  # how the source encodes depth, for meta.json
    pose_source_convention: ClassVar[str | None] = None  # how the source stores cameras, for meta.json
    default_clip_len: ClassVar[int | None] = 64  # None: one clip per sequence

    def __init__(self, root: Path, **options: Any) -> None:
        self.root = Path(root)
        self.options = options
        if not self.root.exists():
            raise FileNotFoundError(f"{self.name} source {self.root} does not exist")

    def sequences(self, split: str) -> list[SequenceRef]:
        raise NotImplementedError

    def read_frame(self, sequence: SequenceRef, index: int) -> Frame:
        raise NotImplementedError

    def read_tracks(self, sequence: SequenceRef, indices: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
        """Tracks (t, N, 2) in source pixels (our convention) and visible (t, N) for these frames."""
        return None

    def meta(self, sequence: SequenceRef) -> dict[str, Any]:
        """Extra meta.json fields for every clip of `sequence`."""
        return {}


def natural_key(name: str) -> list[object]:
    """'2.jpg' before '10.jpg': digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def numeric_sorted(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: natural_key(p.name))


def list_files(directory: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files of `directory` with one of `suffixes`, in natural order; a missing folder is an error."""
    if not directory.is_dir():
        raise SourceReadError(f"{directory}: no such folder")
    return numeric_sorted([p for p in directory.iterdir() if p.suffix.lower() in suffixes and p.is_file()])


def read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise SourceReadError(f"{path}: {err.strerror or err}") from err


def read_image(path: Path, keep_bytes: bool = True) -> Frame:
    """An RGB image file, decoded (which validates it) and, when `keep_bytes`, its bytes to copy.

    Bytes are kept only for JPEG and 8-bit RGB PNG: what the shard reader decodes to the same pixels.
    """
    data = read_bytes(path)
    try:
        with Image.open(io.BytesIO(data)) as img:
            copyable = img.format == "JPEG" and img.mode == "RGB" or img.format == "PNG" and img.mode == "RGB"
            image = np.asarray(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for truncated / unknown data
        raise SourceReadError(f"{path}: not a readable image ({err})") from err
    return Frame(image=image, encoded=data if keep_bytes and copyable else None)


def read_png_uint16(path: Path) -> np.ndarray:
    """A 16-bit single-channel PNG as uint16 (H, W); an 8-bit file is an error (a wrong download)."""
    data = read_bytes(path)
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise SourceReadError(f"{path}: expected a 16-bit depth PNG, got mode {img.mode}")
            return np.asarray(img).astype(np.uint16)
    except (OSError, ValueError, SyntaxError) as err:
        raise SourceReadError(f"{path}: not a readable PNG ({err})") from err


def read_text_matrix(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Whitespace-separated numbers as float64 of `shape` (e.g. ScanNet pose/*.txt)."""
    try:
        values = np.array(read_bytes(path).decode().split(), dtype=np.float64)
    except ValueError as err:
        raise SourceReadError(f"{path}: not a text matrix ({err})") from err
    if values.size != int(np.prod(shape)):
        raise SourceReadError(f"{path}: {values.size} numbers, expected {int(np.prod(shape))} for {shape}")
    return values.reshape(shape)


def quaternion_to_matrix(q_xyzw: np.ndarray) -> np.ndarray:
    """Rotation matrix of a unit quaternion (x, y, z, w) (normalised here)."""
    x, y, z, w = np.asarray(q_xyzw, dtype=np.float64) / np.linalg.norm(q_xyzw)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rigid(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """4x4 [R t; 0 1]."""
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rotation, translation
    return out


def invert_rigid(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rigid transform (exact for rotations, unlike a general inverse)."""
    rotation, translation = matrix[:3, :3], matrix[:3, 3]
    return rigid(rotation.T, -rotation.T @ translation)


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
