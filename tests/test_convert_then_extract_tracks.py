"""Converted clips (lossless PNG frames, cameras, no tracks) keep everything through tools/extract_tracks.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.cotracker3_predictor import build_tracker_predictor
from tests.convert_fixtures import make_sintel, read_clips
from tests.test_depth_extract_tracks import TINY_TRACKER, tracker_ckpt  # noqa: F401 (fixture)
from tools import extract_tracks
from tools.convert import run


def test_tracks_are_added_and_frames_cameras_and_provenance_kept(tmp_path: Path, tracker_ckpt) -> None:  # noqa: F811
    make_sintel(tmp_path / "src", {"alley_1": 4})
    assert run(["sintel", str(tmp_path / "src"), str(tmp_path / "conv"), "--workers", "1", "--no-progress"]) == 0
    (source,) = read_clips(tmp_path / "conv" / "training").values()
    assert source.tracks.shape == (4, 0, 2)
    predictor = build_tracker_predictor({"variant": "offline", **TINY_TRACKER}, tracker_ckpt, iters=1)
    extract_tracks.extract(str(tmp_path / "conv" / "training"), tmp_path / "tracks", predictor, num_tracks=8,
                           accelerator="cpu", devices=1, num_workers=0)
    (clip,) = read_clips(tmp_path / "tracks").values()
    assert clip.tracks.shape == (4, 8, 2) and clip.jpeg_frames == source.jpeg_frames  # PNG bytes kept
    assert np.array_equal(clip.intrinsics, source.intrinsics) and np.array_equal(clip.cam_to_world, source.cam_to_world)
    assert clip.meta["source_frames"] == source.meta["source_frames"] and clip.meta["frames_lossless"]
