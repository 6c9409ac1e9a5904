"""Unlabelled clips for pseudo-label training: the reference's clip sampling, stored pseudo-labels."""

import numpy as np
import pytest
import torch

from datamodules.clip_sampling import TooFewTracks
from datamodules.shards import ShardFormatError, ShardWriter, expand_shards
from datamodules.synthetic import SyntheticConfig, generate_clip
from datamodules.unlabelled_videos import (
    UnlabelledClipStream,
    UnlabelledVideoDataConfig,
    UnlabelledVideoDataModule,
    clip_frame_indices,
    crop_origin,
)


def config(**kw) -> UnlabelledVideoDataConfig:
    base = dict(train_shards="unused", val_shards="unused", clip_len=8, num_queries=4, batch_size=2, num_workers=0,
                shuffle_buffer=1, batches_per_epoch=4)
    return UnlabelledVideoDataConfig(**{**base, **kw})


def test_frame_rate_start_and_length_follow_the_reference():
    rng = np.random.default_rng(0)
    strides = set()
    for _ in range(300):
        frames = clip_frame_indices(200, 24, config(clip_len=24), rng)
        stride = np.unique(np.diff(frames))
        assert len(frames) == 24 and len(stride) == 1
        strides.add(int(stride[0]))
        assert frames[0] >= 0 and frames[-1] < 200
    assert strides == {1, 2, 3}  # randint(1, min(4, 200 // 24)) excludes 4
    # Too few frames for a stride of 2: min(4, 40 // 24) = 1.
    assert set(np.diff(clip_frame_indices(40, 24, config(clip_len=24), rng))) == {1}
    assert set(np.diff(clip_frame_indices(200, 24, config(clip_len=24, random_frame_rate=False), rng))) == {1}


def test_short_videos_play_back_and_forth():
    frames = clip_frame_indices(5, 12, config(clip_len=12), np.random.default_rng(1))
    assert len(frames) == 12 and set(frames) <= set(range(5))
    assert (np.abs(np.diff(frames)) <= 1).all()  # forwards, then backwards: no jumps
    with pytest.raises(TooFewTracks, match="no frames"):
        clip_frame_indices(0, 8, config(), np.random.default_rng(0))


def test_random_crop_origin_and_too_small_videos():
    rng = np.random.default_rng(0)
    origins = np.array([crop_origin((40, 60), (32, 48), rng, "k") for _ in range(200)])
    assert origins[:, 0].min() == 0 and origins[:, 0].max() == 7  # the reference's randint(0, H - h)
    assert origins[:, 1].max() == 11
    assert crop_origin((32, 48), (32, 48), rng, "k") == (0, 0)
    with pytest.raises(TooFewTracks, match="smaller than the crop"):
        crop_origin((30, 60), (32, 48), rng, "small")


def write_videos(directory, count=4, frames=20, labelled=True):
    cfg = SyntheticConfig(height=40, width=48, num_frames=frames, num_tracks=8)
    with ShardWriter(directory, prefix="v", max_count=1) as writer:
        for seed in range(count):
            clip = generate_clip(seed, cfg)
            tracks, visible = (clip["tracks"], clip["visible"]) if labelled else \
                (np.zeros((frames, 0, 2), np.float32), np.zeros((frames, 0), bool))
            writer.write(f"video{seed}", clip["frames"], tracks, visible)
    return expand_shards(str(directory))


def test_stream_cuts_crops_and_draws_one_length_per_batch(tmp_path):
    urls = write_videos(tmp_path / "videos")
    cfg = config(clip_len=16, random_clip_len=True, crop_hw=[32, 40], batches_per_epoch=6)
    batches = list(UnlabelledClipStream(urls, cfg, rank=0, world_size=1))
    assert len(batches) == 6
    lengths = set()
    for batch in batches:
        assert set(batch) == {"video", "clip_id", "num_corrupt_skipped", "num_too_few_tracks_skipped"}  # no labels
        T = batch["video"].shape[1]
        assert batch["video"].shape == (2, T, 3, 32, 40) and batch["video"].dtype == torch.uint8
        assert 8 <= T < 16
        lengths.add(T)
    assert len(lengths) > 1  # drawn per batch


