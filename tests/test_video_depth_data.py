"""Video DataModule: batch keys and shapes, track subsets with padding, augmentation moves depth too."""

import torch
from omegaconf import OmegaConf

from datamodules.video import VideoDataConfig, VideoDataModule


def make_dm(urls, **overrides):
    cfg = OmegaConf.structured(VideoDataConfig(clip_len=8, num_tracks=80, batch_size=2, num_workers=0,
                                               shuffle_buffer=2, batches_per_epoch=2, max_depth=50.0))
    for k, v in overrides.items():
        OmegaConf.update(cfg, k, v)
    dm = VideoDataModule(cfg)
    dm.train_urls, dm.val_urls = urls["train"], urls["val"]
    return dm


def check_batch(batch, B, T, H, W, M):
    assert batch["video"].shape == (B, T, 3, H, W)
    assert batch["depth"].shape == batch["depth_valid"].shape == (B, T, 1, H, W)
    assert batch["depth_valid"].dtype == torch.bool and batch["depth"].dtype == torch.float32
    assert batch["tracks"].shape == (B, T, M, 2) and batch["visible"].shape == (B, T, M)
    assert batch["queries"].shape == (B, M, 3)
    assert batch["is_disparity"].shape == (B,) and not batch["is_disparity"].any()


def test_train_and_val_batches(tiny_shards):
    dm = make_dm(tiny_shards, val_clip_len=12)
    batch = next(iter(dm.train_dataloader()))
    check_batch(batch, 2, 8, 32, 32, 80)
    assert batch["video"].dtype == torch.uint8
    # The shards hold 64 tracks: 80 requested -> 64 real (each visible somewhere) + 16 never visible.
    seen = batch["visible"].any(1)
    assert (seen.sum(1) <= 64).all() and not seen[:, 64:].any()
    val = next(iter(dm.val_dataloader()))
    check_batch(val, 2, 12, 32, 32, 80)  # validation clips: frames 0..val_clip_len
    again = next(iter(dm.val_dataloader()))
    assert torch.equal(val["tracks"], again["tracks"])  # a fixed track subset per validation clip


def test_random_subset_of_tracks_per_training_clip(tiny_shards):
    dm = make_dm(tiny_shards, num_tracks=16)
    batch = next(iter(dm.train_dataloader()))
    check_batch(batch, 2, 8, 32, 32, 16)
    assert batch["visible"].any(1).all()  # enough tracks: no padding


def test_augmentation_moves_tracks_and_depth_with_the_frames(tiny_shards):
    dm = make_dm(tiny_shards, crop_hw=[28, 28])
    batch = next(iter(dm.train_dataloader()))

    class Training:
        training = True

    dm.trainer = Training()
    torch.manual_seed(0)
    out = dm.on_after_batch_transfer(dict(batch), 0)
    check_batch(out, 2, 8, 28, 28, 80)
    # Depth moved by the same warp: it is still a per-clip depth field, with invalid pixels only
    # where the crop left the frame.
    assert out["depth"][out["depth_valid"]].min() > 0
    vis = out["visible"]
    xy = out["tracks"][vis]
    assert (xy >= 0).all() and (xy <= 27).all()  # visible points are inside the crop
