"""TAP-Vid pickle readers: the three official layouts, coordinates, query sampling, DataModule."""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.tapvid import (
    TapVidDataModule,
    TapVidDataset,
    sample_queries_first,
    sample_queries_strided,
)
from metrics.tapvid import TapVidMetrics

T_FRAMES, HEIGHT, WIDTH = 11, 24, 40

# Three tracks over 11 frames (True = occluded, as in the files).
#   track 0: visible from frame 2 on; track 1: never visible; track 2: visible at 0 and 5 only.
OCCLUDED = np.ones((3, T_FRAMES), dtype=bool)
OCCLUDED[0, 2:] = False
OCCLUDED[2, [0, 5]] = False


def _points() -> np.ndarray:
    """(3, T, 2) normalised raster points; track 0 sits at the image centre (0.5, 0.5)."""
    points = np.zeros((3, T_FRAMES, 2), dtype=np.float32)
    points[0] = 0.5
    points[1] = 0.25
    points[2, :, 0] = np.linspace(0.0, 1.0, T_FRAMES)  # x moves across the frame
    points[2, :, 1] = 0.75
    return points


def _video_record(rng: np.random.Generator, jpeg: bool = False) -> dict:
    video = rng.integers(0, 256, size=(T_FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    if jpeg:
        encoded = []
        for frame in video:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG")
            encoded.append(buffer.getvalue())
        video = np.array(encoded, dtype=object)
    return {"video": video, "points": _points(), "occluded": OCCLUDED.copy()}


def _write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


@pytest.fixture()
def davis_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    videos = {name: _video_record(rng) for name in ("bear", "cows", "dogs")}
    return _write(tmp_path / "tapvid_davis.pkl", videos)


def test_hand_example_query_sampling() -> None:
    points = np.arange(3 * T_FRAMES * 2, dtype=np.float64).reshape(3, T_FRAMES, 2)
    queries, tracks, occluded = sample_queries_first(points, OCCLUDED)
    # Track 1 is never visible and is dropped; track 0 first visible at 2, track 2 at 0.
    np.testing.assert_array_equal(queries, [[2, *points[0, 2]], [0, *points[2, 0]]])
    np.testing.assert_array_equal(tracks, points[[0, 2]])
    np.testing.assert_array_equal(occluded, OCCLUDED[[0, 2]])

    queries, tracks, occluded = sample_queries_strided(points, OCCLUDED)
    # Frames 0, 5, 10: at 0 only track 2; at 5 tracks 0 and 2; at 10 track 0.
    np.testing.assert_array_equal(queries[:, 0], [0, 5, 5, 10])
    np.testing.assert_array_equal(queries[:, 1:], points[[2, 0, 2, 0], [0, 5, 5, 10]])
    np.testing.assert_array_equal(tracks, points[[2, 0, 2, 0]])  # whole tracks duplicated
    np.testing.assert_array_equal(occluded, OCCLUDED[[2, 0, 2, 0]])


def test_davis_item_shapes_coordinates_and_visibility(davis_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="datamodules.tapvid"):
        dataset = TapVidDataset(davis_file, "davis", query_mode="first")
    assert "data-only unpickler" in caplog.text and str(davis_file) in caplog.text
    assert len(dataset) == 3
    item = dataset[0]
    assert item["name"] == "bear" and item["query_mode"] == "first"
    assert item["video"].shape == (T_FRAMES, 3, 256, 256) and item["video"].dtype == torch.float32
    assert 0 <= float(item["video"].min()) and float(item["video"].max()) <= 255
    assert item["queries"].shape == (2, 3) and item["tracks"].shape == (T_FRAMES, 2, 2)
    assert item["visible"].dtype == torch.bool and item["visible"].shape == (T_FRAMES, 2)
    assert item["valid"].all() and item["valid"].shape == (T_FRAMES, 2)
    # Normalised (0.5, 0.5) -> 256 * 0.5 - 0.5 = 127.5 with pixel centres at integers.
    assert torch.equal(item["tracks"][:, 0], torch.full((T_FRAMES, 2), 127.5))
    assert item["queries"][0].tolist() == [2.0, 127.5, 127.5]
    # x from 0 to 1 -> -0.5 to 255.5; query of track 2 at frame 0 is x = -0.5, y = 0.75*256-0.5.
    assert item["tracks"][0, 1].tolist() == [-0.5, 191.5]
    assert item["tracks"][-1, 1].tolist() == [255.5, 191.5]
    # occluded -> visible flip.
    assert torch.equal(item["visible"], torch.from_numpy(~OCCLUDED[[0, 2]].T))


def test_rgb_stacking_list_and_kinetics_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb_file = _write(tmp_path / "rgb" / "tapvid_rgb_stacking.pkl", [_video_record(rng)])
    rgb = TapVidDataset(rgb_file.parent, "rgb_stacking", query_mode="strided", resize=(32, 48))
    item = rgb[0]
    assert item["name"] == "tapvid_rgb_stacking_0000"
    assert item["video"].shape == (T_FRAMES, 3, 32, 48)
    assert item["queries"][:, 0].tolist() == [0, 5, 5, 10]
    assert item["tracks"].shape == (T_FRAMES, 4, 2)
    assert item["tracks"][0, 1].tolist() == [0.5 * 48 - 0.5, 0.5 * 32 - 0.5]

    records = [_video_record(rng, jpeg=True) for _ in range(2)]
    _write(tmp_path / "kinetics" / "0001_of_0010.pkl", {"clip_b": records[1]})  # dict form
    _write(tmp_path / "kinetics" / "0000_of_0010.pkl", [records[0]])
    kinetics = TapVidDataset(tmp_path / "kinetics", "kinetics", query_mode="first", resize=(HEIGHT, WIDTH))
    assert [kinetics[i]["name"] for i in range(2)] == ["0000_of_0010_0000", "clip_b"]
    item = kinetics[1]
    # No resize at native size: the decoded JPEG frames come through unchanged.
    decoded = np.array(Image.open(io.BytesIO(records[1]["video"][3])).convert("RGB"))
    assert torch.equal(item["video"][3], torch.from_numpy(decoded).permute(2, 0, 1).float())
    assert len(TapVidDataset(tmp_path / "kinetics", "kinetics", max_videos=1)) == 1


def test_bad_paths_and_structures_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TapVidDataModule(tmp_path / "nowhere.pkl")
    with pytest.raises(FileNotFoundError, match="tapvid_davis.pkl"):
        TapVidDataset(tmp_path, "davis")
    with pytest.raises(FileNotFoundError, match="_of_0010"):
        TapVidDataset(tmp_path, "kinetics")
    record = _video_record(np.random.default_rng(2))
    del record["occluded"]
    bad = _write(tmp_path / "bad.pkl", {"bear": record})
    with pytest.raises(ValueError, match=r"bad\.pkl, video 'bear': missing key 'occluded'"):
        TapVidDataset(bad, "davis")
    short = _video_record(np.random.default_rng(3))
    short["video"] = short["video"][:-1]
    with pytest.raises(ValueError, match="short.pkl.*10 frames"):
        TapVidDataset(_write(tmp_path / "short.pkl", [short]), "rgb_stacking")
    with pytest.raises(ValueError, match="top level"):
        TapVidDataset(_write(tmp_path / "str.pkl", "not videos"), "davis")


def test_datamodule_val_dataloader_batch(davis_file: Path) -> None:
    dm = TapVidDataModule(davis_file.parent, dataset="davis", query_mode="strided", max_videos=2)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert len(batches) == 2
    batch = batches[0]
    assert batch["video"].shape == (1, T_FRAMES, 3, 256, 256)
    assert batch["queries"].shape == (1, 4, 3)
    assert batch["tracks"].shape == (1, T_FRAMES, 4, 2)
    assert batch["visible"].shape == batch["valid"].shape == (1, T_FRAMES, 4)
    assert batch["name"] == ["bear"] and batch["query_mode"] == ["strided"]
    assert len(list(dm.test_dataloader())) == 2

    # Under DDP each rank gets its own videos, none repeated (torch's sampler would pad rank 1
    # with a second "bear").
    dm = TapVidDataModule(davis_file, dataset="davis")
    names = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": rank})
        names.append([b["name"][0] for b in dm.val_dataloader()])
    assert names == [["bear", "dogs"], ["cows"]]
    dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 4, "rank": 0})
    with pytest.raises(ValueError, match="3 videos for 4 ranks"):
        dm.val_dataloader()