def stored_sample(writer, key, frames=8, num=4, found=True, occluded_loss=True, size=(32, 40)):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (frames, *size, 3), dtype=np.uint8)
    tracks = rng.uniform(0, 30, (frames, num, 2)).astype(np.float32)
    queries = np.concatenate([np.zeros((num, 1)), tracks[0]], 1).astype(np.float32)
    writer.write(key, video, tracks, rng.random((frames, num)) > 0.3, queries=queries,
                 extra_meta={"pseudo_labels": {"teacher": "tiny", "teacher_type": "cotracker3_online",
                                               "occluded_loss": occluded_loss, "keypoints_found": found}})
    return tracks, queries


def test_pre_extracted_samples_are_read_as_stored(tmp_path):
    with ShardWriter(tmp_path / "pl", prefix="p", max_count=8) as writer:
        tracks, queries = stored_sample(writer, "a")
        stored_sample(writer, "b", found=False, occluded_loss=False)
    urls = expand_shards(str(tmp_path / "pl"))
    cfg = config(pseudo_labels="from_shards", crop_hw=[32, 40], batches_per_epoch=1)
    batch = next(iter(UnlabelledClipStream(urls, cfg, rank=0, world_size=1)))
    order = batch["valid"].flatten(1).all(1).tolist().index(True)  # the shuffle may swap a and b
    assert torch.equal(batch["queries"][order], torch.from_numpy(queries))
    assert torch.equal(batch["tracks"][order], torch.from_numpy(tracks))
    assert batch["occluded_loss"].tolist() == ([True, False] if order == 0 else [False, True])
    assert not batch["valid"][1 - order].any()
    # Samples that do not match the run's settings are named.
    wrong = config(pseudo_labels="from_shards", num_queries=5, batches_per_epoch=1)
    with pytest.raises(ShardFormatError, match="data.num_queries=5"):
        next(iter(UnlabelledClipStream(urls, wrong, rank=0, world_size=1)))
    plain = write_videos(tmp_path / "plain", count=1)
    with pytest.raises(ShardFormatError, match="not a pre-extracted pseudo-label sample"):
        next(iter(UnlabelledClipStream(plain, config(pseudo_labels="from_shards", batch_size=1), 0, 1)))


def test_config_and_datamodule_checks(tmp_path):
    with pytest.raises(ValueError, match="pseudo_labels must be one of"):
        config(pseudo_labels="cached")
    with pytest.raises(ValueError, match="at least 8"):
        config(clip_len=12, random_clip_len=True)
    with pytest.raises(ValueError, match="labelled validation clips"):
        UnlabelledVideoDataModule(config(val_shards=None))
    with pytest.raises(ValueError, match="random lengths cannot be stacked"):
        UnlabelledVideoDataModule(config(pseudo_labels="from_shards", random_clip_len=True, clip_len=16))
    urls = write_videos(tmp_path / "videos", count=2)
    dm = UnlabelledVideoDataModule(config(train_shards=urls[0], val_shards=str(tmp_path / "videos"),
                                          val_clip_len=8, val_num_queries=4))
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))  # labelled validation clips
    assert batch["tracks"].shape == (2, 8, 4, 2) and batch["queries"].shape == (2, 4, 3)


def test_queries_member_is_checked_when_written():
    from datamodules.shards import encode_clip

    frames = np.zeros((4, 8, 8, 3), np.uint8)
    tracks, visible = np.zeros((4, 3, 2), np.float32), np.ones((4, 3), bool)
    with pytest.raises(ShardFormatError, match=r"queries must be \(N=3, 3\)"):
        encode_clip("k", frames, tracks, visible, queries=np.zeros((2, 3), np.float32))
