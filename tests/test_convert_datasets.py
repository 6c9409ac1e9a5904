"""Round trips: tiny datasets written in each ORIGINAL format -> tools/convert.py -> the shard reader.

Depth must come back exact up to the format's own quantisation, validity as each format marks it,
intrinsics in stored pixels, poses in our OpenCV camera-to-world convention (checked by projecting
a known point with the source's convention and with ours), frames lossless where promised and in
numeric order.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.convert_fixtures import (
    H,
    W,
    make_bonn,
    make_kitti,
    make_scannet,
    make_sintel,
    project,
    read_clips,
    rgb,
    rotation,
    save_png16,
    save_rgb,
    write_jgz,
)
from tools.convert import run


def convert(*args: str) -> None:
    assert run([*map(str, args), "--workers", "1", "--no-progress"]) == 0


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_sintel_depth_cameras_and_lossless_frames(tmp_path: Path) -> None:
    truth = make_sintel(tmp_path / "src", {"alley_1": 3, "cave_2": 2})
    convert("sintel", tmp_path / "src", tmp_path / "out")
    clips = read_clips(tmp_path / "out" / "training")
    assert sorted(clips) == ["sintel_alley_1_000000", "sintel_cave_2_000000"]
    clip = clips["sintel_alley_1_000000"]
    assert clip.meta["source_frames"] == ["frame_0001", "frame_0002", "frame_0003"]
    assert clip.meta["frames_lossless"] and clip.meta["frame_format"] == "png" and clip.meta["depth_units"] == "m"
    point = np.array([0.3, -0.2, 4.0])
    for t, stem in enumerate(clip.meta["source_frames"]):
        src = truth[("alley_1", stem)]
        assert np.array_equal(decode(clip.jpeg_frames[t]), src["image"])  # lossless
        assert np.array_equal(clip.depth[t], src["depth"]) and clip.depth_valid[t].all()  # float .dpt: exact
        assert np.allclose(clip.intrinsics[t], src["K"])
        world_to_camera = np.vstack([src["N"], [0, 0, 0, 1]])
        ours = project(clip.intrinsics[t], np.linalg.inv(clip.cam_to_world[t]), point)
        assert np.allclose(ours, project(src["K"], world_to_camera, point), atol=1e-9)
    assert clip.pose_valid.all()


def test_kitti_uint16_over_256_zero_invalid_and_p_rect_02(tmp_path: Path) -> None:
    truth = make_kitti(tmp_path / "src", "2011_09_26_drive_0002_sync", 8, range(2, 6))  # ground truth for 2..5 only
    P, pngs = truth["P"], truth["pngs"]
    convert("kitti", tmp_path / "src", tmp_path / "out", "--split", "bench")
    (clip,) = read_clips(tmp_path / "out" / "depthcrafter").values()
    assert clip.meta["source_frames"] == [f"{i:010d}" for i in range(2, 6)]  # GT frames, in order
    assert clip.meta["benchmark"]["name"] == "depthcrafter" and clip.meta["benchmark"]["max_depth"] == 80.0
    for t, stem in enumerate(clip.meta["source_frames"]):
        png = pngs[stem]
        assert np.array_equal(clip.depth_valid[t], png > 0)
        assert np.array_equal(clip.depth[t][png > 0], (png[png > 0] / 256.0).astype(np.float32))
        assert np.array_equal(decode(clip.jpeg_frames[t]), rgb(int(stem)))
    assert np.allclose(clip.intrinsics[0], P[:, :3]) and clip.cam_to_world is None


def test_scannet_numeric_order_resize_to_depth_and_invalid_pose(tmp_path: Path) -> None:
    truth = make_scannet(tmp_path / "src", "scene0000_00", [0, 1, 2, 10, 11])
    convert("scannet", tmp_path / "src", tmp_path / "out")
    (clip,) = read_clips(tmp_path / "out" / "all").values()
    assert clip.meta["source_frames"] == ["0", "1", "2", "10", "11"]  # numeric, not lexical (0, 1, 10, 11, 2)
    assert (clip.meta["height"], clip.meta["width"]) == (H, W) and clip.meta["frames_resized_from"] == [2 * H, 2 * W]
    assert clip.decode_frames().shape == (5, H, W, 3)
    assert clip.meta["frame_format"] == "png" and not clip.meta["frames_lossless"]  # resized, then stored losslessly
    jpg = Image.open(tmp_path / "src" / "scene0000_00" / "color" / "10.jpg").convert("RGB")
    assert np.array_equal(decode(clip.jpeg_frames[3]), np.asarray(jpg.resize((W, H), Image.Resampling.BICUBIC)))
    for t, name in enumerate(clip.meta["source_frames"]):
        png = truth["frames"][name]["png"]
        assert np.array_equal(clip.depth_valid[t], png > 0)
        assert np.allclose(clip.depth[t], np.where(png > 0, png / 1000.0, 0), rtol=1e-6, atol=0)  # float32 rounding, << 1 mm steps
        if name == "2":
            assert not clip.pose_valid[t] and np.isnan(clip.cam_to_world[t]).all()
        else:
            assert clip.pose_valid[t] and np.allclose(clip.cam_to_world[t], truth["frames"][name]["pose"])
    assert np.allclose(clip.intrinsics, truth["K"][:3, :3])


def test_bonn_pairs_by_timestamp_order_and_decodes_over_5000(tmp_path: Path) -> None:
    stamps = ["1548266469.11", "1548266469.9", "1548266470.05"]  # lexical order differs from numeric
    pngs = make_bonn(tmp_path / "src", "rgbd_bonn_balloon2", stamps)
    convert("bonn", tmp_path / "src", tmp_path / "out")
    (clip,) = read_clips(tmp_path / "out" / "all").values()
    order = sorted(stamps, key=float)
    assert clip.meta["source_frames"] == order
    for t, s in enumerate(order):
        assert np.allclose(clip.depth[t], np.where(pngs[s] > 0, pngs[s] / 5000.0, 0), rtol=1e-6, atol=0)
        assert np.array_equal(clip.depth_valid[t], pngs[s] > 0)
        assert np.array_equal(decode(clip.jpeg_frames[t]), rgb(stamps.index(s)))


def test_nyuv2_mat_single_frame_test_clips_with_the_crop(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (1449, 3, W, H), dtype=np.uint8)  # MATLAB order as h5py sees it
    depths = rng.uniform(0.5, 9.0, (1449, W, H)).astype(np.float32)
    with h5py.File(tmp_path / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"], f["depths"], f["rawDepths"] = images, depths, depths * (rng.random(depths.shape) > 0.3)
    convert("nyuv2", tmp_path / "nyu_depth_v2_labeled.mat", tmp_path / "out", "--split", "bench",
            "--clips-per-shard", "1000")
    clips = read_clips(tmp_path / "out" / "depthcrafter")
    assert len(clips) == 654 and all(c.num_frames == 1 for c in clips.values())
    first = min(clips.values(), key=lambda c: int(c.meta["source_frames"][0]))
    assert first.meta["source_frames"] == ["1"] and first.meta["benchmark"]["crop"] == [45, 471, 41, 601]
    assert np.array_equal(decode(first.jpeg_frames[0]), images[0].T)
    assert np.array_equal(first.depth[0], depths[0].T) and first.depth_valid.all()


def test_tartanair_ned_pose_becomes_opencv(tmp_path: Path) -> None:
    traj = tmp_path / "src" / "abandonedfactory" / "Easy" / "P000"
    # Camera at (1, 2, 3) (NED world), body axes = world axes: it looks along world +x (north).
    (traj).mkdir(parents=True)
    (traj / "pose_left.txt").write_text("1 2 3 0 0 0 1\n1 2 3 0 0 0 1\n")
    for i in range(2):
        save_rgb(traj / "image_left" / f"{i:06d}_left.png", rgb(i))
        depth = np.full((H, W), 5.0, np.float32)
        depth[0, 0] = 1e6  # sky
        (traj / "depth_left").mkdir(exist_ok=True)
        np.save(traj / "depth_left" / f"{i:06d}_left_depth.npy", depth)
    convert("tartanair", tmp_path / "src", tmp_path / "out", "--clip-len", "2")
    (clip,) = read_clips(tmp_path / "out" / "all").values()
    assert not clip.depth_valid[0, 0, 0] and clip.depth_valid[0].sum() == H * W - 1
    world_to_camera = np.linalg.inv(clip.cam_to_world[0])
    ahead = world_to_camera @ np.array([11.0, 2.0, 3.0, 1.0])  # 10 m north of the camera
    assert np.allclose(ahead[:3], [0, 0, 10])  # straight ahead: OpenCV +z
    right_down = world_to_camera @ np.array([11.0, 3.0, 4.0, 1.0])  # +east (right), +down
    assert np.allclose(right_down[:3], [1, 1, 10])
    assert np.allclose(clip.intrinsics[0], [[320, 0, 320], [0, 320, 240], [0, 0, 1]])


def test_vkitti2_centimetres_sky_invalid_extrinsic_and_jpeg_copied(tmp_path: Path) -> None:
    var = tmp_path / "src" / "Scene01" / "clone"
    w2c = {}
    lines_i, lines_e = ["frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]"], ["frame cameraID r1,1 ... 0 0 0 1"]
    for i in range(2):
        save_rgb(var / "frames" / "rgb" / "Camera_0" / f"rgb_{i:05d}.jpg", rgb(i), quality=90)
        png = np.random.default_rng(i).integers(1, 30000, (H, W)).astype(np.uint16)
        png[2, 2] = 65535
        save_png16(var / "frames" / "depth" / "Camera_0" / f"depth_{i:05d}.png", png)
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = rotation(i), [i, 1, 2]
        w2c[i] = m
        for cam in (0, 1):
            lines_i.append(f"{i} {cam} 725.0 725.5 6.5 4.0")
            lines_e.append(f"{i} {cam} " + " ".join(map(str, m.ravel())))
    (var / "intrinsic.txt").write_text("\n".join(lines_i) + "\n")
    (var / "extrinsic.txt").write_text("\n".join(lines_e) + "\n")
    convert("vkitti2", tmp_path / "src", tmp_path / "out", "--clip-len", "2")
    (clip,) = read_clips(tmp_path / "out" / "all").values()
    for i in range(2):
        assert clip.jpeg_frames[i] == (var / "frames" / "rgb" / "Camera_0" / f"rgb_{i:05d}.jpg").read_bytes()
        png = np.asarray(Image.open(var / "frames" / "depth" / "Camera_0" / f"depth_{i:05d}.png")).astype(np.uint16)
        assert np.array_equal(clip.depth_valid[i], png < 65535)
        assert np.allclose(clip.depth[i][png < 65535], png[png < 65535] / 100.0, rtol=1e-6, atol=0)
        assert np.allclose(np.linalg.inv(clip.cam_to_world[i]), w2c[i])
    assert clip.meta["frames_lossless"] and clip.meta["frame_format"] == "jpeg"


def test_pointodyssey_tracks_rescaled_depth_quantisation_and_world_to_camera(tmp_path: Path) -> None:
    seq = tmp_path / "src" / "train" / "ani"
    S, N = 4, 5
    rng = np.random.default_rng(0)
    trajs = rng.uniform(0, [W - 1, H - 1], (S, N, 2)).astype(np.float32)
    trajs[1, 0] = np.nan
    visibs, valids = np.ones((S, N), bool), np.ones((S, N), bool)
    visibs[2, 1] = False
    K = np.tile(np.array([[9.0, 0, 5.5], [0, 9.0, 3.5], [0, 0, 1]]), (S, 1, 1))
    ext = np.stack([np.eye(4)] * S)
    ext[:, :3, 3] = [[0, 0, t] for t in range(S)]
    seq.mkdir(parents=True)
    np.savez(seq / "anno.npz", trajs_2d=trajs, trajs_3d=np.zeros((S, N, 3)), visibs=visibs, valids=valids,
             intrinsics=K, extrinsics=ext)
    depths = {}
    for i in range(S):
        save_rgb(seq / "rgbs" / f"rgb_{i:05d}.jpg", rgb(i), quality=90)
        png = rng.integers(0, 65536, (H, W)).astype(np.uint16)
        png[0, 0], png[0, 1] = 0, 65535
        save_png16(seq / "depths" / f"depth_{i:05d}.png", png)
        depths[i] = png
    convert("pointodyssey", tmp_path / "src", tmp_path / "out", "--clip-len", "4", "--size", str(2 * H), str(2 * W))
    (clip,) = read_clips(tmp_path / "out" / "train").values()
    assert clip.depth.shape == (S, 2 * H, 2 * W)
    for i in range(S):
        up = depths[i].repeat(2, 0).repeat(2, 1)  # nearest neighbour at exactly 2x
        ok = (up > 0) & (up < 65535)
        assert np.array_equal(clip.depth_valid[i], ok)
        assert np.allclose(clip.depth[i][ok], up[ok] / 65535.0 * 1000.0, rtol=1e-6)
    expected = (trajs + 0.5) * 2 - 0.5  # pixel centres at integers, 2x
    assert clip.tracks.shape == (S, N, 2)
    finite = np.isfinite(trajs).all(-1)
    assert np.allclose(clip.tracks[finite], expected[finite], atol=1e-5)
    assert not clip.visible[1, 0] and not clip.visible[2, 1] and clip.visible[0].all()
    assert np.allclose(clip.intrinsics[0], [[18, 0, 11.5], [0, 18, 7.5], [0, 0, 1]])
    assert np.allclose(np.linalg.inv(clip.cam_to_world[3]), ext[3])


def test_dynamic_replica_float16_depth_pytorch3d_camera_and_trajectories(tmp_path: Path) -> None:
    base = tmp_path / "src" / "valid"
    rng = np.random.default_rng(0)
    R, T = rotation(3), np.array([0.2, -0.1, 3.0])
    f_ndc, p_ndc = np.array([1.8, 1.8]), np.array([0.1, -0.05])
    entries, N = [], 6
    for i in range(3):
        stem = f"seq_a-left-{i:04d}"
        save_rgb(base / "seq_a" / "images" / f"{stem}.png", rgb(i))
        depth = rng.uniform(0.5, 20, (H, W)).astype(np.float16)
        depth[3, 3] = 0
        (base / "seq_a" / "depths").mkdir(parents=True, exist_ok=True)
        Image.fromarray(depth.view(np.uint16)).save(base / "seq_a" / "depths" / f"{stem}.png")
        traj = {"traj_2d": torch.from_numpy(rng.uniform(0, [W - 1, H - 1, 1], (N, 3)).astype(np.float32)),
                "traj_3d_world": torch.zeros(N, 3), "verts_inds_vis": torch.from_numpy(rng.random(N) > 0.3),
                "img": torch.zeros(H, W, 3, dtype=torch.uint8)}
        (base / "seq_a" / "trajectories").mkdir(exist_ok=True)
        torch.save(traj, base / "seq_a" / "trajectories" / f"{stem}.pth")
        for camera in ("left", "right"):
            entries.append({
                "sequence_name": "seq_a", "frame_number": i, "frame_timestamp": i / 30, "camera_name": camera,
                "image": {"path": f"seq_a/images/{stem}.png", "size": [H, W]},
                "depth": {"path": f"seq_a/depths/{stem}.png", "scale_adjustment": 2.0, "mask_path": None},
                "viewpoint": {"R": R.tolist(), "T": T.tolist(), "focal_length": f_ndc.tolist(),
                              "principal_point": p_ndc.tolist(), "intrinsics_format": "ndc_isotropic"},
                "trajectories": {"path": f"seq_a/trajectories/{stem}.pth"} if camera == "left" else None})
    write_jgz(base / "frame_annotations_valid.jgz", entries[::-1])  # unordered on purpose
    convert("dynamic_replica", tmp_path / "src", tmp_path / "out", "--split", "valid", "--clip-len", "3")
    (clip,) = read_clips(tmp_path / "out" / "valid").values()
    assert clip.meta["source_frames"] == ["0", "1", "2"]
    png = np.asarray(Image.open(base / "seq_a" / "depths" / "seq_a-left-0000.png"), dtype=np.uint16)
    expected = png.view(np.float16).astype(np.float32) * 2.0
    assert np.array_equal(clip.depth_valid[0], expected >= 1e-5) and not clip.depth_valid[0, 3, 3]
    assert np.array_equal(clip.depth[0][expected >= 1e-5], expected[expected >= 1e-5])
    # PyTorch3D projection of a world point (row vectors, x left / y up, NDC +-1 at the image edges) ...
    X = np.array([0.3, 0.2, 0.5])
    cam = X @ R + T
    ndc = f_ndc * cam[:2] / cam[2] + p_ndc
    s = min(H, W) / 2
    raster = np.array([W / 2, H / 2]) - ndc * s  # pixel (0, 0)'s centre at 0.5
    # ... lands where ours puts it, with pixel centres at integers.
    ours = project(clip.intrinsics[0], np.linalg.inv(clip.cam_to_world[0]), X)
    assert np.allclose(ours, raster - 0.5, atol=1e-9)
    saved = torch.load(base / "seq_a" / "trajectories" / "seq_a-left-0001.pth", weights_only=True)
    vis = saved["verts_inds_vis"].numpy()
    kept = clip.visible.any(0)
    assert clip.tracks.shape[1] == kept.sum() <= N
    frames = [base / "seq_a" / "trajectories" / f"seq_a-left-{i:04d}.pth" for i in range(3)]
    all_tracks = np.stack([torch.load(f, weights_only=True)["traj_2d"].numpy()[:, :2] for f in frames])
    all_vis = np.stack([torch.load(f, weights_only=True)["verts_inds_vis"].numpy() for f in frames])
    assert np.allclose(clip.tracks, all_tracks[:, all_vis.any(0)]) and vis.shape == (N,)


def test_videos_mp4_and_frame_folders_become_colour_shards(tmp_path: Path) -> None:
    from datamodules.video_files import Mp4Writer

    frames = np.stack([np.full((16, 24, 3), 40 * i, np.uint8) for i in range(5)])
    with Mp4Writer(tmp_path / "src" / "clipA.mp4", fps=25) as writer:
        writer.write(frames)
    folder = tmp_path / "src" / "JPEGImages" / "bear"
    for n in (1, 2, 10):  # natural order: 1, 2, 10
        save_rgb(folder / f"{n}.jpg", np.full((16, 24, 3), 20 * n, np.uint8), quality=95)
    convert("videos", tmp_path / "src", tmp_path / "out", "--clip-len", "0")
    clips = read_clips(tmp_path / "out" / "all")
    video, bear = clips["videos_clipA_000000"], clips["videos_JPEGImages_bear_000000"]
    assert video.num_frames == 5 and video.depth is None and video.tracks.shape == (5, 0, 2)
    assert video.meta["fps"] == 25.0
    means = video.decode_frames().float().mean(dim=(1, 2, 3))
    assert torch.allclose(means, torch.arange(5) * 40.0, atol=3)
    assert bear.meta["source_frames"] == ["1", "2", "10"]
    assert bear.jpeg_frames[2] == (folder / "10.jpg").read_bytes()  # copied, not re-encoded
