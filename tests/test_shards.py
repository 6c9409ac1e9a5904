import io
import json
import tarfile

import numpy as np
import pytest
import torch

from datamodules.shard_reader import SkipCounter, iter_shard
from datamodules.shards import (
    SCHEMA_VERSION,
    CorruptSampleError,
    ShardFormatError,
    ShardWriter,
    decode_clip,
    encode_clip,
    expand_shards,
)
from datamodules.synthetic import generate_clip
from tests.conftest import TINY


def _tar_members(path: str) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_round_trip_is_bit_exact_for_tracks_visibility_and_depth(tmp_path):
    clip = generate_clip(3, TINY)
    with ShardWriter(tmp_path, max_count=10) as writer:
        writer.write("abc", clip["frames"], clip["tracks"], clip["visible"], fps=12.0, source="synthetic",
                     depth=clip["depth"], depth_valid=clip["depth_valid"])
    (raw,) = list(iter_shard(str(tmp_path / "clips-000000.tar"), SkipCounter()))
    decoded = decode_clip(raw)
    assert decoded.key == "abc"
    assert np.array_equal(decoded.tracks, clip["tracks"]) and decoded.tracks.dtype == np.float32
    assert np.array_equal(decoded.visible, clip["visible"]) and decoded.visible.dtype == bool
    assert np.array_equal(decoded.depth, clip["depth"]) and np.array_equal(decoded.depth_valid, clip["depth_valid"])
    assert decoded.meta["schema_version"] == SCHEMA_VERSION and decoded.meta["fps"] == 12.0
    assert decoded.meta["depth_kind"] == "depth"
    frames = decoded.decode_frames()
    assert frames.dtype == torch.uint8 and frames.shape == clip["frames"].shape
    # JPEG is lossy but close: mean absolute error of a few grey levels.
    assert (frames.float() - torch.from_numpy(clip["frames"]).float()).abs().mean() < 6


def test_members_are_plain_arrays_and_json_never_pickle(tmp_path):
    clip = generate_clip(0, TINY)
    with ShardWriter(tmp_path) as writer:
        writer.write("k0", clip["frames"], clip["tracks"], clip["visible"])
    members = _tar_members(str(tmp_path / "clips-000000.tar"))
    assert sorted(members)[:2] == ["k0.000.jpg", "k0.001.jpg"]
    assert {"k0.meta.json", "k0.tracks.npy", "k0.visible.npy"} <= set(members)
    np.load(io.BytesIO(members["k0.tracks.npy"]), allow_pickle=False)  # raises if pickled
    assert json.loads(members["k0.meta.json"])["num_frames"] == TINY.num_frames


def test_pickled_member_is_rejected():
    clip = generate_clip(0, TINY)
    sample = encode_clip("k", clip["frames"], clip["tracks"], clip["visible"])
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    sample["tracks.npy"] = buf.getvalue()
    with pytest.raises(CorruptSampleError, match="tracks.npy"):
        decode_clip(sample)


def test_missing_member_names_file_and_key():
    clip = generate_clip(0, TINY)
    sample = encode_clip("k", clip["frames"], clip["tracks"], clip["visible"])
    del sample["visible.npy"]
    sample["__url__"] = "/data/shard-000.tar"
    with pytest.raises(ShardFormatError, match=r"/data/shard-000.tar sample k: missing required member\(s\) \['visible.npy'\]"):
        decode_clip(sample)


def test_bad_shapes_and_keys_rejected_at_write():
    clip = generate_clip(0, TINY)
    with pytest.raises(ShardFormatError, match="must not contain"):
        encode_clip("a.b", clip["frames"], clip["tracks"], clip["visible"])
    with pytest.raises(ShardFormatError, match="visible must be"):
        encode_clip("k", clip["frames"], clip["tracks"], clip["visible"][:, :3])
    with pytest.raises(ShardFormatError, match="2 encoded frames for"):
        encode_clip("k", clip["frames"], clip["tracks"], clip["visible"], encoded_frames=[b"x", b"y"])


def test_existing_jpeg_bytes_are_stored_as_they_are():
    clip = generate_clip(0, TINY)
    first = encode_clip("k", clip["frames"], clip["tracks"], clip["visible"], jpeg_quality=75)
    jpegs = [first[name] for name in sorted(first) if name.endswith(".jpg")]
    again = encode_clip("k", clip["frames"], clip["tracks"], clip["visible"], encoded_frames=jpegs)
    assert [again[name] for name in sorted(again) if name.endswith(".jpg")] == jpegs


def test_writer_respects_count_limit(tmp_path):
    clip = generate_clip(0, TINY)
    with ShardWriter(tmp_path, max_count=2) as writer:
        for i in range(5):
            writer.write(f"k{i}", clip["frames"], clip["tracks"], clip["visible"])
    assert len(expand_shards(str(tmp_path))) == 3


def test_truncated_shard_is_skipped_and_counted(tmp_path):
    clip = generate_clip(0, TINY)
    with ShardWriter(tmp_path, max_count=10) as writer:
        for i in range(3):
            writer.write(f"k{i}", clip["frames"], clip["tracks"], clip["visible"])
    path = tmp_path / "clips-000000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    skips = SkipCounter()
    samples = list(iter_shard(str(path), skips))
    assert skips.corrupt == 1
    # Only complete samples survive; each still decodes.
    assert 0 < len(samples) < 3
    for raw in samples:
        decode_clip(raw)


def test_pattern_matching_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no files"):
        expand_shards(str(tmp_path / "nothing-{000..003}.tar"))


def test_expand_brace_and_directory(tiny_shards):
    root = tiny_shards["train"][0].rsplit("/", 1)[0]
    assert expand_shards(root) == tiny_shards["train"]
    assert expand_shards(root + "/clips-{000000..000001}.tar") == tiny_shards["train"][:2]
