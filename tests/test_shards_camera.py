"""Schema additions: lossless PNG frames, camera.npz, and the camera batch keys of the video datamodule."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from configs.schema import AugmentConfig
from datamodules.augment import apply_affine_to_points, augment_tracking_batch, sample_affines
from datamodules.shards import ShardFormatError, ShardWriter, decode_clip, encode_clip
from datamodules.video import VideoDataConfig, VideoDataModule

T, H, W = 4, 16, 20


def frames(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (T, H, W, 3), dtype=np.uint8)


def no_tracks() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((T, 0, 2), np.float32), np.zeros((T, 0), bool)


def camera(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    K = np.tile(np.array([[15.0, 0, 9.5], [0, 15.0, 7.5], [0, 0, 1]]), (T, 1, 1))
    c2w = np.tile(np.eye(4), (T, 1, 1))
    c2w[:, :3, 3] = np.random.default_rng(seed).normal(size=(T, 3))
    return K, c2w


def test_png_frames_are_lossless_and_named_png() -> None:
    video = frames()
    sample = encode_clip("k", video, *no_tracks(), frame_format="png")
    assert [n for n in sample if n.endswith(".png")] == [f"{t:03d}.png" for t in range(T)]
    clip = decode_clip(sample)
    assert torch.equal(clip.decode_frames(), torch.from_numpy(video))
    with pytest.raises(ShardFormatError, match="frame_format"):
        encode_clip("k", video, *no_tracks(), frame_format="webp")


def test_encoded_frames_keep_their_format_and_bytes() -> None:
    video = frames()
    pngs = []
    for f in video:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    sample = encode_clip("k", video, *no_tracks(), encoded_frames=pngs)
    assert sample["000.png"] == pngs[0]
    with pytest.raises(ShardFormatError, match="neither JPEG nor PNG"):
        encode_clip("k", video, *no_tracks(), encoded_frames=[b"GIF89a"] * T)


def test_camera_round_trip_with_an_invalid_pose() -> None:
    K, c2w = camera()
    c2w[2, 0, 0] = np.inf
    clip = decode_clip(encode_clip("k", frames(), *no_tracks(), intrinsics=K, cam_to_world=c2w))
    assert clip.intrinsics.dtype == np.float64 and np.array_equal(clip.intrinsics, K)
    assert clip.pose_valid.tolist() == [True, True, False, True]
    assert np.isnan(clip.cam_to_world[2]).all() and np.array_equal(clip.cam_to_world[[0, 1, 3]], c2w[[0, 1, 3]])
    assert clip.meta["camera_convention"] == "opencv_cam_to_world"
    intrinsics_only = decode_clip(encode_clip("k", frames(), *no_tracks(), intrinsics=K))
    assert intrinsics_only.cam_to_world is None and intrinsics_only.pose_valid is None
    old = decode_clip(encode_clip("k", frames(), *no_tracks()))  # shards written before cameras existed
    assert old.intrinsics is None and "camera.npz" not in encode_clip("k", frames(), *no_tracks())


def test_camera_shapes_are_checked() -> None:
    K, c2w = camera()
    with pytest.raises(ShardFormatError, match="intrinsics must be finite"):
        encode_clip("k", frames(), *no_tracks(), intrinsics=K[:2])
    with pytest.raises(ShardFormatError, match="cam_to_world needs intrinsics"):
        encode_clip("k", frames(), *no_tracks(), cam_to_world=c2w)


@pytest.fixture()
def camera_shards(tmp_path: Path) -> dict[str, list[str]]:
    rng = np.random.default_rng(0)
    urls = {}
    for split, seeds in (("train", range(3)), ("val", range(10, 12))):
        with ShardWriter(tmp_path / split, prefix=split, max_count=2) as writer:
            for seed in seeds:
                K, c2w = camera(seed)
                tracks = rng.uniform(2, [W - 3, H - 3], (T, 6, 2)).astype(np.float32)
                writer.write(f"c{seed}", frames(seed), tracks, np.ones((T, 6), bool), intrinsics=K, cam_to_world=c2w,
                             depth=rng.uniform(1, 5, (T, H, W)).astype(np.float32))
        urls[split] = sorted(str(p) for p in (tmp_path / split).glob("*.tar"))
    return urls


def make_dm(urls: dict[str, list[str]], **overrides: object) -> VideoDataModule:
    cfg = OmegaConf.structured(VideoDataConfig(clip_len=3, num_tracks=4, batch_size=2, num_workers=0,
                                               shuffle_buffer=1, batches_per_epoch=1))
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    dm = VideoDataModule(cfg)
    dm.train_urls, dm.val_urls = urls["train"], urls["val"]
    return dm


def test_batches_carry_camera_keys_when_asked(camera_shards) -> None:
    plain = next(iter(make_dm(camera_shards).val_dataloader()))
    assert not {"intrinsics", "cam_to_world", "pose_valid"} & set(plain)
    batch = next(iter(make_dm(camera_shards, require_poses=True).val_dataloader()))
    assert batch["intrinsics"].shape == (2, 3, 3, 3) and batch["intrinsics"].dtype == torch.float32
    assert batch["cam_to_world"].shape == (2, 3, 4, 4) and batch["pose_valid"].all()
    K10, c2w10 = camera(10)
    assert torch.allclose(batch["cam_to_world"][0], torch.from_numpy(c2w10[:3]).float())
    train = next(iter(make_dm(camera_shards, require_intrinsics=True).train_dataloader()))
    assert train["intrinsics"].shape == (2, 3, 3, 3) and "cam_to_world" not in train


def test_clip_without_camera_is_an_error_naming_it(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, prefix="v") as writer:
        writer.write("nocam", frames(), *no_tracks(), depth=np.ones((T, H, W), np.float32))
    urls = {"train": [str(tmp_path / "v-000000.tar")], "val": [str(tmp_path / "v-000000.tar")]}
    with pytest.raises(ValueError, match="clip nocam .* has no camera.npz"):
        make_dm(urls, require_intrinsics=True).make_eval_dataset()[0]


def test_augmentation_moves_intrinsics_with_the_pixels(camera_shards) -> None:
    batch = next(iter(make_dm(camera_shards, require_intrinsics=True).train_dataloader()))
    batch["video"] = batch["video"].float()
    cfg = AugmentConfig(flip_h_p=1.0, flip_v_p=0.0, occluder_p=0.0)
    out = augment_tracking_batch(dict(batch), cfg, crop_hw=[12, 14], generator=torch.Generator().manual_seed(1))
    affine = sample_affines(batch["tracks"], batch["visible"], (H, W), (12, 14), cfg, torch.Generator().manual_seed(1))
    # A camera-frame point projected with the old K and moved by the frame's affine lands where the new K puts it.
    points = torch.tensor([[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0]])
    old = points @ batch["intrinsics"].transpose(-1, -2)  # (B, T, 2, 3)
    new = points @ out["intrinsics"].transpose(-1, -2)
    moved = apply_affine_to_points(old[..., :2] / old[..., 2:], affine)
    assert torch.allclose(new[..., :2] / new[..., 2:], moved, atol=1e-4)
    assert (out["intrinsics"][..., 0, 0] < 0).all()  # the horizontal flip mirrors the camera
