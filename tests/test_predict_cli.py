"""tools/predict.py: queries, streaming tracking, window stitching, and each command end to end on tiny models."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
from datamodules.query_files import QueryError, check_queries, parse_query, read_query_file
from datamodules.video_files import Mp4Writer, VideoReader, read_png16
from models.cotracker3 import CoTrackerThree, CoTrackerThreeConfig
from models.cotracker3_predictor import CoTrackerThreePredictor
from models.cotracker3_stream_predictor import StreamingTrackPredictor
from models.video_windows import WindowStitcher, fit_scale_shift
from tests.tiny_run import tiny_run_args
from tools import predict

REPO = Path(__file__).resolve().parents[1]
TINY_TRACKER = dict(window_len=4, latent_dim=8, corr_levels=2, corr_radius=1, corr_hidden_dim=16, corr_out_dim=8,
                    hidden_size=16, num_heads=2, time_depth=1, space_depth=1, num_virtual_tracks=4, posenc_freqs=2,
                    model_resolution=(32, 32))
T, H, W = 11, 24, 32  # the test video


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with Mp4Writer(path, fps=10) as writer:
        writer.write((rng.random((T, H, W, 3)) * 255).astype(np.uint8))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Tiny CoTracker3 state dicts in the official layout."""
    root = tmp_path_factory.mktemp("weights")
    paths = {}
    for variant in ("online", "offline"):
        torch.manual_seed(0)
        paths[variant] = root / f"tiny_{variant}.pth"
        torch.save(CoTrackerThree(CoTrackerThreeConfig(variant=variant, **TINY_TRACKER)).state_dict(), paths[variant])
    return paths


def fit_one_step(args: list[str]) -> Path:
    trainer = train.run(args + ["trainer.max_steps=1", "trainer.val_check_interval=1000", "checkpoint.monitor=null"])
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


