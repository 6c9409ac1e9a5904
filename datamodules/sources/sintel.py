"""MPI Sintel (depth training set): `.png` frames, `.dpt` depth, `.cam` cameras.

Layout: ``<root>/training/{clean,final}/<scene>/frame_NNNN.png`` (MPI-Sintel-training_images) and
``<depth_root>/training/{depth,camdata_left}/<scene>/frame_NNNN.{dpt,cam}`` (MPI-Sintel-depth-training;
``depth_root`` defaults to ``root``). ``.dpt``: float32 tag 202021.25, int32 width, int32 height,
float32 H x W metres, row-major. ``.cam``: float32 tag, 9 float64 M (intrinsics), 12 float64 N (3x4
world-to-camera, ``x = M N X``). No invalid marker: depth is valid where finite and positive.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.sources.base import (
    DatasetSource,
    Frame,
    SequenceRef,
    SourceReadError,
    invert_rigid,
    list_files,
    read_bytes,
    read_image,
)

TAG = np.float32(202021.25)


def read_dpt(path: Path) -> np.ndarray:
    data = read_bytes(path)
    if len(data) < 12 or np.frombuffer(data, np.float32, 1)[0] != TAG:
        raise SourceReadError(f"{path}: not a Sintel .dpt file (bad tag)")
    width, height = np.frombuffer(data, np.int32, 2, offset=4)
    if width <= 0 or height <= 0 or len(data) != 12 + 4 * int(width) * int(height):
        raise SourceReadError(f"{path}: .dpt header says {width}x{height}, file holds {len(data) - 12} bytes of depth")
    return np.frombuffer(data, np.float32, offset=12).reshape(int(height), int(width)).copy()


def read_cam(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(intrinsics (3, 3), world-to-camera (4, 4))."""
    data = read_bytes(path)
    if len(data) != 4 + 8 * 21 or np.frombuffer(data, np.float32, 1)[0] != TAG:
        raise SourceReadError(f"{path}: not a Sintel .cam file ({len(data)} bytes)")
    values = np.frombuffer(data, np.float64, 21, offset=4)
    world_to_camera = np.eye(4)
    world_to_camera[:3] = values[9:].reshape(3, 4)
    return values[:9].reshape(3, 3).copy(), world_to_camera


class SintelSource(DatasetSource):
    name = "sintel"
    splits = ("training",)
    lossless_frames = True
    depth_source = "sintel .dpt float32 metres"
    pose_source_convention = "sintel .cam: M intrinsics, N 3x4 world-to-camera (x = M N X)"
    default_clip_len = None

    def sequences(self, split: str) -> list[SequenceRef]:
        pass_name = self.options.get("sintel_pass") or "clean"
        images = self.root / "training" / pass_name
        depth_root = Path(self.options.get("depth_root") or self.root) / "training"
        if not images.is_dir():
            raise FileNotFoundError(f"no Sintel {pass_name} pass at {images}")
        out = []
        for scene in sorted(p for p in images.iterdir() if p.is_dir()):
            frames = list_files(scene, (".png",))
            refs = [(f, depth_root / "depth" / scene.name / f"{f.stem}.dpt",
                     depth_root / "camdata_left" / scene.name / f"{f.stem}.cam") for f in frames]
            out.append(SequenceRef(scene.name, refs, [f.stem for f in frames], fps=24.0, extra={"pass": pass_name}))
        return out

    def read_frame(self, sequence: SequenceRef, index: int) -> Frame:
        image_path, depth_path, cam_path = sequence.frames[index]
        frame = read_image(image_path)
        frame.depth = read_dpt(depth_path)
        frame.valid = np.isfinite(frame.depth) & (frame.depth > 0)
        frame.intrinsics, world_to_camera = read_cam(cam_path)
        frame.cam_to_world = invert_rigid(world_to_camera)
        return frame

    def meta(self, sequence: SequenceRef) -> dict:
        return {"sintel_pass": sequence.extra["pass"]}
