"""The video depth benchmark run of a video depth model: whole videos in, one table out.

``train.py validate|test`` with ``data.kind=depth_benchmark`` (``datamodules/benchmark_videos.py``)
hands the video depth module one whole protocol video per batch. Each video:

1. is run through the model at Video Depth Anything's inference size (``inference_input_size``:
   shorter side ``data.input_size``, multiple of 14, aspect kept, wide videos shrunk as VDA does);
   the model resizes the frames (bicubic) and its disparity back to the frame size (bilinear);
2. in windows of ``data.window`` frames sharing ``data.overlap`` frames, stitched by the same code
   as ``tools/predict.py depth`` (``models/video_windows.py``: each window scale-and-shift aligned to
   the previous one on the shared frames, then cross-faded), so a long video is scored as it would
   be predicted;
3. with the Tracktention tracks of each window from the frozen CoTracker3 when
   ``model.tracker.checkpoint`` is set (576 random space-time queries tracked both ways, seeded
   ``data.tracks_seed + window index``, as prediction does), else from the shards
   (``tools/extract_tracks.py``); the image model (``model.arch.tracktention.enabled=false``)
   needs none and goes through exactly the same steps, frame by frame;
4. is scored by ``VideoDepthBenchmarkMetric`` (one per set: the set's cap, the metric crop of VDA's
   TAE, TAE with the set's cameras), fed chunk by chunk as the stitcher finalises frames.

At the epoch end every set's metric is reduced over processes (videos were dealt to ranks by the
data module, each whole on one) and logged as ``{stage}/<set>/abs_rel``, ``delta1``, ``rmse``,
``tae`` (TAE sets), ``num_videos``, ``num_skipped``; ``table`` holds the printed table.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from configs.loader import ConfigError
from datamodules.benchmark_videos import SetProtocol, inference_input_size
from metrics.depth_benchmark import VideoDepthBenchmarkMetric
from models.cotracker3_predictor import TrackPreprocessor
from models.video_depth import VideoDepthAnything
from models.video_windows import stitched, window_ranges

log = logging.getLogger(__name__)

TracksFor = Callable[[Tensor, range, int], tuple[Tensor | None, Tensor | None]]


def video_disparity(model: VideoDepthAnything, video: Tensor, window: int, overlap: int, input_size: int,
                    tracks_for: TracksFor) -> Iterator[Tensor]:
    """Relative disparity of a whole video (T, 3, H, W) 0..255 as (t, H, W) chunks in frame order.

    ``tracks_for(clip (1, t, 3, H, W), frames, window index)`` gives each window's (tracks, visible)
    (None, None for an image model)."""

    def outputs() -> Iterator[Tensor]:
        for index, frames in enumerate(window_ranges(video.shape[0], window, overlap)):
            clip = video[frames.start:frames.stop].float()[None]
            tracks, visible = tracks_for(clip, frames, index)
            yield model(clip, tracks, visible, input_size=input_size)[0, :, 0].float()

    return stitched(outputs(), overlap, align_scale_shift=True)


def tracks_source(model: VideoDepthAnything, tracker: TrackPreprocessor | None) -> str:
    if model.tracktention is None:
        return "none (image model, frame by frame)"
    if tracker is not None:
        return "CoTracker3 on the fly (model.tracker.checkpoint)"
    return "from the shards (tools/extract_tracks.py)"


def window_tracks(model: VideoDepthAnything, tracker: TrackPreprocessor | None, batch: dict, seed: int) -> TracksFor:
    """The tracks of each window: none for an image model, the on-the-fly tracker's, else the shards'."""

    def tracks_for(clip: Tensor, frames: range, index: int) -> tuple[Tensor | None, Tensor | None]:
        if model.tracktention is None:
            return None, None
        if tracker is not None:
            tracks, visible, _ = tracker.to(clip.device)(clip, torch.Generator().manual_seed(seed + index))
            return tracks, visible
        if batch["tracks"].shape[1] == 0:
            raise ConfigError(f"video {batch['video_key']} has no tracks and the model has Tracktention layers: set "
                              "model.tracker.checkpoint=scaled_offline.pth (CoTracker3 on the fly), add tracks with "
                              "tools/extract_tracks.py, or evaluate the image model "
                              "(model.arch.tracktention.enabled=false)")
        return batch["tracks"][frames.start:frames.stop][None], batch["visible"][frames.start:frames.stop][None]

    return tracks_for


class DepthBenchmarkRun(nn.Module):
    """One ``VideoDepthBenchmarkMetric`` per set; ``evaluate`` scores a video, ``finish`` reduces and tabulates."""

    def __init__(self, protocols: list[SetProtocol], data: DictConfig) -> None:
        super().__init__()
        self.protocols = protocols
        self.data = data
        self.metrics = nn.ModuleList([
            VideoDepthBenchmarkMetric(p.cap, prediction="disparity", crop=p.metric_crop, compute_tae=p.tae,
                                      tae_reference=data.tae_reference) for p in protocols])
        self.table: str | None = None

    def evaluate(self, batch: dict, set_index: int, model: VideoDepthAnything,
                 tracker: TrackPreprocessor | None) -> None:
        """Predict one whole video (a batch of the benchmark data module) and feed the set's metric."""
        d = self.data
        batch = {k: v[0] for k, v in batch.items()}  # one video per batch
        video, key = batch["video"], batch["video_key"]
        size = inference_input_size(video.shape[-2], video.shape[-1], d.input_size, d.shrink_wide)
        chunks = video_disparity(model, video, d.window, d.overlap, size,
                                 window_tracks(model, tracker, batch, d.tracks_seed))
        metric, start, pending = self.metrics[set_index], 0, None
        for chunk in chunks:  # one chunk behind, so that the last one is fed as the video's end
            if pending is not None:
                start = self._feed(metric, key, batch, pending, start, done=False)
            pending = chunk
        self._feed(metric, key, batch, pending, start, done=True)

    def results_table(self) -> str | None:
        """The table of the last finished evaluation (None before one)."""
        return self.table

    @staticmethod
    def _feed(metric: VideoDepthBenchmarkMetric, key: str, batch: dict, disparity: Tensor, start: int,
              done: bool) -> int:
        frames = slice(start, start + disparity.shape[0])
        cams = {k: batch[k][frames] for k in ("intrinsics", "cam_to_world") if k in batch}
        metric.update(key, disparity, batch["depth"][frames], batch["depth_valid"][frames], video_done=done, **cams)
        return frames.stop

    def finish(self, tracks: str) -> dict[str, Tensor]:
        """Reduce every set over processes (collective: every rank calls it), reset, build ``table``;
        returns ``{<set>/<metric>: value}``."""
        flat, rows = {}, []
        for protocol, metric in zip(self.protocols, self.metrics):
            values = metric.compute()
            metric.reset()
            rows.append((protocol, {k: float(v) for k, v in values.items()}))
            flat.update({f"{protocol.name}/{k}": v for k, v in values.items()})
        self.table = benchmark_table(rows, self.data, tracks)
        return flat


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def benchmark_table(rows: list[tuple[SetProtocol, dict[str, float]]], data: DictConfig, tracks: str) -> str:
    """One row per set: AbsRel (lower is better), delta1 (higher is better) as fractions, TAE (x100) for TAE sets."""
    header = ("dataset", "protocol", "videos", "AbsRel ↓", "δ1 ↑", "TAE ↓")
    lines = [(p.name, p.benchmark, f"{int(v['num_videos'])}/{p.expected_videos}", _fmt(v["abs_rel"]),
              _fmt(v["delta1"]), _fmt(v.get("tae"))) for p, v in rows]
    widths = [max(len(r[i]) for r in (header, *lines)) for i in range(len(header))]

    def render(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    wide = "VDA's shrink for videos wider than 1.78:1" if data.shrink_wide else "no shrink for wide videos"
    out = [f"Video depth benchmark: tracks {tracks}; inference at shorter side {data.input_size} ({wide}), "
           f"windows of {data.window} frames, overlap {data.overlap}",
           render(header), render(tuple("-" * w for w in widths)), *(render(line) for line in lines)]
    skipped = [f"{p.name}: {int(v['num_skipped'])}" for p, v in rows if v.get("num_skipped")]
    missing = [f"{p.name}: {p.expected_videos - int(v['num_videos'] + v.get('num_skipped', 0))}" for p, v in rows
               if v["num_videos"] + v.get("num_skipped", 0) < p.expected_videos]
    if missing:
        out.append("videos missing from the protocol's list (not converted, or damaged: see the warnings): "
                   + ", ".join(missing))
    if skipped:
        out.append("videos without a valid ground-truth pixel (left out): " + ", ".join(skipped))
    out.append("AbsRel and δ1 are fractions, TAE is x100; full precision in the logged val/<dataset>/* metrics")
    return "\n".join(out)
