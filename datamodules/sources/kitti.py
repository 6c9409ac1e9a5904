"""KITTI depth (annotated): raw rectified left colour frames + projected LiDAR ground truth.

Layout: ``<depth_root>/<split>/<drive>_sync/proj_depth/groundtruth/image_02/<10 digits>.png``
(data_depth_annotated; ``depth_root`` defaults to ``<root>/data_depth_annotated``) and
``<raw_root>/<date>/<drive>_sync/image_02/data/<same name>.png`` with ``<raw_root>/<date>/calib_cam_to_cam.txt``
(``raw_root`` defaults to ``<root>/raw_data``). A drive's frames are those with ground truth (the
first and last few raw frames have none). Depth: uint16 PNG / 256 metres, 0 = invalid.
Intrinsics: K = P_rect_02[:, :3] (the images are rectified). Raw KITTI has no camera poses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.sources.base import (
    DatasetSource,
    Frame,
    SequenceRef,
    SourceReadError,
    list_files,
    read_bytes,
    read_image,
    read_png_uint16,
)


def read_p_rect_02(path: Path) -> np.ndarray:
    for line in read_bytes(path).decode(errors="replace").splitlines():
        key, _, values = line.partition(":")
        if key.strip() == "P_rect_02":
            try:
                return np.array(values.split(), dtype=np.float64).reshape(3, 4)[:, :3].copy()
            except ValueError as err:
                raise SourceReadError(f"{path}: malformed P_rect_02 ({err})") from err
    raise SourceReadError(f"{path}: no P_rect_02 line")


class KittiSource(DatasetSource):
    name = "kitti"
    splits = ("val", "train")
    lossless_frames = True
    depth_source = "kitti uint16 png / 256, 0 = invalid"
    default_clip_len = None

    def __init__(self, root: Path, **options) -> None:
        super().__init__(root, **options)
        self.depth_root = Path(options.get("depth_root") or self.root / "data_depth_annotated")
        self.raw_root = Path(options.get("raw_root") or self.root / "raw_data")
        self._calib: dict[str, np.ndarray] = {}

    def sequences(self, split: str) -> list[SequenceRef]:
        drives_dir = self.depth_root / split
        if not drives_dir.is_dir():
            raise FileNotFoundError(f"no KITTI annotated depth split at {drives_dir}")
        out = []
        for drive in sorted(p for p in drives_dir.iterdir() if p.is_dir()):
            gt = list_files(drive / "proj_depth" / "groundtruth" / "image_02", (".png",))
            date = drive.name[:10]
            refs = [(self.raw_root / date / drive.name / "image_02" / "data" / g.name, g) for g in gt]
            out.append(SequenceRef(drive.name, refs, [g.stem for g in gt], fps=10.0,
                                   extra={"calib": self.raw_root / date / "calib_cam_to_cam.txt"}))
        return out

    def read_frame(self, sequence: SequenceRef, index: int) -> Frame:
        image_path, depth_path = sequence.frames[index]
        frame = read_image(image_path)
        png = read_png_uint16(depth_path)
        frame.depth, frame.valid = png.astype(np.float32) / 256.0, png > 0
        calib = str(sequence.extra["calib"])
        if calib not in self._calib:
            self._calib[calib] = read_p_rect_02(Path(calib))
        frame.intrinsics = self._calib[calib]
        return frame
