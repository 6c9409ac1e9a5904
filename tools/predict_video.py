"""Prediction on video files, family by family: the logic behind ``tools/predict.py``.

Videos are read through :class:`VideoReader` in bounded chunks or windows and outputs are
written as soon as they are final, so memory does not grow with the video length (the tracks
themselves, (T, N, 2) floats, are the exception: they are kept until the end).

- Tracks: an online CoTracker3 runs in streaming mode (:class:`StreamingTrackPredictor`, the
  official demo predictor's processing). Other point trackers (offline CoTracker3, Chrono,
  TAPTRv2) see the whole video in one call, which must fit in memory. Output:
  ``<stem>_tracks.npz`` (tracks (T, N, 2) pixels of the video, visible (T, N), queries (N, 3),
  fps) and the overlay ``<stem>_tracks.mp4`` (second pass over the video).
- Depth / colour: windows of ``window`` frames that share ``overlap`` frames, stitched by
  :class:`WindowStitcher` (disparity aligned by scale and shift to the previous window,
  then cross-faded; colour cross-faded in Lab). Models with Tracktention get the tracks of each
  window from a frozen CoTracker3 on random space-time queries tracked both ways, as in
  training (:class:`TrackPreprocessor`, the recipe of ``tools/extract_tracks.py``), seeded per
  window so reruns are identical.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor

from datamodules.query_files import check_queries
from datamodules.video_files import FrameArrayWriter, Mp4Writer, VideoReader, write_png16
from models.cotracker3_predictor import CoTrackerThreePredictor, TrackPreprocessor
from models.cotracker3_stream_predictor import StreamingTrackPredictor
from models.track_ops import points_on_grid
from models.video_windows import stitched

log = logging.getLogger(__name__)

class PredictError(ValueError):
    """A prediction request that cannot run (wrong checkpoint, missing tracker, bad sizes)."""


def pick_device(name: str) -> torch.device:
    """`auto` (CUDA if present, else CPU), `cpu`, `cuda`, `cuda:N`, `mps`; PredictError for anything unusable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PredictError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"--device {name}: CUDA is not available here (use --device cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise PredictError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PredictError(f"--device {name}: MPS is not available here (use --device cpu or auto)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise PredictError(f"--device {name!r}: only cpu, cuda and mps devices are supported")
    return device


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on `device` (None when unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return None
        for line in meminfo.splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def check_point_budget(num_points: int, bytes_per_point: int, device: torch.device, what: str) -> None:
    """PredictError before any work when `num_points` tracked points cannot fit in `device`'s free memory."""
    need, have = num_points * bytes_per_point, available_memory(device)
    if have is not None and need > have:
        raise PredictError(f"{what}: {num_points:,} points need at least {need / 2**30:.1f} GiB for one window, more "
                           f"than the {have / 2**30:.1f} GiB free on {device}; track fewer points")


# ---------------------------------------------------------------------- tracks
def _frames_tensor(frames: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """uint8 (t, H, W, 3) -> uint8 (t, 3, H, W) on `device`."""
    return torch.from_numpy(frames).to(device).permute(0, 3, 1, 2)


def track_video(video: str | Path, out_dir: str | Path, tracker: CoTrackerThreePredictor | L.LightningModule, *,
                queries: np.ndarray | None = None, grid_size: int = 0, grid_frame: int = 0,
                backward_tracking: bool = True, device: str = "cpu", overlay: bool = True) -> dict[str, Path]:
    """Track `queries` (N, 3) as (t, x, y) pixels, or a grid at `grid_frame`, through a video file."""
    reader = VideoReader(video)
    H, W = reader.info.height, reader.info.width
    q = None if queries is None else torch.from_numpy(check_queries(np.asarray(queries, np.float32), "queries", (H, W)))
    if q is None and grid_size < 1:
        raise PredictError("give queries or a grid size >= 1")
    dev = pick_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(tracker, CoTrackerThreePredictor) and tracker.model.config.variant == "online":
        tracker.to(dev)
        stream = StreamingTrackPredictor(tracker, (H, W), q, grid_size=grid_size, grid_query_frame=grid_frame,
                                         backward_tracking=backward_tracking, scratch_dir=out_dir)
        for frames in reader.chunks(tracker.model.window_len):
            stream.push(_frames_tensor(frames, dev))
        out = stream.finish()
        tracks, visible = out.tracks, out.visible
        if q is None:
            q = torch.cat([torch.full_like(stream.user_xy[:, :1], grid_frame), stream.user_xy], -1)
    else:
        tracks, visible, q = _track_whole_video(reader, tracker, q, grid_size, grid_frame, backward_tracking, dev)
    stem = reader.path.stem
    paths = {"npz": out_dir / f"{stem}_tracks.npz"}
    np.savez(paths["npz"], tracks=tracks.float().numpy(), visible=visible.numpy(), queries=q.float().numpy(),
             fps=np.float32(reader.info.fps))
    if overlay:
        paths["mp4"] = write_track_overlay(reader, tracks, visible, out_dir / f"{stem}_tracks.mp4")
    return paths


def _track_whole_video(reader: VideoReader, tracker: CoTrackerThreePredictor | L.LightningModule, q: Tensor | None,
                       grid_size: int, grid_frame: int, backward_tracking: bool, device: torch.device
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """Trackers without a streaming mode: the whole video in one call (it must fit in memory)."""
    log.warning("%s has no streaming mode: loading the whole video (%s frames)", type(tracker).__name__,
                reader.info.num_frames or "unknown number of")
    video = torch.cat([_frames_tensor(c, device) for c in reader.chunks(64)])[None].float()
    if not 0 <= grid_frame < video.shape[1]:
        raise PredictError(f"grid frame {grid_frame} is outside the video's {video.shape[1]} frames")
    with torch.no_grad():
        if isinstance(tracker, CoTrackerThreePredictor):
            tracker.to(device)
            backward = backward_tracking and tracker.model.config.variant == "online"
            if q is None:
                out = tracker(video, grid_size=grid_size, grid_query_frame=grid_frame, backward_tracking=backward)
                grid = out.tracks[0, grid_frame].cpu()  # forced to the grid points at their frame
                q = torch.cat([torch.full_like(grid[:, :1], grid_frame), grid], -1)
            else:
                out = tracker(video, q[None].to(device), backward_tracking=backward)
            return out.tracks[0].cpu(), out.visible[0].cpu(), q
        if q is None:
            grid = points_on_grid(grid_size, tuple(video.shape[-2:]))[0]
            q = torch.cat([torch.full_like(grid[:, :1], grid_frame), grid], -1)
        tracker.to(device)
        tracks, visible = tracker.predict_tracks(video, q[None].to(device))
        return tracks[0].cpu(), visible[0].cpu(), q


def write_track_overlay(reader: VideoReader, tracks: Tensor, visible: Tensor, path: Path) -> Path:
    """Re-read the video and draw each track's point on its frames (disc visible, ring occluded)."""
    from callbacks.track_video import draw_tracks

    radius = max(2.5, min(reader.info.height, reader.info.width) / 200)
    start = 0
    with Mp4Writer(path, reader.info.fps) as writer:
        for frames in reader.chunks(32):
            end = start + len(frames)
            writer.write(draw_tracks(_frames_tensor(frames), tracks[start:end], visible[start:end], min_size=0,
                                     radius=radius).numpy())
            start = end
    return path


# ---------------------------------------------------------------------- clip models (depth, colour)
def _windows(reader: VideoReader, window: int, overlap: int, tracks: TrackPreprocessor | None, needs_tracks: bool,
             device: torch.device, seed: int) -> Iterator[tuple[Tensor, Tensor | None, Tensor | None]]:
    """(video (1, t, 3, H, W) float on device, tracks, visible) per window."""
    if needs_tracks and tracks is None:
        raise PredictError("this model has Tracktention layers and needs point tracks: pass a CoTracker3 tracker "
                           "(--tracker-weights scaled_offline.pth)")
    for index, frames in enumerate(reader.windows(window, overlap)):
        video = _frames_tensor(frames, device)[None].float()
        if needs_tracks:
            tracks.to(device)
            track_xy, visible, _ = tracks(video, torch.Generator().manual_seed(seed + index))
            yield video, track_xy, visible
        else:
            yield video, None, None


def _stitched(windows: Iterator[tuple[Tensor, Tensor | None, Tensor | None]],
              run: Callable[[Tensor, Tensor | None, Tensor | None], Tensor], overlap: int, align: bool
              ) -> Iterator[Tensor]:
    """Run each window and yield the frames (t, ...) on the CPU as they become final."""
    with torch.no_grad():
        yield from stitched((run(video, tracks, visible).float().cpu() for video, tracks, visible in windows),
                            overlap, align_scale_shift=align)


class DepthOutputs:
    """Per-frame disparity to ``.npz`` (float16/32), 16-bit PNGs and a magma-coloured mp4.

    The PNG scale and the colour range are fixed by the first frames written (PNG: value =
    disparity x png_scale with png_scale = 65535 / (2 x their maximum), clipped; colours: their
    1st..99th percentile), so they do not flicker; both are saved in ``<stem>_depth.json``.
    """

    def __init__(self, out_dir: Path, stem: str, fps: float, npz: bool, png: bool, mp4: bool,
                 npz_dtype: str = "float16") -> None:
        self.out_dir, self.stem, self.fps = out_dir, stem, fps
        self.npz = FrameArrayWriter(out_dir / f"{stem}_depth.npz", "disparity", npz_dtype) if npz else None
        self.png_dir = out_dir / f"{stem}_depth" if png else None
        self.mp4 = Mp4Writer(out_dir / f"{stem}_depth.mp4", fps) if mp4 else None
        self.count = 0
        self.png_scale: float | None = None
        self.colour_range: tuple[float, float] | None = None

    def write(self, disparity: Tensor) -> None:
        """disparity (t, H, W) float on the CPU."""
        from callbacks.depth_video import colourise

        if self.png_scale is None:
            sample = disparity.flatten()[:: max(1, disparity.numel() // 1_000_000)].double()
            self.png_scale = 65535.0 / max(2.0 * float(sample.max()), 1e-6)
            lo, hi = torch.quantile(sample, torch.tensor([0.01, 0.99], dtype=torch.float64)).tolist()
            self.colour_range = (lo, hi if hi > lo else lo + 1e-6)
        if self.npz is not None:
            self.npz.append(disparity.numpy())
        if self.png_dir is not None:
            self.png_dir.mkdir(parents=True, exist_ok=True)
            coded = (disparity.double() * self.png_scale).round().clamp(0, 65535).numpy().astype(np.uint16)
            for i, image in enumerate(coded):
                write_png16(self.png_dir / f"{self.count + i:06d}.png", image)
        if self.mp4 is not None:
            lo, hi = self.colour_range
            self.mp4.write(colourise((disparity - lo) / (hi - lo)).numpy())
        self.count += disparity.shape[0]

    def close(self) -> dict[str, Path]:
        paths: dict[str, Path] = {}
        if self.npz is not None:
            paths["npz"] = self.npz.close({"fps": np.float32(self.fps)})
        if self.mp4 is not None:
            self.mp4.close()
            paths["mp4"] = self.mp4.path
        if self.png_dir is not None:
            paths["png"] = self.png_dir
        meta = {"kind": "relative disparity (affine-invariant; larger = nearer)", "frames": self.count,
                "fps": self.fps, "png_scale": self.png_scale, "colour_range": self.colour_range}
        paths["json"] = self.out_dir / f"{self.stem}_depth.json"
        paths["json"].write_text(json.dumps(meta, indent=2))
        return paths


def depth_video(video: str | Path, out_dir: str | Path, model: torch.nn.Module, *,
                tracks: TrackPreprocessor | None = None, window: int = 32, overlap: int = 8, device: str = "cpu",
                npz: bool = True, png: bool = False, mp4: bool = True, npz_dtype: str = "float16",
                seed: int = 0) -> dict[str, Path]:
    """Relative disparity of every frame of a video with a ``VideoDepthAnything``."""
    reader = VideoReader(video)
    H, W, patch = reader.info.height, reader.info.width, model.patch_size
    if model.config.input_size is None and (H % patch or W % patch):
        raise PredictError(f"{reader.path}: frames are {W}x{H}, not multiples of {patch}, and the model has no "
                           "input_size: pass --input-size (e.g. 518)")
    dev = pick_device(device)
    model.to(dev).eval()
    out_dir = Path(out_dir)
    outputs = DepthOutputs(out_dir, reader.path.stem, reader.info.fps, npz, png, mp4, npz_dtype)
    windows = _windows(reader, window, overlap, tracks, model.tracktention is not None, dev, seed)
    for frames in _stitched(windows, lambda v, t, vis: model(v, t, vis)[0, :, 0], overlap, align=True):
        outputs.write(frames)
    return outputs.close()


def colorize_video(video: str | Path, out_dir: str | Path, model: torch.nn.Module, *,
                   tracks: TrackPreprocessor | None = None, window: int = 16, overlap: int = 4, device: str = "cpu",
                   seed: int = 0) -> dict[str, Path]:
    """Colour video from the L channel of every frame with a ``VideoColorizer`` (the input's colour is ignored)."""
    from models.color import lab_to_rgb, rgb_to_lab

    reader = VideoReader(video)
    dev = pick_device(device)
    model.to(dev).eval()

    def run(video: Tensor, track_xy: Tensor | None, visible: Tensor | None) -> Tensor:
        lab = rgb_to_lab(video)[0]
        ab = model(lab[None, :, :1], track_xy, visible)[0]
        return torch.cat([lab[:, :1], ab.to(lab.dtype)], dim=1)  # stitched in Lab: L is the same in both windows

    path = Path(out_dir) / f"{reader.path.stem}_color.mp4"
    windows = _windows(reader, window, overlap, tracks, model.tracktention is not None, dev, seed)
    with Mp4Writer(path, reader.info.fps) as writer:
        for lab in _stitched(windows, run, overlap, align=False):
            writer.write(lab_to_rgb(lab).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return {"mp4": path}
