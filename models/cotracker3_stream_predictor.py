"""CoTracker3 prediction over a video that arrives chunk by chunk (online model, bounded memory).

Same processing as :class:`CoTrackerThreePredictor` (frames resized to ``model_resolution``,
hidden support grid, visibility rule, each track forced through its query point), but frames go
through a :class:`CoTrackerThreeStream`, so memory holds one window of feature maps plus the
(T, N) outputs, whatever the video length.

Backward tracking fills each track's frames before its query frame (the online model only
tracks forwards). It runs a second stream over frames ``last query frame .. 0`` in reverse,
read back from a disk-backed store of the resized frames that is written during the forward
pass (only frames up to the last query frame are stored). The forward part equals the in-memory
predictor on the whole video; the backward part equals the in-memory predictor's backward pass
on the video cut after the last query frame (the in-memory one reverses the whole clip).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.cotracker3 import WindowPrediction
from models.cotracker3_predictor import CoTrackerThreePredictor, PredictorOutput
from models.track_ops import points_on_grid


class _WindowAssembler:
    """Per-frame outputs from overlapping windows: a later window overrides the frames it shares."""

    def __init__(self) -> None:
        self.pending: WindowPrediction | None = None
        self.parts: list[tuple[Tensor, Tensor, Tensor]] = []

    def add(self, windows: list[WindowPrediction]) -> None:
        for window in windows:
            if self.pending is not None:
                self._keep(self.pending, window.start - self.pending.start)
            self.pending = window

    def _keep(self, window: WindowPrediction, frames: int) -> None:
        self.parts.append(tuple(x[-1][0, :frames].cpu() for x in (window.coords, window.vis_logits,
                                                                   window.conf_logits)))

    def result(self) -> tuple[Tensor, Tensor, Tensor]:
        """tracks (T, M, 2), vis logits (T, M), conf logits (T, M) in model pixels."""
        if self.pending is not None:
            self._keep(self.pending, self.pending.num_frames)
            self.pending = None
        return tuple(torch.cat(x, dim=0) for x in zip(*self.parts))


class StreamingTrackPredictor:
    """Track `queries` (N, 3) as (t, x, y) pixels, or a grid, through frames pushed in chunks.

    ``push(frames)`` takes (t, 3, H, W) frames in 0..255 (any dtype); ``finish()`` returns a
    :class:`PredictorOutput` without the batch axis: tracks (T, N, 2) in pixels of the frames,
    visible (T, N), vis and conf (T, N) probabilities, all on the CPU.
    """

    def __init__(self, predictor: CoTrackerThreePredictor, frame_hw: tuple[int, int], queries: Tensor | None = None,
                 *, grid_size: int = 0, grid_query_frame: int = 0, backward_tracking: bool = True,
                 scratch_dir: str | Path | None = None) -> None:
        model = predictor.model
        if model.config.variant != "online":
            raise ValueError("streaming prediction needs the online CoTracker3 variant "
                             f"(this model is {model.config.variant!r})")
        H, W = frame_hw
        if H < 2 or W < 2:
            raise ValueError(f"video frames must be at least 2x2, got {H}x{W}")
        self.predictor, self.model, self.frame_hw = predictor, model, (H, W)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        rh, rw = model.config.model_resolution
        self.to_model = torch.tensor([(rw - 1) / (W - 1), (rh - 1) / (H - 1)], dtype=self.dtype)
        if queries is not None:
            queries = queries.to(self.dtype)
            self.user_xy = queries[:, 1:]
            model_queries = torch.cat([queries[:, :1], self.user_xy * self.to_model], dim=-1)
            extra = predictor.support_grid_size
        elif grid_size > 0:
            grid = points_on_grid(grid_size, (rh, rw))[0].to(self.dtype)
            model_queries = torch.cat([torch.full_like(grid[:, :1], grid_query_frame), grid], dim=-1)
            self.user_xy = grid / self.to_model
            extra = 0
        else:
            raise ValueError("give queries or a grid_size > 0")
        self.num_user = model_queries.shape[0]
        if extra:
            support = points_on_grid(extra, (rh, rw))[0].to(self.dtype)
            model_queries = torch.cat([model_queries, torch.cat([torch.zeros_like(support[:, :1]), support], -1)])
        self.model_queries = model_queries
        self.q_frames = model_queries[:, 0].long()
        self.stream = model.stream(model_queries[None].to(self.device), iters=predictor.iters)
        self.forward = _WindowAssembler()
        self.frames_seen = 0
        # frames 0 .. backward_len - 1 are needed again, reversed, for backward tracking
        self.backward_len = int(self.q_frames.max()) + 1 if backward_tracking and bool((self.q_frames > 0).any()) else 0
        self.scratch = tempfile.TemporaryDirectory(dir=scratch_dir, prefix="tracklight-frames-") if self.backward_len else None
        self.store: np.memmap | None = None

    def _to_model_frames(self, frames: Tensor) -> Tensor:
        if frames.dim() != 4 or frames.shape[1] != 3 or tuple(frames.shape[-2:]) != self.frame_hw:
            raise ValueError(f"frames must be (t, 3, {self.frame_hw[0]}, {self.frame_hw[1]}), got {tuple(frames.shape)}")
        frames = frames.to(self.device, self.dtype)
        rh, rw = self.model.config.model_resolution
        if self.frame_hw != (rh, rw):  # as the in-memory predictor: bilinear, align_corners=True
            frames = F.interpolate(frames, (rh, rw), mode="bilinear", align_corners=True)
        return frames

    @torch.no_grad()
    def push(self, frames: Tensor) -> None:
        frames = self._to_model_frames(frames)
        start, self.frames_seen = self.frames_seen, self.frames_seen + frames.shape[0]
        if start < self.backward_len:
            self._store(start, frames[: self.backward_len - start])
        self.forward.add(self.stream.push(frames[None]))

    def _store(self, start: int, frames: Tensor) -> None:
        if self.store is None:
            dtype = torch.empty(0, dtype=self.dtype).numpy().dtype
            path = Path(self.scratch.name) / "frames.raw"
            self.store = np.memmap(path, dtype=dtype, mode="w+", shape=(self.backward_len, *frames.shape[1:]))
        self.store[start:start + frames.shape[0]] = frames.cpu().numpy()

    @torch.no_grad()
    def finish(self) -> PredictorOutput:
        if self.frames_seen and int(self.q_frames.max()) >= self.frames_seen:
            raise ValueError(f"a query is at frame {int(self.q_frames.max())} but the video has only "
                             f"{self.frames_seen} frames")
        self.forward.add(self.stream.finish())
        tracks, vis, conf = self.forward.result()
        if self.backward_len:
            back_tracks, back_vis, back_conf = self._backward()
            before = torch.arange(self.backward_len).view(-1, 1) < self.q_frames.view(1, -1)
            L = self.backward_len
            tracks[:L] = torch.where(before.unsqueeze(-1), back_tracks, tracks[:L])
            vis[:L] = torch.where(before, back_vis, vis[:L])
            conf[:L] = torch.where(before, back_conf, conf[:L])
        n = self.num_user
        vis, conf = torch.sigmoid(vis[:, :n]), torch.sigmoid(conf[:, :n])
        visible = self.predictor.decide_visible(vis, conf)
        tracks = tracks[:, :n] / self.to_model
        index = torch.arange(n)
        tracks[self.q_frames[:n], index] = self.user_xy  # each track passes through its query point
        visible[self.q_frames[:n], index] = True
        self.close()
        return PredictorOutput(tracks, visible, vis, conf)

    def _backward(self) -> tuple[Tensor, Tensor, Tensor]:
        L, step = self.backward_len, self.model.window_len
        reversed_queries = torch.cat([(L - 1 - self.q_frames).to(self.dtype).unsqueeze(-1), self.model_queries[:, 1:]], -1)
        stream = self.model.stream(reversed_queries[None].to(self.device), iters=self.predictor.iters)
        back = _WindowAssembler()
        for end in range(L, 0, -step):
            chunk = np.ascontiguousarray(self.store[max(0, end - step):end][::-1])
            back.add(stream.push(torch.from_numpy(chunk).to(self.device)[None]))
        back.add(stream.finish())
        return tuple(x.flip(0) for x in back.result())

    def close(self) -> None:
        """Remove the scratch frame store (also done by finish)."""
        self.store = None
        if self.scratch is not None:
            self.scratch.cleanup()
            self.scratch = None
