"""Damaged shards: truncation anywhere, corrupt members, frames of another size, NaN labels, another schema,
damaged validation clips. Each is counted and skipped with the file named, or stops with a clear error."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.shard_reader import SkipCounter, iter_clips, iter_shard
from datamodules.shards import CorruptSampleError, ShardFormatError, ShardWriter, decode_clip, encode_clip, encode_jpeg
from datamodules.synthetic import generate_clip
from datamodules.tracking import EvalClips, TrainClipStream
from tests.conftest import TINY
from tests.test_tracking_datamodule import _cfg

KEYS = [f"k{i}" for i in range(5)]


def _write(path: Path, samples: list[dict]) -> str:
    with ShardWriter(path.parent, prefix=path.stem, max_count=len(samples)) as writer:
        for sample in samples:
            writer.write_sample(sample)
    return str(path.parent / f"{path.stem}-000000.tar")


def _samples(n: int = 5) -> list[dict]:
    return [encode_clip(f"k{i}", *(lambda c: (c["frames"], c["tracks"], c["visible"]))(generate_clip(i, TINY)))
            for i in range(n)]


@pytest.fixture
def shard(tmp_path: Path) -> str:
    return _write(tmp_path / "clips", _samples())


def _member_offsets(url: str) -> dict[str, int]:
    with tarfile.open(url) as tar:
        return {m.name: m.offset for m in tar.getmembers()}


def _cut(url: str, at: int) -> None:
    data = Path(url).read_bytes()
    Path(url).write_bytes(data[:at])


def _read(url: str, caplog) -> tuple[list[str], int]:  # noqa: ANN001
    skips = SkipCounter()
    with caplog.at_level(logging.WARNING):
        keys = [clip.key for clip in iter_clips(url, skips)]
    return keys, skips.corrupt


def test_an_intact_shard_reads_whole_with_nothing_counted(shard, caplog):
    assert _read(shard, caplog) == (KEYS, 0)


@pytest.mark.parametrize("where", ["between two samples", "between two members of a sample", "inside a header"])
def test_truncation_is_counted_logged_and_keeps_the_samples_before_it(shard, caplog, where):
    offsets = _member_offsets(shard)
    if where == "between two samples":
        cut = offsets["k3.000.jpg"]  # k3 never starts; k2 was being read when the data stopped
    elif where == "between two members of a sample":
        cut = offsets["k2.005.jpg"]
    else:
        cut = offsets["k2.005.jpg"] + 100
    _cut(shard, cut)
    keys, corrupt = _read(shard, caplog)
    assert keys == ["k0", "k1"] and corrupt == 1  # the sample cut by the truncation is not passed on as complete
    assert f"shard {shard} is damaged after 2 complete sample(s)" in caplog.text


def test_garbage_meta_json_or_tracks_is_a_counted_skip_naming_the_member(tmp_path, caplog):
    samples = _samples()
    samples[1]["meta.json"] = b"\x00garbage"
    samples[3]["tracks.npy"] = b"\x93NUMPY garbage"
    url = _write(tmp_path / "clips", samples)
    keys, corrupt = _read(url, caplog)
    assert keys == ["k0", "k2", "k4"] and corrupt == 2
    assert f"{url} sample k1: member meta.json is not JSON" in caplog.text
    assert f"{url} sample k3: member tracks.npy is not a plain numpy array" in caplog.text


def test_nan_tracks_are_corrupt(tmp_path, caplog):
    clip = generate_clip(0, TINY)
    tracks = clip["tracks"].copy()
    tracks[3, 5] = np.nan
    url = _write(tmp_path / "clips", [encode_clip("bad", clip["frames"], tracks, clip["visible"]), *_samples(2)])
    keys, corrupt = _read(url, caplog)
    assert keys == ["k0", "k1"] and corrupt == 1
    assert "sample bad: member tracks.npy holds 2 NaN/Inf values" in caplog.text


def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["JPEG", "PNG"])
def test_a_frame_of_another_size_is_corrupt(tmp_path, kind):
    sample = _samples(1)[0]
    small = np.full((TINY.height // 2, TINY.width, 3), 200, np.uint8)
    sample["005.jpg"] = encode_jpeg(small) if kind == "JPEG" else _png(small)
    sample["__url__"] = "s.tar"
    clip = decode_clip(sample)
    with pytest.raises(CorruptSampleError, match=r"s.tar sample k0: 005.jpg: image of 16x32 pixels where the clip's "
                                                 r"frames are 32x32"):
        clip.decode_frames()
    assert clip.decode_frames(range(5)).shape == (5, TINY.height, TINY.width, 3)  # the other frames are fine


def test_a_training_stream_skips_and_counts_a_frame_of_another_size(tmp_path):
    samples = _samples(3)
    small = np.zeros((TINY.height // 2, TINY.width // 2, 3), np.uint8)
    for name in [n for n in samples[1] if n.endswith(".jpg")]:
        samples[1][name] = encode_jpeg(small)
    url = _write(tmp_path / "clips", samples)
    stream = TrainClipStream([url], _cfg(batches_per_epoch=4, batch_size=1, shuffle_buffer=1, clip_len=8), 0, 1)
    batches = list(stream)
    assert len(batches) == 4 and sum(int(b["num_corrupt_skipped"]) for b in batches) >= 1
    assert all(b["video"].shape[-2:] == (TINY.height, TINY.width) for b in batches)


def test_one_sample_of_another_schema_is_skipped_but_a_shard_of_them_stops(tmp_path, caplog):
    samples = _samples()
    del samples[2]["visible.npy"]
    url = _write(tmp_path / "one", samples)
    keys, corrupt = _read(url, caplog)
    assert keys == ["k0", "k1", "k3", "k4"] and corrupt == 1
    assert "skipping a sample that violates the shard schema" in caplog.text

    wrong = _samples(4)
    for sample in wrong:
        meta = json.loads(sample["meta.json"])
        sample["meta.json"] = json.dumps({**meta, "schema_version": 99}).encode()
    url = _write(tmp_path / "all", wrong)
    with pytest.raises(ShardFormatError, match=rf"shard {url} is not in this framework's clip schema .*: its first 3 "
                                               r"sample\(s\) violate it, e.g. .*schema_version 99"):
        list(iter_clips(url, SkipCounter()))


def test_validation_skips_and_counts_damaged_clips(tmp_path, caplog):
    samples = _samples(4)
    samples[1]["003.jpg"] = b"\xff\xd8 not really a jpeg"
    url = _write(tmp_path / "val", samples)
    with caplog.at_level(logging.WARNING):
        evaluation = EvalClips([url], clip_len=8, num_queries=8)
    assert len(evaluation) == 3 and evaluation.skipped.corrupt == 1
    assert [evaluation.clips[i].key for i in range(3)] == ["k0", "k2", "k3"]
    assert "validation set: 3 clip(s) kept, 1 corrupt and 0 with too few tracks skipped" in caplog.text
    assert evaluation[2]["video"].shape == (8, 3, TINY.height, TINY.width)


def test_truncated_shard_raw_reader_counts_once(shard):
    _cut(shard, _member_offsets(shard)["k4.000.jpg"])
    skips = SkipCounter()
    assert [raw["__key__"] for raw in iter_shard(shard, skips)] == ["k0", "k1", "k2"] and skips.corrupt == 1
