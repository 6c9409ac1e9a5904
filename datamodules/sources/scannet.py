"""ScanNet v2 frames as exported by the SensReader: ``<root>/<scene>/{color,depth,pose,intrinsic}/``.

``color/<i>.jpg`` (1296x968), ``depth/<i>.png`` (uint16 / 1000 metres, 0 = invalid, 640x480),
``pose/<i>.txt`` (4x4 camera-to-world, OpenCV axes; some are -inf: those frames get
``pose_valid`` False), ``intrinsic/intrinsic_depth.txt`` (4x4; K of the depth map). Frame names are
not zero-padded and sort numerically. Colour frames are resized to the depth map's size (the stored
resolution, stored as PNG: the resize is the only change to the source's JPEG pixels; the
intrinsics are the depth camera's, which the resized colour camera matches to within its calibration).
"""

from __future__ import annotations

import numpy as np

from datamodules.sources.base import (
    DatasetSource,
    Frame,
    SequenceRef,
    list_files,
    read_image,
    read_png_uint16,
    read_text_matrix,
)


class ScanNetSource(DatasetSource):
    name = "scannet"
    splits = ("all",)
    lossless_frames = True  # the resized colour is stored as PNG: no second lossy step on evaluation frames
    depth_source = "scannet uint16 png / 1000, 0 = invalid"
    pose_source_convention = "scannet pose/<i>.txt: 4x4 camera-to-world, OpenCV axes"
    default_clip_len = None

    def sequences(self, split: str) -> list[SequenceRef]:
        out = []
        for scene in sorted(p for p in self.root.iterdir() if p.is_dir() and (p / "color").is_dir()):
            colour = list_files(scene / "color", (".jpg",))
            refs = [(c, scene / "depth" / f"{c.stem}.png", scene / "pose" / f"{c.stem}.txt") for c in colour]
            out.append(SequenceRef(scene.name, refs, [c.stem for c in colour], fps=30.0,
                                   extra={"intrinsics": scene / "intrinsic" / "intrinsic_depth.txt"}))
        if not out:
            raise FileNotFoundError(f"no <scene>/color folders under {self.root}")
        return out

    def read_frame(self, sequence: SequenceRef, index: int) -> Frame:
        image_path, depth_path, pose_path = sequence.frames[index]
        frame = read_image(image_path)
        png = read_png_uint16(depth_path)
        frame.depth, frame.valid = png.astype(np.float32) / 1000.0, png > 0
        frame.intrinsics = read_text_matrix(sequence.extra["intrinsics"], (4, 4))[:3, :3]
        pose = read_text_matrix(pose_path, (4, 4))
        frame.cam_to_world = pose if np.isfinite(pose).all() else np.full((4, 4), np.nan)
        return frame

    def meta(self, sequence: SequenceRef) -> dict:
        return {"intrinsics_source": "intrinsic_depth.txt"}
