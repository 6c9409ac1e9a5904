"""The video depth benchmark end to end: original-format datasets -> tools/convert.py --split bench ->
train.py validate (experiment=depth_benchmark_depthcrafter, a tiny random video depth model) -> one table.

The expected numbers are computed here independently: each protocol video is cropped by the
protocol table's rules, predicted by ``tools/predict.py``'s code path (``depth_video`` on a PNG frame
folder: windows, the on-the-fly tracker seeded per window, the stitcher) and scored by
``VideoDepthBenchmarkMetric`` directly.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

import train
from configs.loader import ConfigError, override_args
from datamodules.benchmark_videos import BenchmarkVideos, inference_input_size, protocol_video, set_protocols
from datamodules.depth_benchmarks import NYU_CROP, SCANNET_CROP, benchmark_set
from datamodules.shards import ShardFormatError, expand_shards
from datamodules.video_files import VideoReader
from lightning_modules.depth_benchmark_evaluation import video_disparity, window_tracks
from metrics.depth_benchmark import VideoDepthBenchmarkMetric
from models.cotracker3_predictor import TrackPreprocessor, build_tracker_predictor
from models.video_windows import window_ranges
from tests.convert_fixtures import make_bonn, make_kitti, make_scannet, make_sintel, read_clips, save_rgb
from tests.test_depth_extract_tracks import TINY_TRACKER
from tools.convert import run as convert
from tools.predict_video import depth_video
from train import load_config

REPO = Path(__file__).resolve().parents[1]
SETS = ["sintel", "scannet", "kitti", "bonn", "nyuv2", "scannet_tae"]
NUM_TRACKS = 8


def _convert(*args: object) -> None:
    assert convert([*map(str, args), "--workers", "1", "--no-progress"]) == 0


def write_nyu_mat(path: Path, count: int, hw: tuple[int, int]) -> None:
    """The first `count` labelled images of nyu_depth_v2_labeled.mat (h5py's transposed MATLAB order):
    the converter writes the test images among them (1, 2, 9, 14-18 for 20) and lists the rest missing."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    h, w = hw
    depth = rng.uniform(0.5, 12.0, (count, w, h)).astype(np.float32)  # some beyond the 10 m cap
    with h5py.File(path, "w") as f:
        f["images"] = rng.integers(0, 256, (count, 3, w, h), dtype=np.uint8)
        f["depths"], f["rawDepths"] = depth, depth


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every set of the depthcrafter experiment, converted from tiny original-format datasets, and a
    tiny CoTracker3 checkpoint. Frame sizes leave something after each protocol crop."""
    root = tmp_path_factory.mktemp("bench")
    src, out = root / "src", root / "shards"
    make_sintel(src / "sintel", {"alley_1": 7, "cave_2": 3})  # alley_1 is longer than the 4-frame window
    make_scannet(src / "scannet", "scene0707_00", list(range(13)), colour_hw=(24, 32), depth_hw=(24, 32))
    make_kitti(src / "kitti", "2011_09_26_drive_0002_sync", 9, range(2, 9), hw=(9, 15))  # odd: the even crop acts
    make_bonn(src / "bonn", "rgbd_bonn_balloon2", [f"{1548266400 + i}.5" for i in range(35)], hw=(9, 13))
    write_nyu_mat(root / "nyu_depth_v2_labeled.mat", 20, (60, 80))
    _convert("sintel", src / "sintel", out / "sintel", "--split", "bench")
    _convert("scannet", src / "scannet", out / "scannet", "--split", "bench")
    _convert("scannet", src / "scannet", out / "scannet", "--split", "bench", "--benchmark", "tae")
    _convert("kitti", src / "kitti", out / "kitti", "--split", "bench")
    _convert("bonn", src / "bonn", out / "bonn", "--split", "bench")
    _convert("nyuv2", root / "nyu_depth_v2_labeled.mat", out / "nyuv2", "--split", "bench")
    from models.cotracker3 import CoTrackerThree, CoTrackerThreeConfig

    torch.manual_seed(0)
    tracker = root / "tiny_cotracker3.pth"
    torch.save(CoTrackerThree(CoTrackerThreeConfig(variant="offline", **TINY_TRACKER)).state_dict(), tracker)
    return {"root": root, "shards": out, "tracker": tracker}


def bench_args(bench: dict, run_dir: Path, tracker: bool = True, **extra: object) -> list[str]:
    args = ["validate", "experiment=depth_benchmark_depthcrafter", "model=depth_anything_tiny",
            f"data.root={bench['shards']}", "data.input_size=28", "data.window=4", "data.overlap=2",
            "data.num_workers=0", "logger=csv", f"run_dir={run_dir}", "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu"]
    if tracker:
        args += [f"model.tracker.checkpoint={bench['tracker']}", f"model.tracker.num_tracks={NUM_TRACKS}",
                 "model.tracker.iters=1"]
        args += [f"model.tracker.arch.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in TINY_TRACKER.items()]
    return [args[0], *override_args(args[1:], [f"{k}={v}" for k, v in extra.items()])]  # args[0]: the command


def trained_checkpoint(args: list[str], path: Path) -> Path:
    """The module train.py builds for `args` (same seed), with non-zero Tracktention output projections
    (fresh ones are zero: the identity), saved as a Lightning checkpoint for ckpt=."""
    _, cfg = load_config(args)
    L.seed_everything(cfg.seed, workers=True)
    module = train.build_module(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if name.startswith("tracktention.") and name.endswith("out_proj.weight"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    torch.save({"state_dict": module.state_dict(), "pytorch-lightning_version": L.__version__, "global_step": 0}, path)
    return path


def load_module(args: list[str], ckpt: Path | None) -> L.LightningModule:
    _, cfg = load_config(args)
    cfg.model.tracker.checkpoint = None  # the test builds its own tracker
    module = train.build_module(cfg)
    if ckpt is not None:
        module.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    return module.eval()


def parse_table(text: str) -> dict[str, list[str]]:
    lines = text[text.index("Video depth benchmark:"):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("dataset"))
    rows = {}
    for line in lines[start + 2:]:
        cells = line.split()
        if len(cells) != 6:
            break
        rows[cells[0]] = cells[1:]
    return rows


def expected_results(bench: dict, module: L.LightningModule, tracks: TrackPreprocessor | None, tmp: Path
                     ) -> dict[str, dict[str, float]]:
    """Each set scored directly: the protocol's crop done here, prediction by tools/predict.py's code."""
    out = {}
    for name in SETS:
        benchmark, dataset = ("tae", "scannet") if name == "scannet_tae" else ("depthcrafter", name)
        bset = benchmark_set(benchmark, dataset)
        metric = VideoDepthBenchmarkMetric(bset.max_depth, "disparity", crop=None if bset.crop_input else SCANNET_CROP,
                                           compute_tae=benchmark == "tae")
        for key, clip in sorted(read_clips(bench["shards"] / dataset / benchmark).items()):
            frames, depth, valid = clip.decode_frames().numpy(), clip.depth, clip.depth_valid
            H, W = depth.shape[1:]
            rows, cols = slice(0, H), slice(0, W)
            if dataset == "scannet" and bset.crop_input:
                rows, cols = slice(8, H - 8), slice(11, W - 11)
            if dataset == "nyuv2":
                rows, cols = slice(NYU_CROP[0], NYU_CROP[1]), slice(NYU_CROP[2], NYU_CROP[3])
            if dataset in ("kitti", "bonn"):
                rows, cols = slice(0, H // 2 * 2), slice(0, W // 2 * 2)
            folder = tmp / name / key
            for t, frame in enumerate(frames[:, rows, cols]):
                save_rgb(folder / f"{t:04d}.png", frame)
            h, w = frames[0, rows, cols].shape[:2]
            module.model.config.input_size = inference_input_size(h, w, 28)
            paths = depth_video(folder, tmp / "pred" / name, module.model, tracks=tracks, window=4, overlap=2,
                                npz=True, mp4=False, npz_dtype="float32", seed=0)
            disparity = torch.from_numpy(np.load(paths["npz"])["disparity"])
            cams = {}
            if benchmark == "tae":
                cams = {"intrinsics": torch.from_numpy(clip.intrinsics),
                        "cam_to_world": torch.from_numpy(clip.cam_to_world)}
            metric.update(key, disparity, torch.from_numpy(depth[:, rows, cols].copy()),
                          torch.from_numpy(valid[:, rows, cols].copy()), **cams)
        out[name] = {k: float(v) for k, v in metric.compute().items()}
    return out


def check_against(results: list[dict], table: str, expected: dict[str, dict[str, float]]) -> None:
    rows = parse_table(table)
    assert list(rows) == SETS
    logged = results[0]
    for name, values in expected.items():
        assert logged[f"val/{name}/num_videos"] == values["num_videos"] > 0
        assert rows[name][1].startswith(f"{int(values['num_videos'])}/")
        for key, column in (("abs_rel", 2), ("delta1", 3), ("tae", 4)):
            if key not in values:
                assert rows[name][column] == "-" and f"val/{name}/{key}" not in logged
                continue
            # float32 logging, and float summation order: the same numbers up to 1e-5 relative
            assert logged[f"val/{name}/{key}"] == pytest.approx(values[key], rel=1e-5, abs=1e-6)
            assert abs(float(rows[name][column]) - values[key]) <= 5e-4 + 1e-6  # printed to 3 decimals


# ---------------------------------------------------------------------------------------------- end to end
def test_validate_prints_a_row_per_dataset_equal_to_the_metric_on_the_same_predictions(bench, tmp_path, capsys):
    args = bench_args(bench, tmp_path / "run")
    ckpt = trained_checkpoint(args, tmp_path / "video_model.ckpt")
    results = train.run([*args, f"ckpt={ckpt}"])
    table = capsys.readouterr().out
    assert "tracks CoTracker3 on the fly (model.tracker.checkpoint)" in table
    assert "inference at shorter side 28" in table and "windows of 4 frames, overlap 2" in table

    module = load_module(args, ckpt)
    predictor = build_tracker_predictor({"variant": "offline", **TINY_TRACKER}, bench["tracker"], iters=1)
    expected = expected_results(bench, module, TrackPreprocessor(predictor, NUM_TRACKS), tmp_path / "direct")
    check_against(results, table, expected)
    assert expected["nyuv2"]["num_videos"] == 8 and expected["sintel"]["num_videos"] == 2


def test_the_image_model_goes_through_the_same_path_without_tracks(bench, tmp_path, capsys):
    image_args = bench_args(bench, tmp_path / "run", tracker=False, **{"model.arch.tracktention.enabled": "false"})
    _, cfg = load_config(image_args)
    L.seed_everything(0)
    weights = tmp_path / "depth_anything_v2_tiny.pth"  # the official layout: the image model's keys
    torch.save(train.build_module(cfg).model.image.state_dict(), weights)
    results = train.run([*image_args, f"model.init_from={weights}"])
    table = capsys.readouterr().out
    assert "tracks none (image model, frame by frame)" in table
    module = load_module([*image_args, f"model.init_from={weights}"], None)
    check_against(results, table, expected_results(bench, module, None, tmp_path / "direct"))


# ---------------------------------------------------------------------------------------------- pieces
def test_windowed_evaluation_of_a_long_video_equals_the_stitched_prediction(bench, tmp_path):
    args = bench_args(bench, tmp_path / "run")
    module = load_module(args, trained_checkpoint(args, tmp_path / "m.ckpt"))
    (protocol,) = [p for p in set_protocols(load_config(args)[1].data) if p.name == "sintel"]
    clip = read_clips(bench["shards"] / "sintel" / "depthcrafter")["sintel_alley_1_000000"]
    video = protocol_video(clip, protocol)
    assert video["video"].shape[0] == 7 and len(window_ranges(7, 4, 2)) == 3
    predictor = build_tracker_predictor({"variant": "offline", **TINY_TRACKER}, bench["tracker"], iters=1)
    tracker = TrackPreprocessor(predictor, NUM_TRACKS)
    with torch.no_grad():
        ours = torch.cat(list(video_disparity(module.model, video["video"], 4, 2, 28,
                                              window_tracks(module.model, tracker, video, seed=5))))
    for t, frame in enumerate(video["video"].permute(0, 2, 3, 1).numpy()):
        save_rgb(tmp_path / "frames" / f"{t:03d}.png", frame)
    module.model.config.input_size = 28
    paths = depth_video(tmp_path / "frames", tmp_path / "pred", module.model, tracks=tracker, window=4, overlap=2,
                        mp4=False, npz_dtype="float32", seed=5)
    predicted = torch.from_numpy(np.load(paths["npz"])["disparity"])
    assert ours.shape == predicted.shape == (7, 8, 12)
    assert torch.allclose(ours, predicted, rtol=1e-6, atol=1e-7)
    # Stitching mattered: the three windows alone (no alignment, no cross-fade) differ from it.
    assert not torch.allclose(ours[2:4], module.model(video["video"][2:6].float()[None], *tracker(
        video["video"][2:6].float()[None], torch.Generator().manual_seed(6))[:2], input_size=28)[0, :2, 0])


def test_window_ranges_cut_like_the_video_reader(tmp_path):
    for t in range(6):
        save_rgb(tmp_path / f"{t}.png", np.full((2, 2, 3), t, np.uint8))
    for length, overlap in ((4, 2), (3, 0), (6, 5), (2, 1), (7, 3)):
        windows = [list(w[:, 0, 0, 0]) for w in VideoReader(tmp_path).windows(length, overlap)]
        assert windows == [list(r) for r in window_ranges(6, length, overlap)], (length, overlap)
    with pytest.raises(ValueError, match="overlap"):
        window_ranges(6, 4, 4)


def test_inference_size_is_video_depth_anythings():
    assert inference_input_size(480, 640) == 518  # 4:3, as is
    assert inference_input_size(436, 1024) == 392  # Sintel: int(518 * 1.777 / 2.349) = 391 -> 28 x 14
    assert inference_input_size(375, 1242) == 280  # KITTI: int(518 * 1.777 / 3.312) = 277 -> 20 x 14
    assert inference_input_size(375, 1242, shrink_wide=False) == 518
    assert inference_input_size(720, 1280) == 518  # 16:9 = 1.778 is not wider than 1.78


def test_every_benchmark_config_points_at_the_converters_output(monkeypatch):
    monkeypatch.setenv("DEPTH_BENCH_ROOT", "/bench")
    configs = sorted(p.stem for p in (REPO / "configs" / "data").glob("depth_bench_*.yaml"))
    assert len(configs) == 8
    for name in configs:
        _, cfg = load_config(["validate", "experiment=depth_benchmark_depthcrafter", f"data={name}"])
        for p in set_protocols(cfg.data):  # tools/convert.py DATASET SRC /bench/DATASET --split bench --benchmark B
            assert p.shards == f"/bench/{p.bench.dataset}/{p.benchmark}", name
            assert p.tae == (p.benchmark == "tae")
    _, cfg = load_config(["validate", "experiment=depth_benchmark_depthcrafter"])
    assert [p.name for p in set_protocols(cfg.data)] == SETS and cfg.trainer.precision == "32-true"
    _, cfg = load_config(["validate", "experiment=depth_benchmark_vda500"])
    assert [(p.name, p.benchmark) for p in set_protocols(cfg.data)] == [
        ("sintel", "depthcrafter"), ("scannet_500", "vda500"), ("kitti_500", "vda500"), ("bonn_500", "vda500"),
        ("scannet_tae", "tae")]


def test_protocol_video_crops_frames_ground_truth_cameras_and_tracks(bench):
    (scannet,) = read_clips(bench["shards"] / "scannet" / "depthcrafter").values()
    protocols = {p.name: p for p in set_protocols(load_config(bench_args(bench, Path("/tmp")))[1].data)}
    scannet.tracks = np.array([[[11.0, 8.0], [10.0, 20.0]]] * scannet.num_frames, np.float32)  # inside, outside
    scannet.visible = np.ones((scannet.num_frames, 2), bool)
    video = protocol_video(scannet, protocols["scannet"])
    assert video["video"].shape == (5, 3, 8, 10)  # 24x32 minus [8:-8, 11:-11]; frames [0:270:3] of 13
    assert torch.equal(video["video"], scannet.decode_frames().permute(0, 3, 1, 2)[:, :, 8:16, 11:21])
    assert np.array_equal(video["depth"][:, 0].numpy(), scannet.depth[:, 8:16, 11:21])
    assert torch.equal(video["tracks"][0], torch.tensor([[0.0, 0.0], [-1.0, 12.0]]))
    assert video["visible"][:, 0].all() and not video["visible"][:, 1].any()
    assert "intrinsics" not in video  # no TAE on this set
    (tae,) = read_clips(bench["shards"] / "scannet" / "tae").values()
    video = protocol_video(tae, protocols["scannet_tae"])
    assert video["video"].shape == (3, 3, 24, 32)  # uncropped: the metric crops the prediction; frames 10..12
    assert torch.equal(video["intrinsics"], torch.from_numpy(tae.intrinsics))
    assert protocols["scannet_tae"].metric_crop == SCANNET_CROP and protocols["scannet"].metric_crop is None
    with pytest.raises(ShardFormatError, match=r"converted for another protocol .*'name': 'depthcrafter'"):
        protocol_video(scannet, protocols["scannet_tae"])


def test_videos_are_dealt_to_ranks_and_workers_each_exactly_once(bench):
    (protocol,) = [p for p in set_protocols(load_config(bench_args(bench, Path("/tmp")))[1].data) if p.name == "nyuv2"]
    urls = expand_shards(str(bench["shards"] / "nyuv2" / "depthcrafter"))
    every = [v["video_key"] for v in BenchmarkVideos(urls, protocol)]
    assert len(every) == 8
    for world in (2, 3):
        seen = [[v["video_key"] for v in BenchmarkVideos(urls, protocol, rank, world)] for rank in range(world)]
        assert sorted(sum(seen, [])) == sorted(every)  # all videos, none twice
        assert [len(s) for s in seen] == [len(every[r::world]) for r in range(world)]  # round-robin


def test_user_errors_name_the_fix(bench, tmp_path, monkeypatch):
    monkeypatch.delenv("DEPTH_BENCH_ROOT", raising=False)
    args = [a for a in bench_args(bench, tmp_path / "run") if not a.startswith("data.root=")]
    with pytest.raises(ConfigError, match="data.root is not set.*DEPTH_BENCH_ROOT"):
        train.run(args)
    with pytest.raises(ConfigError, match="untrained model: pass model.init_from=.* or ckpt="):
        train.run(bench_args(bench, tmp_path / "run", **{"data.sets": "[{name: sintel, shards: sintel/depthcrafter}]"}))
    no_tracks = bench_args(bench, tmp_path / "run", tracker=False,
                           **{"data.sets": "[{name: sintel, shards: sintel/depthcrafter}]"})
    ckpt = trained_checkpoint(no_tracks, tmp_path / "m.ckpt")
    with pytest.raises(ConfigError, match="no tracks and the model has Tracktention layers: set model.tracker"):
        train.run([*no_tracks, f"ckpt={ckpt}"])
    with pytest.raises(ConfigError, match=r"data.overlap=4 must be at least 0 and below data.window=4"):
        train.run(bench_args(bench, tmp_path / "run", **{"data.overlap": 4}))
    with pytest.raises(ConfigError, match=r"data.sets\[0\] \(sintel\): benchmark 'tae' has no 'sintel' clips"):
        train.run(bench_args(bench, tmp_path / "run", **{"data.sets": "[{name: sintel, shards: x, benchmark: tae}]"}))


def test_tracks_pre_extracted_into_the_shards_are_used_without_a_tracker(bench, tmp_path, capsys):
    from tools import extract_tracks

    predictor = build_tracker_predictor({"variant": "offline", **TINY_TRACKER}, bench["tracker"], iters=1)
    extract_tracks.extract(str(bench["shards"] / "sintel" / "depthcrafter"), tmp_path / "sintel_tracks", predictor,
                           num_tracks=NUM_TRACKS, accelerator="cpu", devices=1, num_workers=0)
    args = bench_args(bench, tmp_path / "run", tracker=False,
                      **{"data.sets": f"[{{name: sintel, shards: {tmp_path / 'sintel_tracks'}}}]"})
    ckpt = trained_checkpoint(args, tmp_path / "m.ckpt")
    results = train.run([*args, f"ckpt={ckpt}"])
    table = capsys.readouterr().out
    assert "tracks from the shards (tools/extract_tracks.py)" in table
    assert results[0]["val/sintel/num_videos"] == 2 and np.isfinite(results[0]["val/sintel/abs_rel"])


@pytest.mark.slow
def test_two_ddp_processes_give_the_single_process_table(bench, tmp_path):
    """2 CPU processes (gloo): videos dealt round-robin, each evaluated whole on one rank, metrics gathered."""
    sets = "[{name: sintel, shards: sintel/depthcrafter}, {name: nyuv2, shards: nyuv2/depthcrafter}]"
    args = bench_args(bench, tmp_path / "one", **{"data.sets": sets})
    ckpt = trained_checkpoint(args, tmp_path / "m.ckpt")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}

    def table(run_dir: Path, devices: int) -> str:
        argv = [a for a in bench_args(bench, run_dir, **{"data.sets": sets})] + [f"ckpt={ckpt}"]
        argv += [f"trainer.devices={devices}"] + (["trainer.strategy=ddp"] if devices > 1 else [])
        done = subprocess.run([sys.executable, str(REPO / "train.py"), *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert ("MEMBER: 2/2" in done.stderr) == (devices == 2)  # really two processes
        return done.stdout[done.stdout.index("Video depth benchmark:"):]

    one, two = table(tmp_path / "one", 1), table(tmp_path / "two", 2)
    assert parse_table(one) == parse_table(two)
    assert re.search(r"nyuv2 +depthcrafter +8/654", two)