def tiny_clip_model_args(tmp: Path, experiment: str, size: int) -> list[str]:
    return [f"experiment={experiment}", "model.init_from=null", f"run_dir={tmp / 'run'}", "logger=csv",
            f"data.synthetic.cache_dir={tmp / 'cache'}", f"data.synthetic.height={size}",
            f"data.synthetic.width={size}", "data.synthetic.num_frames=4", "data.synthetic.num_tracks=16",
            "data.synthetic.num_train_clips=2", "data.synthetic.num_val_clips=1", "data.clip_len=4",
            "data.num_tracks=8", "data.batch_size=1", "data.num_workers=0", "data.shuffle_buffer=1",
            "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def tracker_ckpt(tmp_path_factory) -> Path:
    return fit_one_step(tiny_run_args(tmp_path_factory.mktemp("tracker_run")))


@pytest.fixture(scope="module")
def depth_ckpt(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("depth_run")
    return fit_one_step(tiny_clip_model_args(tmp, "depth_anything_tiny_synthetic", 28) + ["model.arch.img_size=28"])


def tracker_flags(weights: dict[str, Path], variant: str = "offline") -> list[str]:
    return ["--tracker-weights", str(weights[variant]), "--tracker-variant", variant,
            "--tracker-arch", json.dumps(TINY_TRACKER), "--num-tracks", "8"]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = predict.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def mp4_frames(path: Path) -> np.ndarray:
    return np.concatenate(list(VideoReader(path).chunks(64)))


# ---------------------------------------------------------------------- queries
def test_query_strings_and_files(tmp_path):
    assert parse_query("0,12.5,30") == (0.0, 12.5, 30.0)
    assert parse_query(" 3  4.5, 6 ") == (3.0, 4.5, 6.0)
    with pytest.raises(QueryError, match="three numbers"):
        parse_query("1,2")
    text = tmp_path / "q.txt"
    text.write_text("# t x y\n0 1.5 2\n\n4,10,20  # second\n")
    np.testing.assert_array_equal(read_query_file(text), [[0, 1.5, 2], [4, 10, 20]])
    np.save(tmp_path / "q.npy", np.array([[2, 3, 4]], dtype=np.float64))
    np.testing.assert_array_equal(read_query_file(tmp_path / "q.npy"), [[2, 3, 4]])
    text.write_text("0 1 2\n1 x 2\n")
    with pytest.raises(QueryError, match="line 2"):
        read_query_file(text)
    np.save(tmp_path / "bad.npy", np.zeros((3, 2)))
    with pytest.raises(QueryError, match=r"shape \(N, 3\)"):
        read_query_file(tmp_path / "bad.npy")
    with pytest.raises(QueryError, match="integers >= 0"):
        check_queries(np.array([[1.5, 0, 0]]), "cli")
    with pytest.raises(QueryError, match="outside the 32x24 frame"):
        check_queries(np.array([[0, 40.0, 3]]), "cli", (24, 32))


# ---------------------------------------------------------------------- model-level pieces
def test_streaming_predictor_equals_the_in_memory_predictor():
    torch.manual_seed(0)
    model = CoTrackerThree(CoTrackerThreeConfig(variant="online", **TINY_TRACKER)).double().eval()
    predictor = CoTrackerThreePredictor(model, iters=2, support_grid_size=2)
    video = (torch.rand(1, 13, 3, 20, 28, dtype=torch.float64) * 255).round()
    queries = torch.tensor([[0, 5.0, 7.0], [2, 20, 13], [6, 27, 0], [0, 14, 19]], dtype=torch.float64)

    def streamed(backward: bool, chunk: int):
        stream = StreamingTrackPredictor(predictor, (20, 28), queries, backward_tracking=backward)
        for t in range(0, 13, chunk):
            stream.push(video[0, t:t + chunk])
        return stream.finish()

    forward = streamed(False, 3)
    reference = predictor(video, queries[None], backward_tracking=False)
    torch.testing.assert_close(forward.tracks, reference.tracks[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(forward.vis, reference.vis[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(forward.conf, reference.conf[0], rtol=0, atol=1e-12)
    # The flags wherever the score is not within rounding of the threshold (there either way is right).
    assert predictor.visibility_rule == "vis_conf"
    decided = (reference.vis[0] * reference.conf[0] - predictor.threshold).abs() > 1e-9
    assert torch.equal(forward.visible[decided], reference.visible[0][decided])
    # Backward tracking reruns frames 0..6 (the last query frame) reversed: before each query's
    # frame it equals the in-memory predictor's backward pass on that part of the video.
    both = streamed(True, 5)
    cut = predictor(video[:, :7], queries[None], backward_tracking=True)
    before = torch.arange(7).view(-1, 1) < queries[:, 0].view(1, -1)
    torch.testing.assert_close(both.tracks[:7][before], cut.tracks[0][before], rtol=0, atol=1e-12)
    after = ~torch.cat([before, torch.zeros(6, 4, dtype=torch.bool)])
    torch.testing.assert_close(both.tracks[after], forward.tracks[after], rtol=0, atol=1e-12)


def test_window_stitcher_recovers_one_scale_across_windows():
    truth = torch.rand(10, 4, 5) + 0.5
    stitcher = WindowStitcher(overlap=2, align_scale_shift=True)
    # windows [0, 5), [3, 8), [6, 10), each with its own affine-invariant scale and shift
    out = [stitcher.add(truth[0:5] * 2.0 + 1.0), stitcher.add(truth[3:8] * 0.5 - 0.2),
           stitcher.add(truth[6:10] * 3.0 + 0.7), stitcher.finish()]
    assert [len(o) for o in out] == [3, 3, 2, 2]  # frames leave as soon as no later window can change them
    torch.testing.assert_close(torch.cat(out), truth * 2.0 + 1.0, rtol=1e-5, atol=1e-5)
    scale, shift = fit_scale_shift(truth, truth * 4 - 1)
    assert float(scale) == pytest.approx(4.0) and float(shift) == pytest.approx(-1.0)


# ---------------------------------------------------------------------- commands end to end
def test_track_from_a_training_checkpoint_with_a_grid(video, tracker_ckpt, tmp_path, capsys):
    code, out, err = run_cli(["track", "--video", str(video), "--ckpt", str(tracker_ckpt), "--grid", "3",
                              "--grid-frame", "2", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    with np.load(tmp_path / "clip_tracks.npz") as result:
        assert result["tracks"].shape == (T, 9, 2) and result["visible"].shape == (T, 9)
        assert result["visible"].dtype == bool and result["fps"] == 10
        queries = result["queries"]
        assert queries.shape == (9, 3) and (queries[:, 0] == 2).all()
        np.testing.assert_allclose(result["tracks"][2], queries[:, 1:], atol=1e-5)  # tracks pass through their query
        assert np.isfinite(result["tracks"]).all()
    overlay = mp4_frames(tmp_path / "clip_tracks.mp4")
    assert overlay.shape == (T, H, W, 3)
    assert "clip_tracks.npz" in out


def test_track_from_official_weights_with_cli_queries_on_a_frame_folder(video, weights, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(mp4_frames(video)):
        Image.fromarray(frame).save(folder / f"{i:04d}.jpg")
    argv = ["track", "--video", str(folder), "--official", "cotracker3", "--weights", str(weights["online"]),
            "--arch", json.dumps(TINY_TRACKER), "--iters", "1", "--query", "0,3,4", "--query", "6,20.5,10",
            "--out", str(tmp_path / "out")]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    with np.load(tmp_path / "out" / "frames_tracks.npz") as result:
        tracks, visible = result["tracks"], result["visible"]
    assert tracks.shape == (T, 2, 2) and visible.shape == (T, 2)
    np.testing.assert_allclose(tracks[[0, 6], [0, 1]], [[3, 4], [20.5, 10]], atol=1e-5)
    assert visible[0, 0] and visible[6, 1]
    assert np.isfinite(tracks).all()  # frames before the second query come from backward tracking
    assert not list((tmp_path / "out").glob("tracklight-frames-*"))  # the backward frame store is removed
    assert len(mp4_frames(tmp_path / "out" / "frames_tracks.mp4")) == T


def test_depth_from_a_training_checkpoint_with_a_tracker(depth_ckpt, weights, tmp_path, capsys):
    rng = np.random.default_rng(1)
    path = tmp_path / "depth_in.mp4"
    with Mp4Writer(path, fps=8) as writer:
        writer.write((rng.random((9, 28, 42, 3)) * 255).astype(np.uint8))
    argv = ["depth", "--video", str(path), "--ckpt", str(depth_ckpt), "--window", "4", "--overlap", "1", "--png",
            "--out", str(tmp_path / "out"), *tracker_flags(weights)]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    out = tmp_path / "out"
    with np.load(out / "depth_in_depth.npz") as result:
        disparity = result["disparity"]
    assert disparity.shape == (9, 28, 42) and disparity.dtype == np.float16 and np.isfinite(disparity).all()
    meta = json.loads((out / "depth_in_depth.json").read_text())
    pngs = sorted((out / "depth_in_depth").glob("*.png"))
    assert len(pngs) == 9 and meta["frames"] == 9
    png = read_png16(pngs[4]).astype(np.float64) / meta["png_scale"]  # PNG = disparity x png_scale
    np.testing.assert_allclose(png, disparity[4], rtol=2e-3, atol=2 / meta["png_scale"])
    assert mp4_frames(out / "depth_in_depth.mp4").shape == (9, 28, 42, 3)
    # Without a tracker a Tracktention model cannot run: a clear error, exit code 2.
    code, _, err = run_cli(argv[:-len(tracker_flags(weights))], capsys)
    assert code == 2 and "needs point tracks" in err


def test_colorize_from_a_training_checkpoint(video, weights, tmp_path_factory, tmp_path, capsys):
    args = tiny_clip_model_args(tmp_path_factory.mktemp("color_run"), "colorization_tiny_synthetic", 32)
    ckpt = fit_one_step(args + ["model.freeze=[]"])  # no stage-1 weights here: train the colorizer too
    code, _, err = run_cli(["colorize", "--video", str(video), "--ckpt", str(ckpt), "--window", "4", "--overlap", "1",
                            "--out", str(tmp_path), *tracker_flags(weights)], capsys)
    assert code == 0, err
    assert mp4_frames(tmp_path / "clip_color.mp4").shape == (T, H, W, 3)


def test_bad_inputs_exit_with_a_message_naming_the_file(video, tracker_ckpt, tmp_path, capsys):
    junk = tmp_path / "holiday.mp4"
    junk.write_bytes(b"definitely not a video" * 10)
    code, _, err = run_cli(["track", "--video", str(junk), "--ckpt", str(tracker_ckpt), "--grid", "2",
                            "--out", str(tmp_path)], capsys)
    assert code == 2 and "holiday.mp4: not a readable video" in err
    code, _, err = run_cli(["track", "--video", str(video), "--ckpt", str(tracker_ckpt), "--query", "50,1,1",
                            "--out", str(tmp_path)], capsys)
    assert code == 2 and "frame 50" in err and "11 frames" in err
    code, _, err = run_cli(["depth", "--video", str(video), "--ckpt", str(tracker_ckpt), "--out", str(tmp_path)], capsys)
    assert code == 2 and "holds a 'cotracker3' model" in err


def test_requests_that_cannot_run_are_refused_up_front(video, weights, tmp_path, capsys, monkeypatch):
    track = ["track", "--video", str(video), "--weights", str(weights["online"]), "--arch", json.dumps(TINY_TRACKER)]
    out = ["--out", str(tmp_path / "pred")]
    code, _, err = run_cli([*track, "--grid", "1000", *out], capsys)
    assert code == 2 and "--grid 1000: 1000x1000 points are denser than the pixels" in err and "--grid 24" in err
    code, _, err = run_cli([*track, "--grid", "5", "--device", "bogus", *out], capsys)
    assert code == 2 and "--device 'bogus' is not a device" in err
    if not torch.cuda.is_available():
        code, _, err = run_cli([*track, "--grid", "5", "--device", "cuda", *out], capsys)
        assert code == 2 and "--device cuda: CUDA is not available here" in err
    existing = tmp_path / "a_file"
    existing.write_text("")
    code, _, err = run_cli([*track, "--grid", "5", "--out", str(existing)], capsys)
    assert code == 2 and f"--out {existing}: exists and is not a directory" in err
    # Memory: 24 points (+ the 6x6 support grid) against a machine with 1 MiB free.
    monkeypatch.setattr("tools.predict_video.available_memory", lambda device: 2**20)
    code, _, err = run_cli([*track, "--grid", "24", *out], capsys)
    assert code == 2 and "--grid 24: 612 points need at least" in err and "free on cpu; track fewer points" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "pred").exists()


def test_the_memory_estimate_is_a_lower_bound_of_one_window():
    model = CoTrackerThree(CoTrackerThreeConfig(variant="online"))  # the published architecture
    per_point = model.inference_bytes_per_point()
    # One level's 4D correlation alone: (2r+1)^4 float32 per point and frame of a 16-frame window.
    assert per_point > 4 * 7**4 * 16
    assert 1000**2 * per_point > 300 * 2**30  # --grid 1000: hundreds of GiB, refused on any machine


@pytest.mark.slow
def test_script_exit_code_for_a_non_video(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    result = subprocess.run([sys.executable, str(REPO / "tools" / "predict.py"), "depth", "--video", str(junk),
                             "--weights", str(tmp_path / "unused.pth"), "--out", str(tmp_path)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert "notes.txt" in result.stderr
