"""Video files for prediction: read a video (PyAV: mp4, avi, webm, mkv, mov, ...) or a folder of
frames in bounded chunks; write mp4 frame by frame, 16-bit PNGs, and per-frame arrays into an
`.npz` without holding the whole video in memory.

Frames are uint8 RGB arrays (t, H, W, 3). Nothing here decodes a whole video at once.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_FOLDER_FPS = 30.0


class VideoReadError(ValueError):
    """A path that is not a readable video or frame folder; the message names the file."""


@dataclass
class VideoInfo:
    path: Path
    height: int
    width: int
    fps: float
    num_frames: int | None  # exact for folders; the container's estimate (or None) for video files


def _natural_key(path: Path) -> list[object]:
    """frame2.png before frame10.png."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _load_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as err:  # PIL raises OSError subclasses for truncated / unknown data
        raise VideoReadError(f"{path}: not a readable image frame ({err})") from err


class VideoReader:
    """Stream the frames of a video file or of a folder of jpg/png frames.

    Opening probes the source (size, fps, frame count) and raises :class:`VideoReadError`
    with the path in the message when it is missing, not a video, or has no frames.
    """

    def __init__(self, path: str | Path, folder_fps: float = DEFAULT_FOLDER_FPS) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise VideoReadError(f"{self.path}: no such file or directory")
        if self.path.is_dir():
            self.frame_files = sorted((p for p in self.path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES),
                                      key=_natural_key)
            if not self.frame_files:
                raise VideoReadError(f"{self.path}: folder holds no {'/'.join(FRAME_SUFFIXES)} frames")
            first = _load_image(self.frame_files[0])
            self.info = VideoInfo(self.path, first.shape[0], first.shape[1], folder_fps, len(self.frame_files))
        else:
            self.frame_files = None
            self.info = self._probe_container()

    def _probe_container(self) -> VideoInfo:
        import av

        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise VideoReadError(f"{self.path}: file has no video stream")
                stream = container.streams.video[0]
                first = next(container.decode(stream), None)
                if first is None:
                    raise VideoReadError(f"{self.path}: video stream has no decodable frames")
                rate = stream.average_rate or stream.guessed_rate
                fps = float(rate) if rate else DEFAULT_FOLDER_FPS
                return VideoInfo(self.path, first.height, first.width, fps, stream.frames or None)
        except av.FFmpegError as err:
            raise VideoReadError(f"{self.path}: not a readable video ({err})") from err

    def frames(self) -> Iterator[np.ndarray]:
        """Frames one at a time, (H, W, 3) uint8; every frame must have the first frame's size."""
        H, W = self.info.height, self.info.width
        for index, frame in enumerate(self._decode()):
            if frame.shape[:2] != (H, W):
                raise VideoReadError(f"{self.path}: frame {index} is {frame.shape[1]}x{frame.shape[0]}, "
                                     f"the first frame is {W}x{H}")
            yield frame

    def _decode(self) -> Iterator[np.ndarray]:
        import av  # PyAV only when a video file is read: config loading stays light

        if self.frame_files is not None:
            for path in self.frame_files:
                yield _load_image(path)
            return
        index = 0
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    yield frame.to_ndarray(format="rgb24")
                    index += 1
        except av.FFmpegError as err:
            raise VideoReadError(f"{self.path}: decoding failed after {index} frames ({err})") from err

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """Consecutive (t, H, W, 3) uint8 chunks with t == size except possibly the last."""
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {size}")
        buffer: list[np.ndarray] = []
        for frame in self.frames():
            buffer.append(frame)
            if len(buffer) == size:
                yield np.stack(buffer)
                buffer = []
        if buffer:
            yield np.stack(buffer)


    def windows(self, length: int, overlap: int) -> Iterator[np.ndarray]:
        """(t, H, W, 3) windows of `length` frames; each starts with the previous window's last
        `overlap` frames. The last window may be shorter; every window adds at least one frame."""
        if not 0 <= overlap < length:
            raise ValueError(f"need 0 <= overlap < window length, got overlap {overlap}, length {length}")
        buffer: list[np.ndarray] = []
        new = 0
        for frame in self.frames():
            buffer.append(frame)
            new += 1
            if len(buffer) == length:
                yield np.stack(buffer)
                buffer, new = buffer[length - overlap:], 0
        if new:
            yield np.stack(buffer)


class Mp4Writer:
    """Write uint8 (t, H, W, 3) chunks to an H.264 mp4 (MPEG-4 part 2 where libx264 is missing).

    Odd heights and widths are padded by one edge pixel (yuv420p needs even sizes).
    """

    def __init__(self, path: str | Path, fps: float) -> None:
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = Fraction(fps).limit_denominator(1001)
        self.container = av.open(str(self.path), mode="w")
        self.stream: av.video.stream.VideoStream | None = None

    def write(self, frames: np.ndarray) -> None:
        import av

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (t, H, W, 3), got {frames.dtype} {frames.shape}")
        H, W = frames.shape[1:3]
        frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
        if self.stream is None:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            self.stream = self.container.add_stream(codec, rate=self.fps)
            self.stream.width, self.stream.height, self.stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        elif (frames.shape[1], frames.shape[2]) != (self.stream.height, self.stream.width):
            raise ValueError(f"{self.path}: frame size changed to {W}x{H}")
        for frame in frames:
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                self.container.mux(packet)

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrameArrayWriter:
    """Append per-frame arrays (t, *shape) to `path` (.npz) under `key`, frame by frame.

    Frames go to a raw temporary file beside `path`; `close` writes the `.npz` (a zip of
    `.npy` members, what `np.load` reads) by copying it in blocks, so memory stays bounded
    whatever the video length. `extra` small arrays are stored beside the frames.
    """

    def __init__(self, path: str | Path, key: str, dtype: np.dtype | type) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.key, self.dtype = key, np.dtype(dtype)
        self.frame_shape: tuple[int, ...] | None = None
        self.count = 0
        self.raw = tempfile.NamedTemporaryFile(dir=self.path.parent, prefix=f".{self.path.stem}-", suffix=".raw",
                                               delete=False)

    def append(self, frames: np.ndarray) -> None:
        frames = np.ascontiguousarray(frames, dtype=self.dtype)
        if self.frame_shape is None:
            self.frame_shape = frames.shape[1:]
        elif frames.shape[1:] != self.frame_shape:
            raise ValueError(f"frame shape changed from {self.frame_shape} to {frames.shape[1:]}")
        self.raw.write(frames.tobytes())
        self.count += frames.shape[0]

    def close(self, extra: dict[str, np.ndarray] | None = None) -> Path:
        self.raw.close()
        raw_path = Path(self.raw.name)
        try:
            header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                      "shape": (self.count, *(self.frame_shape or ()))}
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                with archive.open(f"{self.key}.npy", "w", force_zip64=True) as member, open(raw_path, "rb") as src:
                    np.lib.format.write_array_header_1_0(member, header)
                    shutil.copyfileobj(src, member, 1 << 24)
                for name, value in (extra or {}).items():
                    with archive.open(f"{name}.npy", "w") as member:
                        np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
            tmp.replace(self.path)
        finally:
            raw_path.unlink(missing_ok=True)
        return self.path


def write_png16(path: str | Path, image: np.ndarray) -> None:
    """Save a (H, W) uint16 array as a 16-bit greyscale PNG."""
    if image.ndim != 2 or image.dtype != np.uint16:
        raise ValueError(f"expected a (H, W) uint16 array, got {image.dtype} {image.shape}")
    Image.fromarray(image).save(path)


def read_png16(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).astype(np.uint16)
