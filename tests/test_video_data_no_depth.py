"""Video DataModule on colour-only shards (no depth.npz): `require_depth: false` drops the depth keys."""

import pytest
import torch
from omegaconf import OmegaConf

from datamodules.shards import ShardWriter
from datamodules.synthetic import SyntheticConfig, generate_clip
from datamodules.video import VideoDataConfig, VideoDataModule

DEPTH_KEYS = ("depth", "depth_valid", "is_disparity")


@pytest.fixture(scope="module")
def colour_shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Frames + tracks only, as DAVIS / Videvo colour shards are."""
    root = tmp_path_factory.mktemp("colour_shards")
    cfg = SyntheticConfig(height=32, width=32, num_frames=12, num_tracks=48)
    urls = {}
    for split, seeds in (("train", range(4)), ("val", range(100, 102))):
        with ShardWriter(root / split, prefix=split, max_count=2) as writer:
            for seed in seeds:
                clip = generate_clip(seed, cfg)
                writer.write(f"clip{seed:05d}", clip["frames"], clip["tracks"], clip["visible"], source="synthetic")
        urls[split] = sorted(str(p) for p in (root / split).glob("*.tar"))
    return urls


def make_dm(urls: dict[str, list[str]], **overrides: object) -> VideoDataModule:
    cfg = OmegaConf.structured(VideoDataConfig(clip_len=8, num_tracks=32, batch_size=2, num_workers=0,
                                               shuffle_buffer=2, batches_per_epoch=2))
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    dm = VideoDataModule(cfg)
    dm.train_urls, dm.val_urls = urls["train"], urls["val"]
    return dm


def test_depth_required_by_default_with_a_clear_error(colour_shards) -> None:
    dm = make_dm(colour_shards)
    with pytest.raises(ValueError, match="no depth.npz.*require_depth=false"):
        dm.make_eval_dataset()[0]


def test_batches_without_depth_keys(colour_shards) -> None:
    dm = make_dm(colour_shards, require_depth=False, val_clip_len=12)
    train = next(iter(dm.train_dataloader()))
    val = next(iter(dm.val_dataloader()))
    for batch, T in ((train, 8), (val, 12)):
        assert not set(DEPTH_KEYS) & set(batch)
        assert batch["video"].shape == (2, T, 3, 32, 32)
        assert batch["tracks"].shape == (2, T, 32, 2) and batch["visible"].shape == (2, T, 32)
        assert batch["visible"].any()


def test_augmentation_handles_a_batch_without_depth(colour_shards) -> None:
    dm = make_dm(colour_shards, require_depth=False, crop_hw=[24, 24])
    batch = next(iter(dm.train_dataloader()))

    class Training:
        training = True

    dm.trainer = Training()
    torch.manual_seed(0)
    out = dm.on_after_batch_transfer(dict(batch), 0)
    assert out["video"].shape == (2, 8, 3, 24, 24) and out["video"].dtype == torch.float32
    assert not set(DEPTH_KEYS) & set(out)
    xy = out["tracks"][out["visible"]]
    assert len(xy) and (xy >= 0).all() and (xy <= 23).all()  # tracks moved with the crop


def test_shards_with_depth_give_no_depth_keys_either(tiny_shards) -> None:
    """Mixing shards with and without depth must not give batches with different keys."""
    batch = next(iter(make_dm(tiny_shards, require_depth=False).train_dataloader()))
    assert not set(DEPTH_KEYS) & set(batch)
    assert batch["video"].shape == (2, 8, 3, 32, 32)
