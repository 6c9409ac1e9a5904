"""datamodules/video_files.py: videos and frame folders read back in bounded chunks; writers; clear errors."""

import numpy as np
import pytest
from PIL import Image

from datamodules import video_files
from datamodules.video_files import FrameArrayWriter, Mp4Writer, VideoReader, VideoReadError, read_png16, write_png16


def smooth_frames(count: int, h: int = 32, w: int = 48) -> np.ndarray:
    """Moving colour gradients: content a lossy codec keeps close to the original."""
    ys, xs = np.mgrid[0:h, 0:w]
    frames = [np.stack([(xs * 5 + 9 * t) % 256, (ys * 7 + 5 * t) % 256, np.full_like(xs, 40 + 10 * t)], -1)
              for t in range(count)]
    return np.asarray(frames, dtype=np.uint8)


def frame_folder(directory, frames: np.ndarray, suffix: str = ".png"):
    directory.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(directory / f"frame{i}{suffix}")  # unpadded: needs natural sorting
    return directory


def test_mp4_round_trip(tmp_path):
    frames = smooth_frames(10)
    path = tmp_path / "clip.mp4"
    with Mp4Writer(path, fps=12.5) as writer:
        writer.write(frames[:4])
        writer.write(frames[4:])
    reader = VideoReader(path)
    assert (reader.info.height, reader.info.width, reader.info.fps) == (32, 48, 12.5)
    decoded = np.concatenate(list(reader.chunks(3)))
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frames).mean() < 6  # lossy codec, same content


def test_odd_sizes_are_padded_for_yuv420(tmp_path):
    with Mp4Writer(tmp_path / "odd.mp4", fps=5) as writer:
        writer.write(smooth_frames(3, 15, 21))
    info = VideoReader(tmp_path / "odd.mp4").info
    assert (info.height, info.width) == (16, 22)


def test_frame_folder_is_read_in_natural_order_exactly(tmp_path):
    frames = smooth_frames(12)
    reader = VideoReader(frame_folder(tmp_path / "frames", frames), folder_fps=24)
    assert (reader.info.num_frames, reader.info.fps, reader.info.height, reader.info.width) == (12, 24, 32, 48)
    np.testing.assert_array_equal(np.concatenate(list(reader.chunks(5))), frames)


def test_chunks_are_bounded_and_decoded_lazily(tmp_path, monkeypatch):
    reader = VideoReader(frame_folder(tmp_path / "frames", smooth_frames(23, 8, 8)))
    decoded = []
    loader = video_files._load_image
    monkeypatch.setattr(video_files, "_load_image", lambda p: decoded.append(p) or loader(p))
    sizes = []
    for chunk in reader.chunks(5):
        sizes.append(len(chunk))
        assert len(decoded) == sum(sizes)  # nothing is decoded ahead of the chunk being handed out
    assert sizes == [5, 5, 5, 5, 3]


@pytest.mark.parametrize("count, expected", [(10, [(0, 4), (3, 7), (6, 10)]), (11, [(0, 4), (3, 7), (6, 10), (9, 11)]),
                                             (3, [(0, 3)])])
def test_windows_share_overlap_frames(tmp_path, count, expected):
    frames = smooth_frames(count, 8, 8)
    reader = VideoReader(frame_folder(tmp_path / "frames", frames))
    windows = list(reader.windows(4, overlap=1))
    assert len(windows) == len(expected)
    for window, (start, end) in zip(windows, expected):
        np.testing.assert_array_equal(window, frames[start:end])
    with pytest.raises(ValueError, match="overlap"):
        next(reader.windows(4, overlap=4))


def test_frame_array_writer_streams_into_a_loadable_npz(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.random((n, 5, 7)).astype(np.float32) for n in (3, 1, 4)]
    writer = FrameArrayWriter(tmp_path / "depth.npz", "disparity", np.float16)
    for part in parts:
        writer.append(part)
    writer.close({"fps": np.float32(25)})
    with np.load(tmp_path / "depth.npz") as archive:
        np.testing.assert_array_equal(archive["disparity"], np.concatenate(parts).astype(np.float16))
        assert archive["fps"] == 25
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth.npz"]  # the raw scratch file is gone


def test_png16_round_trip(tmp_path):
    image = np.arange(0, 65535, 65535 // 35, dtype=np.uint16)[:35].reshape(5, 7)
    write_png16(tmp_path / "d.png", image)
    np.testing.assert_array_equal(read_png16(tmp_path / "d.png"), image)


def test_unreadable_inputs_name_the_file(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    with pytest.raises(VideoReadError, match="notes.mp4: not a readable video"):
        VideoReader(text)
    with pytest.raises(VideoReadError, match="missing.mp4: no such file"):
        VideoReader(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoReadError, match="empty: folder holds no"):
        VideoReader(tmp_path / "empty")
    folder = frame_folder(tmp_path / "frames", smooth_frames(3, 8, 8))
    (folder / "frame1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(VideoReadError, match="frame1.png: not a readable image"):
        list(VideoReader(folder).frames())
    with Mp4Writer(tmp_path / "good.mp4", fps=10) as writer:
        writer.write(smooth_frames(30))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes((tmp_path / "good.mp4").read_bytes()[:300])
    with pytest.raises(VideoReadError, match="truncated.mp4"):
        list(VideoReader(truncated).frames())
