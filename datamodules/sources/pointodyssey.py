"""PointOdyssey: ``<root>/<split>/<seq>/{rgbs/rgb_NNNNN.jpg, depths/depth_NNNNN.png, anno.npz}``.

Depth: uint16 PNG, metres = png / 65535 * 1000 (1.53 cm steps); 65535 is saturated (sky, >= 1000 m)
and 0 is no surface: both invalid. ``anno.npz`` (released format): ``trajs_2d`` (S, N, 2) pixels,
``visibs`` / ``valids`` (S, N), ``intrinsics`` (S, 3, 3), ``extrinsics`` (S, 4, 4) world-to-camera.
Points are visible where visibs and valids and finite. The tracks and K are stored as the file
gives them (mutually consistent; whether its pixel centres sit at integers or half-integers is not
documented by the source). Frames are JPEG and copied as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datamodules.sources.base import (
    DatasetSource,
    Frame,
    SequenceRef,
    SourceReadError,
    invert_rigid,
    list_files,
    read_image,
    read_png_uint16,
)


class PointOdysseySource(DatasetSource):
    name = "pointodyssey"
    splits = ("train", "val", "test", "sample")
    depth_source = "pointodyssey uint16 png / 65535 * 1000; 0 and 65535 invalid"
    pose_source_convention = "pointodyssey anno.npz extrinsics: world-to-camera (cams_T_world)"

    def __init__(self, root: Path, **options: Any) -> None:
        super().__init__(root, **options)
        self._anno: tuple[Path, dict[str, np.ndarray]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_anno": None}

    def sequences(self, split: str) -> list[SequenceRef]:
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"no PointOdyssey split folder {split_dir}")
        out = []
        for seq in sorted(p for p in split_dir.iterdir() if (p / "rgbs").is_dir()):
            frames = list_files(seq / "rgbs", (".jpg",))
            refs = [(f, seq / "depths" / f"depth_{f.stem.split('_')[-1]}.png") for f in frames]
            out.append(SequenceRef(seq.name, refs, [f.stem for f in frames], fps=30.0, extra={"anno": seq / "anno.npz"}))
        return out

    def _annotation(self, sequence: SequenceRef) -> dict[str, np.ndarray]:
        path = sequence.extra["anno"]
        if self._anno is None or self._anno[0] != path:
            try:
                with np.load(path, allow_pickle=False) as npz:
                    anno = {k: npz[k] for k in ("trajs_2d", "visibs", "valids", "intrinsics", "extrinsics")}
            except (OSError, ValueError, KeyError) as err:
                raise SourceReadError(f"{path}: not a readable PointOdyssey anno.npz ({err})") from err
            self._anno = (path, anno)
        return self._anno[1]

    def read_frame(self, sequence: SequenceRef, index: int) -> Frame:
        image_path, depth_path = sequence.frames[index]
        frame = read_image(image_path)
        png = read_png_uint16(depth_path)
        frame.depth = png.astype(np.float32) / 65535.0 * 1000.0
        frame.valid = (png > 0) & (png < 65535)
        anno = self._annotation(sequence)
        if index >= len(anno["intrinsics"]):
            raise SourceReadError(f"{sequence.extra['anno']}: {len(anno['intrinsics'])} frames, none for {index}")
        frame.intrinsics = anno["intrinsics"][index].astype(np.float64)
        frame.cam_to_world = invert_rigid(anno["extrinsics"][index].astype(np.float64))
        return frame

    def read_tracks(self, sequence: SequenceRef, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        anno = self._annotation(sequence)
        tracks = anno["trajs_2d"][indices].astype(np.float32)
        visible = anno["visibs"][indices].astype(bool) & anno["valids"][indices].astype(bool)
        return tracks, visible
