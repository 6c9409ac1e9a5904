"""Dynamic Replica: ``<root>/<split>/frame_annotations_<split>.jgz`` (gzip JSON list of frames).

Each frame entry gives ``sequence_name``, ``frame_number``, ``camera_name`` (left / right) and paths
relative to ``<root>/<split>``: ``image.path`` (PNG), ``depth.path`` (a uint16 PNG whose bits are
float16 depth; metres = value * ``depth.scale_adjustment``; < 1e-5 invalid), ``trajectories.path``
(a torch file: ``traj_2d`` (N, 3) pixels, x and y first, ``verts_inds_vis`` (N,) bool), and
``viewpoint`` in PyTorch3D's convention: X_cam = X_world R + T (row vectors), camera axes x left,
y up, z forward, focal length and principal point in NDC (``intrinsics_format`` ndc_isotropic:
scaled by min(H, W) / 2; ndc_norm_image_bounds: by (W / 2, H / 2)), +/-1 at the image edges.

Conversion to our convention: w2c_cv = [F R^T | F T] with F = diag(-1, -1, 1); K in pixels with
c = (W/2, H/2) - p * s - 0.5 (PyTorch3D's pixel (0, 0) centre is at 0.5 from the edge, ours at 0).
Trajectory files are read with ``torch.load(weights_only=True)`` (tensors only); tracks keep the
file's pixel coordinates (CoTracker's reader treats them as centres at integers).
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from datamodules.sources.base import (
    FLIP_XY,
    DatasetSource,
    Frame,
    SequenceRef,
    SourceReadError,
    intrinsics_matrix,
    invert_rigid,
    read_bytes,
    read_image,
    rigid,
)


def read_float16_png(path: Path) -> np.ndarray:
    """A uint16 PNG whose bits are float16 values, as float32."""
    import io

    try:
        with Image.open(io.BytesIO(read_bytes(path))) as img:
            bits = np.asarray(img, dtype=np.uint16)
    except (OSError, ValueError, SyntaxError) as err:
        raise SourceReadError(f"{path}: not a readable PNG ({err})") from err
    return np.ascontiguousarray(bits).view(np.float16).astype(np.float32)


def opencv_camera(viewpoint: dict[str, Any], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(K (3, 3) pixels, centres at integers; cam_to_world (4, 4) OpenCV axes) of a PyTorch3D viewpoint."""
    R = np.asarray(viewpoint["R"], dtype=np.float64)
    T = np.asarray(viewpoint["T"], dtype=np.float64)
    world_to_camera = rigid(FLIP_XY @ R.T, FLIP_XY @ T)
    fmt = viewpoint.get("intrinsics_format", "ndc_norm_image_bounds").lower()
    half = np.array([width / 2.0, height / 2.0])
    if fmt == "ndc_isotropic":
        scale = np.array([min(half), min(half)])
    elif fmt == "ndc_norm_image_bounds":
        scale = half
    else:
        raise ValueError(f"unknown intrinsics_format {fmt!r}")
    focal = np.asarray(viewpoint["focal_length"], dtype=np.float64) * scale
    centre = half - np.asarray(viewpoint["principal_point"], dtype=np.float64) * scale - 0.5
    return intrinsics_matrix(focal[0], focal[1], centre[0], centre[1]), invert_rigid(world_to_camera)


def load_trajectories(path: Path) -> dict[str, np.ndarray]:
    import pickle

    import torch

    read_bytes(path)  # a missing file is named like any other
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as err:
        raise SourceReadError(f"{path}: not a tensor-only torch file ({str(err).splitlines()[0]})") from err
    try:
        return {"traj_2d": np.asarray(data["traj_2d"])[:, :2].astype(np.float32),
                "visible": np.asarray(data["verts_inds_vis"]).astype(bool)}
    except (KeyError, TypeError, IndexError) as err:
        raise SourceReadError(f"{path}: no traj_2d / verts_inds_vis ({err})") from err


class DynamicReplicaSource(DatasetSource):
    name = "dynamic_replica"
    splits = ("train", "valid", "test")
    depth_source = "dynamic_replica uint16 png of float16 bits * scale_adjustment; < 1e-5 invalid"
    pose_source_convention = "pytorch3d viewpoint R, T (X_cam = X_world R + T; x left, y up), NDC intrinsics"

    def sequences(self, split: str) -> list[SequenceRef]:
        camera = self.options.get("camera") or "left"
        base = self.root / split
        annotations = base / f"frame_annotations_{split}.jgz"
        if not annotations.is_file():
            raise FileNotFoundError(f"no {annotations.name} in {base}")
        try:
            with gzip.open(annotations, "rt", encoding="utf8") as stream:
                entries = json.load(stream)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(f"{annotations}: not a gzip JSON annotation file ({err})") from err
        by_sequence: dict[str, list[dict]] = defaultdict(list)
        for entry in entries:
            if entry.get("camera_name", "left") == camera:
                by_sequence[entry["sequence_name"]].append(entry)
        out = []
        for name in sorted(by_sequence):
            frames = sorted(by_sequence[name], key=lambda e: e["frame_number"])
            out.append(SequenceRef(f"{name}_{camera}", frames, [str(e["frame_number"]) for e in frames], fps=30.0,
                                   extra={"base": base}))
        return out

    def read_frame(self, sequence: SequenceRef, index: int) -> Frame:
        entry, base = sequence.frames[index], sequence.extra["base"]
        frame = read_image(base / entry["image"]["path"])
        depth = read_float16_png(base / entry["depth"]["path"]) * float(entry["depth"].get("scale_adjustment") or 1.0)
        frame.depth, frame.valid = depth, np.isfinite(depth) & (depth >= 1e-5)
        height, width = frame.depth.shape
        try:
            frame.intrinsics, frame.cam_to_world = opencv_camera(entry["viewpoint"], height, width)
        except (KeyError, TypeError, ValueError) as err:
            raise SourceReadError(f"{base}: frame {entry.get('frame_number')} of {sequence.name} has no usable "
                                  f"viewpoint ({err})") from err
        return frame

    def read_tracks(self, sequence: SequenceRef, indices: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
        entries = [sequence.frames[i] for i in indices]
        if not all((e.get("trajectories") or {}).get("path") for e in entries):
            return None
        loaded = [load_trajectories(sequence.extra["base"] / e["trajectories"]["path"]) for e in entries]
        counts = {len(t["traj_2d"]) for t in loaded}
        if len(counts) != 1:
            raise SourceReadError(f"{sequence.name}: trajectory files disagree on the number of points {sorted(counts)}")
        return np.stack([t["traj_2d"] for t in loaded]), np.stack([t["visible"] for t in loaded])
