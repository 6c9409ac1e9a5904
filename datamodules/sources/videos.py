"""Unlabelled colour video: a folder of video files (decoded with PyAV) and/or of frame folders.

Every video file (mp4, avi, webm, mkv, mov, ...) under ``root`` is a sequence, and so is every
folder that directly holds jpg/png frames (the DAVIS-2017 ``JPEGImages/480p/<video>/%05d.jpg`` and
Videvo / TCVC ``<video>/%05d.png`` layouts: point ``root`` at the folder of video folders).
Frames sort naturally (``2.png`` before ``10.png``). JPEG frames are copied as they are; decoded
frames are encoded as JPEG (or PNG with ``--frame-format png``). The clips have no depth and no
tracks (``tools/extract_tracks.py`` adds tracks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datamodules.sources.base import DatasetSource, Frame, SequenceRef, SourceReadError, natural_key, read_image
from datamodules.video_files import DEFAULT_FOLDER_FPS, FRAME_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv")


def probe_video(path: Path) -> tuple[int, float]:
    """(number of frames, fps); the count is exact: packets are demuxed (cheap), not decoded."""
    import av  # PyAV only when a video is read: config loading stays light

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SourceReadError(f"{path}: file has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            count = sum(1 for packet in container.demux(stream) if packet.size)
            return count, float(rate) if rate else DEFAULT_FOLDER_FPS
    except av.FFmpegError as err:
        raise SourceReadError(f"{path}: not a readable video ({err})") from err


class VideosSource(DatasetSource):
    name = "videos"
    splits = ("all",)
    default_clip_len = 64

    def __init__(self, root: Path, **options: Any) -> None:
        super().__init__(root, **options)
        self._decoder: tuple[Path, Any, Any, int] | None = None  # (file, container, frame iterator, next index)
        self.unreadable: list[str] = []  # video files that could not even be probed (named in the summary)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_decoder": None}

    def sequences(self, split: str) -> list[SequenceRef]:
        fps = float(self.options.get("fps") or DEFAULT_FOLDER_FPS)
        out = []
        for path in sorted(self.root.rglob("*"), key=lambda p: natural_key(str(p))):
            name = "_".join(path.relative_to(self.root).with_suffix("").parts)
            if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
                try:
                    count, video_fps = probe_video(path)
                except SourceReadError as err:
                    self.unreadable.append(str(err))
                    continue
                out.append(SequenceRef(name, [(path, i) for i in range(count)], [str(i) for i in range(count)],
                                       fps=video_fps, extra={"video": path}))
            elif path.is_dir():
                frames = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES),
                                key=lambda p: natural_key(p.name))
                if frames:
                    name = "_".join(path.relative_to(self.root).parts) or path.name
                    out.append(SequenceRef(name, frames, [f.stem for f in frames], fps=fps))
        if not out and not self.unreadable:
            raise FileNotFoundError(f"no video files or frame folders under {self.root}")
        return out

    def read_frame(self, sequence: SequenceRef, index: int) -> Frame:
        if "video" not in sequence.extra:
            return read_image(sequence.frames[index])
        return Frame(image=self._decode(sequence.extra["video"], index))

    def _decode(self, path: Path, index: int) -> np.ndarray:
        """Frame `index` of a video, decoding forward from the last request (clips come in order)."""
        import av

        if self._decoder is None or self._decoder[0] != path or self._decoder[3] > index:
            self._close()
            try:
                container = av.open(str(path))
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                self._decoder = (path, container, container.decode(stream), 0)
            except av.FFmpegError as err:
                raise SourceReadError(f"{path}: not a readable video ({err})") from err
        path_, container, frames, position = self._decoder
        try:
            while True:
                frame = next(frames, None)
                if frame is None:
                    raise SourceReadError(f"{path}: ends after {position} frames, frame {index} requested")
                position += 1
                if position - 1 == index:
                    self._decoder = (path_, container, frames, position)
                    return frame.to_ndarray(format="rgb24")
        except av.FFmpegError as err:
            self._close()
            raise SourceReadError(f"{path}: decoding failed at frame {position} ({err})") from err

    def _close(self) -> None:
        if self._decoder is not None:
            self._decoder[1].close()
            self._decoder = None
