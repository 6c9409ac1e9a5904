"""tools/extract_tracks.py: a predict job writes per-rank shards that the video DataModule reads."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from datamodules.shard_reader import SkipCounter, iter_shard
from datamodules.shards import decode_clip, expand_shards
from datamodules.video import VideoDataConfig, VideoDataModule
from models.cotracker3 import CoTrackerThree, CoTrackerThreeConfig
from models.cotracker3_predictor import build_tracker_predictor
from tools import extract_tracks

REPO = Path(__file__).resolve().parents[1]
TINY_TRACKER = dict(window_len=4, latent_dim=8, corr_levels=2, corr_radius=1, corr_hidden_dim=16, corr_out_dim=8,
                    hidden_size=16, num_heads=2, time_depth=1, space_depth=1, num_virtual_tracks=4, posenc_freqs=2,
                    model_resolution=(32, 32))


@pytest.fixture(scope="module")
def tracker_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tracker") / "tiny_cotracker3.pth"
    torch.save(CoTrackerThree(CoTrackerThreeConfig(variant="offline", **TINY_TRACKER)).state_dict(), path)
    return path


def read_all(directory):
    return [decode_clip(raw) for url in expand_shards(str(directory)) for raw in iter_shard(url, SkipCounter())]


def test_extract_writes_shards_the_video_datamodule_reads(tiny_shards, tracker_ckpt, tmp_path):
    predictor = build_tracker_predictor({"variant": "offline", **TINY_TRACKER}, tracker_ckpt, iters=1)
    out = tmp_path / "tracks"
    extract_tracks.extract(tiny_shards["val"], out, predictor, num_tracks=20, accelerator="cpu", devices=1,
                           num_workers=0, teacher="tiny_cotracker3.pth (offline)")
    assert sorted(p.name for p in out.glob("*.tar")) == ["tracks-rank000-000000.tar"]
    clips = read_all(out)
    originals = {c.key: c for c in read_all(Path(tiny_shards["val"][0]).parent)}
    assert sorted(c.key for c in clips) == sorted(originals)
    for clip in clips:
        src = originals[clip.key]
        assert clip.tracks.shape == (src.num_frames, 20, 2) and clip.visible.shape == (src.num_frames, 20)
        assert clip.meta["tracks_source"] == "cotracker3" and clip.meta["track_queries"] == 20
        assert (clip.depth == src.depth).all() and (clip.depth_valid == src.depth_valid).all()
        assert clip.jpeg_frames == src.jpeg_frames  # the frames' JPEG bytes are copied, never re-encoded
        assert clip.visible.any(0).all()  # every track is visible at least at its query frame
        # The queries and the tracker are recorded; each track passes through its query.
        assert clip.meta["tracks_teacher"] == "tiny_cotracker3.pth (offline)" and clip.queries.shape == (20, 3)
        frames = clip.queries[:, 0].astype(int)
        assert (clip.tracks[frames, range(20)] == clip.queries[:, 1:]).all()
    # Same seed, same tracks.
    again = tmp_path / "again"
    extract_tracks.extract(tiny_shards["val"], again, predictor, num_tracks=20, accelerator="cpu", devices=1,
                           num_workers=0)
    assert all((a.tracks == b.tracks).all() for a, b in zip(clips, read_all(again)))

    cfg = OmegaConf.structured(VideoDataConfig(clip_len=6, num_tracks=16, batch_size=2, num_workers=0,
                                               shuffle_buffer=1, batches_per_epoch=1))
    dm = VideoDataModule(cfg)
    dm.train_urls = dm.val_urls = expand_shards(str(out))
    batch = next(iter(dm.train_dataloader()))
    assert batch["tracks"].shape == (2, 6, 16, 2) and batch["depth"].shape == (2, 6, 1, 32, 32)


@pytest.mark.slow
def test_two_process_ddp_predict_writes_one_shard_set_per_rank(tiny_shards, tracker_ckpt, tmp_path):
    import json

    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "tools" / "extract_tracks.py"), "--shards", *tiny_shards["train"][:4],
           "--out", str(out), "--checkpoint", str(tracker_ckpt), "--arch", json.dumps(TINY_TRACKER),
           "--iters", "1", "--num-tracks", "8", "--accelerator", "cpu", "--devices", "2", "--num-workers", "0"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    shards = sorted(p.name for p in out.glob("*.tar"))
    assert shards == ["tracks-rank000-000000.tar", "tracks-rank001-000000.tar"]
    keys = [sorted({m.name.split(".")[0] for m in tarfile.open(out / s)}) for s in shards]
    assert not set(keys[0]) & set(keys[1]) and len(keys[0]) + len(keys[1]) == 8  # 4 shards x 2 clips, no repeats
    assert read_all(out)[0].meta["tracks_teacher"] == "tiny_cotracker3.pth (offline)"  # named from the file
