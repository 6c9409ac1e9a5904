"""Write uint8 videos to mp4 with PyAV (no moviepy / torchvision needed)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch


def write_mp4(path: str | Path, frames: torch.Tensor | np.ndarray, fps: float = 8.0) -> Path:
    """frames: uint8 (T, H, W, 3). H and W are padded to even sizes for yuv420p."""
    frames = frames.numpy() if isinstance(frames, torch.Tensor) else frames
    T, H, W, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
