"""Inference wrapper around CoTrackerThree, following the published CoTracker3 predictors.

- Frames are resized to ``model_resolution`` (bilinear, align_corners=True); query and track
  xy are scaled by (W' - 1) / (W - 1) and (H' - 1) / (H - 1) and back.
- A hidden support grid at frame 0 (6x6 in the demo predictor, 5x5 in evaluation; 0 = off),
  placed like ``get_points_on_a_grid``, is tracked with explicit queries and removed.
- ``backward_tracking`` reruns the model on the time-reversed video and fills each track's
  frames before its query frame (needed by the online model, which only tracks forwards).
- Each track is forced to its query point, visible, at its own query frame.
- Visibility: sigmoid(vis) * sigmoid(conf) > 0.6 (online / evaluation rule) or
  sigmoid(vis) > 0.9 (offline demo rule).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.cotracker3 import CoTrackerThree
from models.track_ops import before_query_frame, points_on_grid, random_space_time_queries, reverse_queries

VISIBILITY_RULES = {"vis_conf": 0.6, "vis": 0.9}


@dataclass
class PredictorOutput:
    tracks: Tensor  # (B, T, N, 2) pixels of the input video
    visible: Tensor  # (B, T, N) bool
    vis: Tensor  # (B, T, N) sigmoid of the visibility logit
    conf: Tensor  # (B, T, N) sigmoid of the confidence logit


class CoTrackerThreePredictor(nn.Module):
    """Track points in videos of any size with a CoTrackerThree model (no gradients)."""

    def __init__(self, model: CoTrackerThree, iters: int = 6, support_grid_size: int = 6,
                 visibility_rule: str | None = None, threshold: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.iters = iters
        self.support_grid_size = support_grid_size
        # the published online predictor uses vis * conf, the offline demo predictor vis alone
        rule = visibility_rule or ("vis_conf" if model.config.variant == "online" else "vis")
        if rule not in VISIBILITY_RULES:
            raise ValueError(f"visibility_rule must be one of {sorted(VISIBILITY_RULES)}, got {rule!r}")
        self.visibility_rule = rule
        self.threshold = VISIBILITY_RULES[rule] if threshold is None else threshold

    def decide_visible(self, vis: Tensor, conf: Tensor) -> Tensor:
        """Apply the visibility rule to probabilities."""
        score = vis * conf if self.visibility_rule == "vis_conf" else vis
        return score > self.threshold

    @torch.no_grad()
    def forward(self, video: Tensor, queries: Tensor | None = None, *, grid_size: int = 0,
                grid_query_frame: int = 0, backward_tracking: bool = False) -> PredictorOutput:
        """Track ``queries`` (B, N, 3) as (t, x, y) pixels, or a grid_size x grid_size grid at grid_query_frame.

        video (B, T, 3, H, W) in 0..255. Support-grid tracks are added only with explicit queries.
        """
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be (B, T, 3, H, W), got {tuple(video.shape)}")
        if not video.is_floating_point():
            video = video.float()
        B, T, _, H, W = video.shape
        if H < 2 or W < 2:
            raise ValueError(f"video frames must be at least 2x2, got {H}x{W}")
        rh, rw = self.model.config.model_resolution
        to_model = video.new_tensor([(rw - 1) / (W - 1), (rh - 1) / (H - 1)])
        if (H, W) != (rh, rw):
            video = F.interpolate(video.flatten(0, 1), (rh, rw), mode="bilinear", align_corners=True)
            video = video.view(B, T, 3, rh, rw)

        if queries is not None:
            CoTrackerThree._check_queries(queries, B, T)
            queries = queries.to(video.dtype)
            user_xy = queries[..., 1:]
            model_queries = torch.cat([queries[..., :1], user_xy * to_model], dim=-1)
            extra = self.support_grid_size
        elif grid_size > 0:
            if not 0 <= grid_query_frame < T:
                raise ValueError(f"grid_query_frame must lie in [0, {T}), got {grid_query_frame}")
            grid = points_on_grid(grid_size, (rh, rw), device=video.device).to(video.dtype).expand(B, -1, -1)
            model_queries = torch.cat([torch.full_like(grid[..., :1], grid_query_frame), grid], dim=-1)
            user_xy = grid / to_model
            extra = 0
        else:
            raise ValueError("give queries or a grid_size > 0")
        num_user = model_queries.shape[1]
        if extra:
            support = points_on_grid(extra, (rh, rw), device=video.device).to(video.dtype).expand(B, -1, -1)
            model_queries = torch.cat([model_queries, torch.cat([torch.zeros_like(support[..., :1]), support], -1)], 1)

        out = self.model(video, model_queries, iters=self.iters)
        tracks, vis, conf = out.tracks, out.vis, out.conf
        q_frames = model_queries[..., 0].long()
        if backward_tracking:
            back = self.model(video.flip(1), reverse_queries(model_queries, T), iters=self.iters)
            before = before_query_frame(model_queries, T)
            tracks = torch.where(before.unsqueeze(-1), back.tracks.flip(1), tracks)
            vis = torch.where(before, back.vis.flip(1), vis)
            conf = torch.where(before, back.conf.flip(1), conf)

        tracks, vis, conf = tracks[:, :, :num_user], vis[:, :, :num_user], conf[:, :, :num_user]
        q_frames = q_frames[:, :num_user]
        visible = self.decide_visible(vis, conf)
        tracks = tracks / to_model
        # each track passes exactly through its query point, visible there
        b = torch.arange(B, device=video.device).view(B, 1)
        n = torch.arange(num_user, device=video.device).view(1, num_user)
        tracks[b, q_frames, n] = user_xy
        visible[b, q_frames, n] = True
        return PredictorOutput(tracks, visible, vis, conf)


class TrackPreprocessor(nn.Module):
    """Tracks for a video model: a frozen CoTracker3 run on random space-time queries, both ways.

    ``predictor`` is a ``CoTrackerThreePredictor`` (or any callable with its signature); the
    paper's recipe is 576 random queries tracked forwards and backwards with CoTracker3.
    """

    def __init__(self, predictor: nn.Module, num_tracks: int = 576, backward_tracking: bool = True) -> None:
        super().__init__()
        self.predictor = predictor.eval().requires_grad_(False)
        self.num_tracks = num_tracks
        self.backward_tracking = backward_tracking

    def train(self, mode: bool = True) -> TrackPreprocessor:
        return super().train(False)  # always frozen, whatever the parent module does

    @torch.no_grad()
    def forward(self, video: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """video (B, T, 3, H, W) 0..255 -> tracks (B, T, N, 2), visible (B, T, N), queries (B, N, 3)."""
        B, T, _, H, W = video.shape
        queries = random_space_time_queries(B, T, (H, W), self.num_tracks, generator, device=video.device)
        out = self.predictor(video.float(), queries, backward_tracking=self.backward_tracking)
        return out.tracks, out.visible, queries


def build_tracker_predictor(arch: dict[str, Any], checkpoint: str | os.PathLike, iters: int = 6,
                            support_grid_size: int = 0) -> CoTrackerThreePredictor:
    """A CoTracker3 predictor in eval mode, its model loaded strictly from an official ``.pth`` (or a
    ``.ckpt`` of a CoTracker3 family); ``arch`` holds CoTrackerThreeConfig keys, ``variant`` included."""
    model = CoTrackerThree.from_config(arch)
    model.load_official(checkpoint)
    return CoTrackerThreePredictor(model.eval(), iters=iters, support_grid_size=support_grid_size)
