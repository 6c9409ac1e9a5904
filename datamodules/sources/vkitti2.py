"""Virtual KITTI 2: ``<root>/Scene<NN>/<variation>/frames/{rgb,depth}/Camera_<c>/{rgb_NNNNN.jpg, depth_NNNNN.png}``
with ``<root>/Scene<NN>/<variation>/{intrinsic.txt, extrinsic.txt}``.

Depth: uint16 PNG in centimetres; 65535 (655.35 m) is the sky and 0 never occurs in valid data,
so both are invalid. ``intrinsic.txt``: a header, then ``frame cameraID fx fy cx cy``.
``extrinsic.txt``: a header, then ``frame cameraID`` and a row-major 4x4 world-to-camera matrix.
Frames are JPEG and copied as they are.
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
    invert_rigid,
    list_files,
    read_bytes,
    read_image,
    read_png_uint16,
)


def read_camera_table(path: Path, camera: int, width: int) -> dict[int, np.ndarray]:
    """frame -> row of numbers after `frame cameraID`, for one camera."""
    table = {}
    for line in read_bytes(path).decode(errors="replace").splitlines()[1:]:
        values = line.split()
        if not values:
            continue
        try:
            row = np.array(values, dtype=np.float64)
        except ValueError as err:
            raise SourceReadError(f"{path}: malformed line {line!r} ({err})") from err
        if len(row) != 2 + width:
            raise SourceReadError(f"{path}: {len(row)} values in a line, expected {2 + width}")
        if int(row[1]) == camera:
            table[int(row[0])] = row[2:]
    return table


class VirtualKitti2Source(DatasetSource):
    name = "vkitti2"
    splits = ("all",)
    depth_source = "vkitti2 uint16 png centimetres; 65535 (sky) and 0 invalid"
    pose_source_convention = "vkitti2 extrinsic.txt: row-major 4x4 world-to-camera"

    def sequences(self, split: str) -> list[SequenceRef]:
        camera = int(self.options.get("camera") or 0)
        out = []
        for variation in sorted(p.parent.parent.parent for p in self.root.glob(f"*/*/frames/rgb/Camera_{camera}")):
            frames = list_files(variation / "frames" / "rgb" / f"Camera_{camera}", (".jpg",))
            refs = [(f, variation / "frames" / "depth" / f"Camera_{camera}" / f"depth_{f.stem.split('_')[-1]}.png",
                     int(f.stem.split("_")[-1])) for f in frames]
            name = f"{variation.parent.name}_{variation.name}_cam{camera}"
            out.append(SequenceRef(name, refs, [f.stem for f in frames], fps=10.0,
                                   extra={"dir": variation, "camera": camera}))
        if not out:
            raise FileNotFoundError(f"no Scene*/<variation>/frames/rgb/Camera_{camera} folders under {self.root}")
        return out

    def _tables(self, sequence: SequenceRef) -> tuple[dict, dict]:
        if "_tables" not in sequence.extra:
            directory, camera = sequence.extra["dir"], sequence.extra["camera"]
            sequence.extra["_tables"] = (read_camera_table(directory / "intrinsic.txt", camera, 4),
                                         read_camera_table(directory / "extrinsic.txt", camera, 16))
        return sequence.extra["_tables"]

    def read_frame(self, sequence: SequenceRef, index: int) -> Frame:
        image_path, depth_path, number = sequence.frames[index]
        frame = read_image(image_path)
        png = read_png_uint16(depth_path)
        frame.depth, frame.valid = png.astype(np.float32) / 100.0, (png > 0) & (png < 65535)
        intrinsic, extrinsic = self._tables(sequence)
        if number not in intrinsic or number not in extrinsic:
            raise SourceReadError(f"{sequence.extra['dir']}: no intrinsic/extrinsic row for frame {number}")
        frame.intrinsics = intrinsics_matrix(*intrinsic[number])
        frame.cam_to_world = invert_rigid(extrinsic[number].reshape(4, 4))
        return frame
