"""The shared conversion driver: re-runs, skip-and-count, workers, exit codes, clip cutting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datamodules.conversion import clip_windows, resize_nearest, scale_intrinsics, scale_points
from tests.convert_fixtures import H, W, make_sintel, read_clips
from tests.test_convert_datasets import make_scannet
from tools.convert import main, run


def convert(*args: object, workers: int = 1) -> None:
    assert run([*map(str, args), "--workers", str(workers), "--no-progress"]) == 0


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.tar"))}


def test_clip_windows() -> None:
    assert clip_windows(10, 4, None) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # the partial tail is dropped
    assert clip_windows(10, 4, 3) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert clip_windows(3, None, None) == [[0, 1, 2]] and clip_windows(3, 5, None) == []


def test_resampling_keeps_pixel_centres_at_integers() -> None:
    # Going 2x: input pixel 0 covers output pixels 0 and 1, whose centres average to 0.5.
    assert np.allclose(scale_points(np.array([[0.0, 0.0], [3.0, 1.0]]), (2, 4), (4, 8)), [[0.5, 0.5], [6.5, 2.5]])
    K = np.array([[10.0, 0, 1.5], [0, 10.0, 0.5], [0, 0, 1]])
    K2 = scale_intrinsics(K, (2, 4), (4, 8))
    point = np.array([0.2, -0.1, 2.0])
    uv = (K @ point)[:2] / 2.0
    assert np.allclose((K2 @ point)[:2] / 2.0, scale_points(uv, (2, 4), (4, 8)))
    assert np.array_equal(resize_nearest(np.arange(4).reshape(2, 2), (4, 4)), [[0, 0, 1, 1]] * 2 + [[2, 2, 3, 3]] * 2)


def test_rerun_keeps_complete_shards_and_overwrite_rewrites(tmp_path: Path, capsys) -> None:
    make_sintel(tmp_path / "src", {"alley_1": 3, "cave_2": 2})
    convert("sintel", tmp_path / "src", tmp_path / "out")
    first = shard_bytes(tmp_path / "out" / "training")
    convert("sintel", tmp_path / "src", tmp_path / "out", workers=2)
    assert "kept 2 complete shards" in capsys.readouterr().out
    assert shard_bytes(tmp_path / "out" / "training") == first  # untouched
    convert("sintel", tmp_path / "src", tmp_path / "out", "--overwrite", workers=2)
    again = read_clips(tmp_path / "out" / "training")
    assert sorted(again) == ["sintel_alley_1_000000", "sintel_cave_2_000000"]  # no duplicates
    assert not list((tmp_path / "out" / "training").glob(".*"))  # no temporary files left
    manifest = json.loads((tmp_path / "out" / "training" / "convert.json").read_text())
    assert manifest["sintel"]["summary"]["clips"] == 2 and manifest["sintel"]["summary"]["frames"] == 5


def test_rerun_with_other_options_is_a_user_error(tmp_path: Path, capsys) -> None:
    make_sintel(tmp_path / "src", {"alley_1": 4})
    convert("sintel", tmp_path / "src", tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:
        main(["sintel", str(tmp_path / "src"), str(tmp_path / "out"), "--clip-len", "2", "--no-progress"])
    assert exit_info.value.code == 2
    assert "other options (clip_len)" in capsys.readouterr().err
    convert("sintel", tmp_path / "src", tmp_path / "out", "--clip-len", "2", "--overwrite")
    clips = read_clips(tmp_path / "out" / "training")
    assert sorted(clips) == ["sintel_alley_1_000000", "sintel_alley_1_000002"]  # the old whole-sequence clip is gone


def test_missing_and_corrupt_files_are_named_counted_and_skipped(tmp_path: Path, capsys) -> None:
    make_scannet(tmp_path / "src", "scene0001_00", list(range(6)))
    (tmp_path / "src" / "scene0001_00" / "depth" / "2.png").unlink()
    (tmp_path / "src" / "scene0001_00" / "color" / "4.jpg").write_bytes(b"\xff\xd8 truncated")
    convert("scannet", tmp_path / "src", tmp_path / "out", "--clip-len", "2")
    out = capsys.readouterr().out
    assert "skipped 2 clips; 2 source file(s)" in out and "depth/2.png" in out and "color/4.jpg" in out
    clips = read_clips(tmp_path / "out" / "all")
    assert sorted(c.meta["source_frames"][0] for c in clips.values()) == ["0"]  # clips [2,3] and [4,5] skipped
    note = tmp_path / "out" / "all" / "scannet-scene0001_00-0000.tar.skipped.json"
    assert json.loads(note.read_text())["skipped_clips"] == 2
    # Fixed files convert on the next run: a shard with skips is redone.
    make_scannet(tmp_path / "src", "scene0001_00", list(range(6)))
    convert("scannet", tmp_path / "src", tmp_path / "out", "--clip-len", "2")
    assert len(read_clips(tmp_path / "out" / "all")) == 3 and not note.exists()


def test_workers_write_the_same_clips(tmp_path: Path) -> None:
    make_sintel(tmp_path / "src", {f"scene_{i}": 2 for i in range(4)})
    convert("sintel", tmp_path / "src", tmp_path / "one")
    convert("sintel", tmp_path / "src", tmp_path / "two", workers=2)
    one, two = read_clips(tmp_path / "one" / "training"), read_clips(tmp_path / "two" / "training")
    assert sorted(one) == sorted(two)
    for key in one:
        assert one[key].jpeg_frames == two[key].jpeg_frames and np.array_equal(one[key].depth, two[key].depth)


def test_benchmark_clips_and_missing_protocol_sequences_are_named(tmp_path: Path, capsys) -> None:
    make_scannet(tmp_path / "src", "scene0707_00", list(range(12)))
    make_scannet(tmp_path / "src", "scene0001_00", list(range(3)))  # not in the protocol
    convert("scannet", tmp_path / "src", tmp_path / "out", "--split", "bench")
    clips = read_clips(tmp_path / "out" / "depthcrafter")
    (clip,) = clips.values()
    assert clip.meta["source_frames"] == ["0", "3", "6", "9"]  # [0:270:3] of 12 frames
    assert clip.meta["benchmark"] == {"name": "depthcrafter", "dataset": "scannet", "frames": [0, 270, 3],
                                      "crop": [8, -8, 11, -11], "even_crop": False, "min_depth": 1e-3,
                                      "max_depth": 10.0}
    out = capsys.readouterr().out
    assert "sequence scene0708_00 of the protocol is missing" in out and "skipped 0 clips; 99 source file(s) or sequence(s)" in out


def test_missing_source_and_bad_bench_options_exit_2(tmp_path: Path, capsys) -> None:
    for argv in (["sintel", str(tmp_path / "nope"), str(tmp_path / "out")],
                 ["scannet", str(tmp_path), str(tmp_path / "out"), "--split", "bench", "--clip-len", "4"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv + ["--no-progress"])
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "--clip-len / --stride do not apply" in err


def test_kubric_dispatches_to_convert_kubric(tmp_path: Path, monkeypatch) -> None:
    from tools import convert_kubric

    seen = []
    monkeypatch.setattr(convert_kubric, "main", lambda argv: seen.append(argv))
    assert run(["kubric", str(tmp_path), str(tmp_path / "out"), "--val-count", "1"]) == 0
    assert seen == [[str(tmp_path), str(tmp_path / "out"), "--val-count", "1"]]


def test_depth_maps_and_frames_share_the_stored_size(tmp_path: Path) -> None:
    make_scannet(tmp_path / "src", "scene0002_00", [0, 1], colour_hw=(3 * H, 3 * W))
    convert("scannet", tmp_path / "src", tmp_path / "out", "--size", str(2 * H), str(2 * W))
    (clip,) = read_clips(tmp_path / "out" / "all").values()
    assert clip.decode_frames().shape[1:3] == (2 * H, 2 * W) and clip.depth.shape[1:] == (2 * H, 2 * W)
    assert not clip.meta["frames_lossless"]


def test_rerun_after_more_data_converts_only_the_new_sequences(tmp_path: Path, capsys) -> None:
    make_sintel(tmp_path / "src", {"alley_1": 2})
    convert("sintel", tmp_path / "src", tmp_path / "out")
    make_sintel(tmp_path / "src", {"alley_1": 2, "cave_2": 2})
    capsys.readouterr()
    convert("sintel", tmp_path / "src", tmp_path / "out")
    out = capsys.readouterr().out
    assert "wrote 1 clips" in out and "kept 1 complete shards" in out
    assert sorted(read_clips(tmp_path / "out" / "training")) == ["sintel_alley_1_000000", "sintel_cave_2_000000"]
