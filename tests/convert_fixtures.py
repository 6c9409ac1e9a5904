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


def make_kitti(root: Path, drive: str, num_frames: int, gt_frames: range, hw: tuple[int, int] = (H, W),
               P: np.ndarray | None = None) -> dict:
    """raw_data/<date>/<drive>/image_02/data/*.png and calib_cam_to_cam.txt (P_rect_02), ground truth
    data_depth_annotated/val/<drive>/proj_depth/groundtruth/image_02/*.png (uint16 / 256, 0 invalid)
    for `gt_frames` only. Returns {"P": P, "pngs": {stem: uint16 array}}."""
    date = drive[:10]
    raw = root / "raw_data" / date
    gt_dir = root / "data_depth_annotated" / "val" / drive / "proj_depth" / "groundtruth" / "image_02"
    P = np.arange(12, dtype=float).reshape(3, 4) + 1 if P is None else P
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "calib_cam_to_cam.txt").write_text("calib_time: x\nP_rect_00: " + " 0" * 12 + "\nP_rect_02: "
                                              + " ".join(map(str, P.ravel())) + "\n")
    pngs = {}
    for i in range(num_frames):
        name = f"{i:010d}.png"
        save_rgb(raw / drive / "image_02" / "data" / name, rgb(i, *hw))
        if i in gt_frames:
            png = np.random.default_rng(i).integers(0, 20000, hw).astype(np.uint16)
            png[0, :3] = 0
            save_png16(gt_dir / name, png)
            pngs[name[:-4]] = png
    return {"P": P, "pngs": pngs}


def make_bonn(root: Path, sequence: str, stamps: list[str], hw: tuple[int, int] = (H, W)) -> dict:
    """rgbd_bonn_<name>/{rgb,depth}/<timestamp>.png (depth uint16 / 5000, 0 invalid; its stamps 0.01 s
    later than the colour's). Returns {stamp: uint16 depth}."""
    seq = root / sequence
    pngs = {}
    for i, s in enumerate(stamps):
        save_rgb(seq / "rgb" / f"{s}.png", rgb(i, *hw))
        pngs[s] = np.random.default_rng(i).integers(0, 40000, hw).astype(np.uint16)
        save_png16(seq / "depth" / f"{float(s) + 0.01:.2f}.png", pngs[s])
    return pngs


def make_scannet(root: Path, scene: str, numbers: list[int], colour_hw: tuple[int, int] = (2 * H, 2 * W),
                 depth_hw: tuple[int, int] = (H, W)) -> dict:
    """A SensReader export <scene>/{color/<n>.jpg, depth/<n>.png (uint16 / 1000, 0 invalid), pose/<n>.txt
    (camera-to-world; frame 2's pose lost: -inf), intrinsic/intrinsic_depth.txt}."""
    K = np.array([[7.0, 0, 5.0, 0], [0, 7.5, 3.0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    (root / scene / "intrinsic").mkdir(parents=True, exist_ok=True)
    np.savetxt(root / scene / "intrinsic" / "intrinsic_depth.txt", K)
    truth = {}
    for n in numbers:
        save_rgb(root / scene / "color" / f"{n}.jpg", rgb(n, *colour_hw), quality=95)
        png = np.random.default_rng(n).integers(0, 9000, depth_hw).astype(np.uint16)
        png[1, 1] = 0
        save_png16(root / scene / "depth" / f"{n}.png", png)
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = rotation(n), [n, 2.0, 3.0]
        if n == 2:
            pose[0, 0] = -np.inf  # ScanNet's marker of a lost pose
        (root / scene / "pose").mkdir(exist_ok=True)
        np.savetxt(root / scene / "pose" / f"{n}.txt", pose)
        truth[str(n)] = {"png": png, "pose": pose}
    return {"K": K, "frames": truth}
