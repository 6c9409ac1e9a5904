"""Tiny datasets in their ORIGINAL on-disk formats, written from the format facts (not by our readers)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 8, 12  # depth-map size of every tiny dataset


def rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save_png16(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint16)).save(path)


def save_rgb(path: Path, image: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **kwargs)


def write_dpt(path: Path, depth: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = depth.shape
    path.write_bytes(np.float32(202021.25).tobytes() + np.int32(w).tobytes() + np.int32(h).tobytes()
                     + depth.astype(np.float32).tobytes())


def write_cam(path: Path, intrinsics: np.ndarray, world_to_camera_3x4: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.float32(202021.25).tobytes() + intrinsics.astype(np.float64).tobytes()
                     + world_to_camera_3x4.astype(np.float64).tobytes())


def rotation(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def make_sintel(root: Path, scenes: dict[str, int]) -> dict:
    truth = {}
    K = np.array([[10.0, 0, 5.5], [0, 10.0, 3.5], [0, 0, 1]])
    for s, (scene, count) in enumerate(scenes.items()):
        for i in range(1, count + 1):
            stem = f"frame_{i:04d}"
            image, depth = rgb(100 * s + i), np.random.default_rng(i).uniform(0.2, 80, (H, W)).astype(np.float32)
            N = np.concatenate([rotation(i), [[0.1 * i], [0.2], [-0.3]]], axis=1)
            save_rgb(root / "training" / "clean" / scene / f"{stem}.png", image)
            write_dpt(root / "training" / "depth" / scene / f"{stem}.dpt", depth)
            write_cam(root / "training" / "camdata_left" / scene / f"{stem}.cam", K, N)
            truth[(scene, stem)] = {"image": image, "depth": depth, "K": K, "N": N}
    return truth


def write_jgz(path: Path, entries: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf8") as stream:
        json.dump(entries, stream)


def read_clips(directory: Path) -> dict:
    """key -> Clip of every shard under `directory`, through the shard reader."""
    from datamodules.shard_reader import SkipCounter, iter_shard
    from datamodules.shards import decode_clip

    clips = {}
    for shard in sorted(Path(directory).glob("*.tar")):
        for raw in iter_shard(str(shard), SkipCounter()):
            clip = decode_clip(raw)
            clips[clip.key] = clip
    return clips


def project(K: np.ndarray, world_to_camera: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Pixel (u, v) of a world point: x = K [R | t] X."""
    cam = world_to_camera[:3, :3] @ point + world_to_camera[:3, 3]
    uvw = K @ cam
    return uvw[:2] / uvw[2]
