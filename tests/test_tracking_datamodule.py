import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from configs.schema import TrackingDataConfig
from datamodules.clip_sampling import TooFewTracks, sample_queries
from datamodules.tracking import EvalClips, TrackingDataModule, TrainClipStream


def _cfg(**kw):
    base = dict(clip_len=8, num_queries=16, batch_size=2, num_workers=0, shuffle_buffer=4, batches_per_epoch=5)
    base.update(kw)
    return OmegaConf.structured(TrackingDataConfig(**base))


def test_batches_have_fixed_shapes_and_keys(tiny_shards):
    stream = TrainClipStream(tiny_shards["train"], _cfg(), rank=0, world_size=1)
    batches = list(DataLoader(stream, batch_size=None))
    assert len(batches) == 5
    b = batches[0]
    assert b["video"].shape == (2, 8, 3, 32, 32) and b["video"].dtype == torch.uint8
    assert b["queries"].shape == (2, 16, 3) and b["tracks"].shape == (2, 8, 16, 2)
    assert b["visible"].dtype == torch.bool and b["valid"].all()
    assert b["depth"].shape == (2, 8, 1, 32, 32)
    # Queries sit on their track at a visible frame.
    t = b["queries"][..., 0].long()
    assert torch.equal(b["queries"][..., 1:], b["tracks"].gather(1, t.view(2, 1, 16, 1).expand(2, 1, 16, 2)).squeeze(1))
    assert b["visible"].gather(1, t.unsqueeze(1)).all()


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_and_workers_read_disjoint_shards_and_equal_batch_counts(tiny_shards, workers):
    ids, counts = [], []
    for rank in range(2):
        stream = TrainClipStream(tiny_shards["train"], _cfg(num_workers=workers, batches_per_epoch=7), rank, 2)
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        batches = list(loader)
        counts.append(len(batches))
        ids.append({int(i) for b in batches for i in b["clip_id"]})
    assert counts == [7, 7]
    assert ids[0] and ids[1] and not (ids[0] & ids[1])


def test_too_few_shards_for_ranks_and_workers_is_a_clear_error(tiny_shards):
    stream = TrainClipStream(tiny_shards["train"][:1], _cfg(), rank=1, world_size=2)
    with pytest.raises(ValueError, match="cannot be split"):
        next(iter(stream))


def test_shards_that_never_give_a_sample_stop_with_a_clear_error(tiny_shards, monkeypatch):
    monkeypatch.setattr("datamodules.tracking.MAX_UNUSABLE_IN_A_ROW", 5)
    stream = TrainClipStream(tiny_shards["train"], _cfg(num_queries=100_000), rank=0, world_size=1)
    with pytest.raises(RuntimeError, match=r"5 clips in a row .* lower data.clip_len \(8\) or data.num_queries"):
        next(iter(stream))


def test_corrupt_shard_is_skipped_and_counted_in_batches(tiny_shards, tmp_path):
    bad = tmp_path / "bad.tar"
    data = open(tiny_shards["train"][0], "rb").read()
    bad.write_bytes(data[: len(data) // 3])
    stream = TrainClipStream([str(bad), *tiny_shards["train"][1:3]], _cfg(batches_per_epoch=6, shuffle_buffer=1), 0, 1)
    batches = list(DataLoader(stream, batch_size=None))
    assert len(batches) == 6
    assert sum(int(b["num_corrupt_skipped"]) for b in batches) >= 1


def test_corrupt_jpeg_member_is_skipped_and_counted(tmp_path):
    from datamodules.shards import ShardWriter, encode_clip
    from datamodules.synthetic import generate_clip
    from tests.conftest import TINY

    with ShardWriter(tmp_path) as writer:
        for i in range(3):
            clip = generate_clip(i, TINY)
            sample = encode_clip(f"k{i}", clip["frames"], clip["tracks"], clip["visible"])
            if i == 1:
                for name in [n for n in sample if n.endswith(".jpg")]:
                    sample[name] = b"not a jpeg"
            writer.write_sample(sample)
    stream = TrainClipStream([str(tmp_path / "clips-000000.tar")], _cfg(batches_per_epoch=3, batch_size=1, shuffle_buffer=1), 0, 1)
    batches = list(DataLoader(stream, batch_size=None))
    assert sum(int(b["num_corrupt_skipped"]) for b in batches) >= 1
    assert all(b["video"].shape[0] == 1 for b in batches)


def test_query_sampling_rules():
    rng = np.random.default_rng(0)
    visible = np.zeros((10, 6), dtype=bool)
    visible[0, 0] = visible[5, 1] = True  # eligible: first or middle frame
    visible[6:, 2] = True  # visible only after the middle frame: not eligible
    visible[:, 3] = True
    chosen, frames = sample_queries(visible, 3, random_fraction=0.0, rng=rng)
    assert set(chosen) == {0, 1, 3}
    assert dict(zip(chosen.tolist(), frames.tolist())) == {0: 0, 1: 5, 3: 0}
    with pytest.raises(TooFewTracks):
        sample_queries(visible, 4, 0.0, rng)
    _, frames = sample_queries(visible[:, [3]].repeat(1, 1), 1, random_fraction=1.0, rng=np.random.default_rng(3))
    assert 0 <= frames[0] < 10


def test_eval_clips_are_deterministic_and_map_style(tiny_shards):
    ds = EvalClips(tiny_shards["val"], clip_len=12, num_queries=16)
    assert len(ds) == 4
    a, b = ds[1], ds[1]
    assert torch.equal(a["queries"], b["queries"]) and a["video"].shape == (12, 3, 32, 32)


def test_datamodule_generates_synthetic_cache_once(tmp_path):
    cfg = _cfg()
    cfg.synthetic.cache_dir = str(tmp_path)
    cfg.synthetic.num_train_clips, cfg.synthetic.num_val_clips = 4, 2
    cfg.synthetic.height = cfg.synthetic.width = 16
    cfg.synthetic.num_frames, cfg.synthetic.num_tracks, cfg.synthetic.clips_per_shard = 8, 32, 2
    dm = TrackingDataModule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_urls) == 4 and len(dm.val_urls) == 1  # one clip per shard: >= 16 shards wanted
    (cache,) = list(tmp_path.glob("synthetic-*"))
    stamp = (cache / "DONE").stat().st_mtime_ns
    dm.prepare_data()
    assert (cache / "DONE").stat().st_mtime_ns == stamp
