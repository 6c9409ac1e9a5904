import numpy as np
import pytest
from PIL import Image

from datamodules.shard_reader import SkipCounter, iter_shard
from datamodules.shards import decode_clip, expand_shards
from tools.convert_kubric import ConversionError, convert


def _make_sequence(root, name, T=5, N=7, H=16, W=20, seed=0, with_depth=False):
    rng = np.random.default_rng(seed)
    seq = root / name
    (seq / "frames").mkdir(parents=True)
    for t in range(T):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(seq / "frames" / f"{t:03d}.png")
    coords = rng.uniform(0, W, (N, T, 2)).astype(np.float32)
    occluded = rng.random((N, T)) < 0.3
    np.save(seq / f"{name}.npy", {"coords": coords, "visibility": occluded}, allow_pickle=True)
    if with_depth:
        (seq / "depth").mkdir()
        for t in range(T):
            np.save(seq / "depth" / f"{t:03d}.npy", rng.uniform(1, 5, (H, W)).astype(np.float32))
    return coords, occluded


def test_converter_flips_occlusion_transposes_and_shifts_to_pixel_centres(tmp_path):
    src = tmp_path / "movi_f"
    expected = {f"seq{i}": _make_sequence(src, f"seq{i}", seed=i, with_depth=i == 2) for i in range(3)}
    counts = convert(src, tmp_path / "out", val_count=1, workers=1)
    assert counts == {"val": 1, "train": 2}
    clips = {}
    for split in ("train", "val"):
        for url in expand_shards(str(tmp_path / "out" / split)):
            for raw in iter_shard(url, SkipCounter()):
                clip = decode_clip(raw)
                clips[clip.key] = clip
    assert sorted(clips) == ["seq0", "seq1", "seq2"]
    for name, (coords, occluded) in expected.items():
        clip = clips[name]
        assert np.array_equal(clip.tracks, coords.transpose(1, 0, 2) - 0.5)  # raster -> centres at integers
        assert np.array_equal(clip.visible, ~occluded.T)  # the file stores OCCLUDED
        assert clip.meta["source"] == "kubric_movi_f"
    assert clips["seq2"].depth is not None and clips["seq2"].depth.shape == (5, 16, 20)
    assert clips["seq0"].depth is None


def test_converter_keeps_coordinates_as_is_on_request(tmp_path):
    coords, _ = _make_sequence(tmp_path / "src", "a")
    convert(tmp_path / "src", tmp_path / "out", val_count=0, workers=1, coords="as-is")
    (raw,) = list(iter_shard(expand_shards(str(tmp_path / "out" / "train"))[0], SkipCounter()))
    assert np.array_equal(decode_clip(raw).tracks, coords.transpose(1, 0, 2))


def test_converter_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no <seq>/<seq>.npy"):
        convert(tmp_path, tmp_path / "out", workers=1)
    seq = tmp_path / "bad" / "s"
    (seq / "frames").mkdir(parents=True)
    np.save(seq / "s.npy", {"coords": np.zeros((1, 1, 2))}, allow_pickle=True)
    with pytest.raises(ConversionError, match="sequence s: .*s.npy: missing key 'visibility'"):
        convert(tmp_path / "bad", tmp_path / "out2", workers=1)