@pytest.mark.parametrize("query_mode", ["first", "strided"])
def test_batches_feed_the_metric(davis_file: Path, query_mode: str) -> None:
    # Ground truth as the prediction scores perfectly in both modes.
    metric = TapVidMetrics(query_mode=query_mode)
    for batch in TapVidDataModule(davis_file, query_mode=query_mode).val_dataloader():
        metric.update(batch["tracks"], batch["visible"], batch["tracks"], batch["visible"], batch["queries"])
    assert all(float(v) == 1.0 for v in metric.compute().values())
    assert int(metric.num_videos) == 3


def test_robotap_splits_merge_and_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    folder = tmp_path / "tapvid_robotap"
    _write(folder / "robotap_split1.pkl", {"gripper": _video_record(rng), "stack": _video_record(rng)})
    _write(folder / "robotap_split0.pkl", {"arm": _video_record(rng)})
    _write(folder / "unrelated.pkl", {"other": _video_record(rng)})  # not a split file: ignored
    dataset = TapVidDataset(folder, "robotap", query_mode="first", resize=(HEIGHT, WIDTH))
    # Splits read in name order; the dict keys are the video names, as for DAVIS.
    assert [dataset[i]["name"] for i in range(len(dataset))] == ["arm", "gripper", "stack"]
    item = dataset[1]
    assert item["tracks"].shape == (T_FRAMES, 2, 2) and item["queries"][:, 0].tolist() == [2.0, 0.0]
    assert torch.equal(item["visible"], torch.from_numpy(~OCCLUDED[[0, 2]].T))

    _write(folder / "robotap_split2.pkl", {"stack": _video_record(rng)})
    with pytest.raises(ValueError, match=r"'stack' appears in both .*robotap_split1\.pkl and .*robotap_split2\.pkl"):
        TapVidDataset(folder, "robotap")
    with pytest.raises(FileNotFoundError, match=r"robotap_split\*\.pkl"):
        TapVidDataset(tmp_path, "robotap")

    from train import load_config

    monkeypatch.setenv("TAPVID_ROBOTAP", str(folder))
    _, cfg = load_config(["validate", "data=tapvid_robotap"])
    assert cfg.data.kind == "tapvid" and cfg.data.dataset == "robotap" and cfg.data.path == str(folder)
