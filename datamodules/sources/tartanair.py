"""TartanAir: ``<root>/<env>/<Easy|Hard>/<Pxxx>/{image_left/NNNNNN_left.png, depth_left/NNNNNN_left_depth.npy, pose_left.txt}``.

Depth: float32 ``.npy`` metres (z-depth); the sky holds huge values, so depth at or beyond
``max_depth`` (default 1000 m) is invalid. Intrinsics: fx = fy = 320, cx = 320, cy = 240 at 640x480.
Poses: one line per frame ``tx ty tz qx qy qz qw``, camera-to-world with the camera body in NED axes
(x forward, y right, z down); the OpenCV camera is the body rotated by the fixed axis change below.
The world frame stays TartanAir's (NED).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.sources.base import (
    DatasetSource,
    Frame,
    SequenceRef,
    SourceReadError,
    intrinsics_matrix,
    list_files,
    quaternion_to_matrix,
    read_bytes,
    read_image,
    rigid,
)

TARTANAIR_INTRINSICS = intrinsics_matrix(320.0, 320.0, 320.0, 240.0)
# Columns: the OpenCV camera axes (x right, y down, z forward) in NED body axes (x forward, y right, z down).
NED_FROM_OPENCV = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def read_poses(path: Path) -> np.ndarray:
    """(T, 4, 4) OpenCV camera-to-world from a TartanAir pose file."""
    try:
        rows = np.loadtxt(path.open(), dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as err:
        raise SourceReadError(f"{path}: not a TartanAir pose file ({err})") from err
    if rows.shape[1] != 7:
        raise SourceReadError(f"{path}: {rows.shape[1]} columns, expected tx ty tz qx qy qz qw")
    return np.stack([rigid(quaternion_to_matrix(r[3:]) @ NED_FROM_OPENCV, r[:3]) for r in rows])


class TartanAirSource(DatasetSource):
    name = "tartanair"
    splits = ("all",)
    depth_source = "tartanair .npy float32 metres; sky >= max_depth invalid"
    pose_source_convention = "tartanair pose_left.txt: tx ty tz qx qy qz qw, camera-to-world, NED body axes"
    default_max_depth = 1000.0

    def sequences(self, split: str) -> list[SequenceRef]:
        out = []
        for images in sorted(self.root.rglob("image_left")):
            trajectory = images.parent
            frames = list_files(images, (".png",))
            refs = [(f, trajectory / "depth_left" / f"{f.stem}_depth.npy") for f in frames]
            name = "_".join(trajectory.relative_to(self.root).parts) or trajectory.name
            out.append(SequenceRef(name, refs, [f.stem for f in frames], fps=10.0,
                                   extra={"poses": trajectory / "pose_left.txt"}))
        if not out:
            raise FileNotFoundError(f"no image_left folders under {self.root}")
        return out

    def read_frame(self, sequence: SequenceRef, index: int) -> Frame:
        image_path, depth_path = sequence.frames[index]
        frame = read_image(image_path)
        try:
            depth = np.load(depth_path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as err:
            raise SourceReadError(f"{depth_path}: not a readable .npy ({err})") from err
        frame.depth, frame.valid = depth, np.isfinite(depth) & (depth > 0)
        frame.intrinsics = TARTANAIR_INTRINSICS
        poses = sequence.extra.get("_poses")
        if poses is None:
            read_bytes(sequence.extra["poses"])  # names a missing file the same way as any other
            poses = sequence.extra["_poses"] = read_poses(sequence.extra["poses"])
        if index >= len(poses):
            raise SourceReadError(f"{sequence.extra['poses']}: {len(poses)} poses, no pose for frame {index}")
        frame.cam_to_world = poses[index]
        return frame
