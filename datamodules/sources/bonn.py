"""Bonn RGB-D Dynamic: ``<root>/rgbd_bonn_<name>/{rgb,depth}/<timestamp>.png``.

Colour and depth are paired by rank (the i-th colour frame with the i-th depth map, both sorted by
timestamp), as DepthCrafter and VDA do. Depth: uint16 PNG / 5000 metres, 0 = invalid. The
intrinsics are the constant ones published for the dataset (fx 542.822841, fy 542.576870,
cx 315.593520, cy 237.756098 at 640x480; read from third-party code, not the official page).
The ``groundtruth.txt`` poses are not stored: whether they are camera or marker poses is unverified.
"""

from __future__ import annotations

import logging

import numpy as np

from datamodules.sources.base import (
    DatasetSource,
    Frame,
    SequenceRef,
    intrinsics_matrix,
    list_files,
    read_image,
    read_png_uint16,
)

log = logging.getLogger(__name__)

BONN_INTRINSICS = intrinsics_matrix(542.822841, 542.576870, 315.593520, 237.756098)


def _timestamp(stem: str) -> float:
    try:
        return float(stem)
    except ValueError:
        return float("inf")  # non-timestamp names sort last, in natural order among themselves


class BonnSource(DatasetSource):
    name = "bonn"
    splits = ("all",)
    lossless_frames = True
    depth_source = "bonn uint16 png / 5000, 0 = invalid"
    default_clip_len = None

    def sequences(self, split: str) -> list[SequenceRef]:
        out = []
        for seq in sorted(p for p in self.root.iterdir() if p.is_dir() and (p / "rgb").is_dir()):
            rgb = sorted(list_files(seq / "rgb", (".png",)), key=lambda p: _timestamp(p.stem))
            depth = sorted(list_files(seq / "depth", (".png",)), key=lambda p: _timestamp(p.stem))
            if len(rgb) != len(depth):
                log.warning("%s: %d colour frames, %d depth maps; pairing the first %d by rank",
                            seq, len(rgb), len(depth), min(len(rgb), len(depth)))
            refs = list(zip(rgb, depth))
            out.append(SequenceRef(seq.name, refs, [r.stem for r, _ in refs], fps=30.0))
        if not out:
            raise FileNotFoundError(f"no <sequence>/rgb folders under {self.root}")
        return out

    def read_frame(self, sequence: SequenceRef, index: int) -> Frame:
        image_path, depth_path = sequence.frames[index]
        frame = read_image(image_path)
        png = read_png_uint16(depth_path)
        frame.depth, frame.valid = png.astype(np.float32) / 5000.0, png > 0
        frame.intrinsics = BONN_INTRINSICS
        return frame

    def meta(self, sequence: SequenceRef) -> dict:
        return {"intrinsics_source": "published constants (third-party code), unverified"}
