"""VideoDataModule: fixed-length clips with per-pixel depth and point tracks, for video models.

Shards follow ``datamodules/shards.py`` and must carry ``depth.npz`` (``depth`` or disparity per
``meta.depth_kind``, plus the validity mask) unless ``require_depth: false`` (colour video needs
none: its batches then carry no depth keys at all, even from shards that have depth) and tracks (ground truth, or pre-extracted by
``tools/extract_tracks.py``). Streaming, the DDP/worker shard split and the validation set
reuse :class:`TrainClipStream` / :class:`EvalClips`; augmentation reuses the tracking one, which
moves tracks and depth with the frames.

Batch keys: ``video`` (B, T, 3, H, W) 0..255, ``depth`` (B, T, 1, H, W), ``depth_valid`` bool,
``is_disparity`` (B,) (these three only with ``require_depth``), ``tracks`` (B, T, M, 2), ``visible`` (B, T, M), ``queries`` (B, M, 3) (each track's first visible
frame; the augmentation re-queries them), ``valid`` (B, T, M), ``clip_id``. M tracks are a random
subset per training clip (a fixed one per validation clip); clips with fewer tracks (or none, as
converted colour or depth-only clips) are padded with never-visible tracks, which Tracktention ignores.

Camera keys (from ``camera.npz``; the convention is in ``datamodules/shards.py``), float32:
``intrinsics`` (B, T, 3, 3) in pixels of ``video`` with ``require_intrinsics`` (the training
augmentation moves them with the frames), and ``cam_to_world`` (B, T, 4, 4) with ``pose_valid``
(B, T) bool with ``require_poses``. A clip without them is an error naming it, so every batch has
the same keys.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig

from configs.schema import AugmentConfig, SyntheticDataConfig
from datamodules.clip_sampling import TooFewTracks, clip_id
from datamodules.registry import register_datamodule
from datamodules.shards import Clip
from datamodules.tracking import EvalClips, TrackingDataModule, TrainClipStream

log = logging.getLogger(__name__)


def _depth_augment() -> AugmentConfig:
    # No occluder boxes (the depth under a painted box would be wrong) and no vertical flips
    # (upside-down scenes are not a depth prior worth learning).
    return AugmentConfig(flip_v_p=0.0, occluder_p=0.0)


@dataclass
class VideoDataConfig:
    kind: str = "video"
    train_shards: Optional[str] = None  # None -> the embedded synthetic data (GT depth + GT tracks)
    val_shards: Optional[str] = None
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    clip_len: int = 16
    num_tracks: int = 576  # M tracks per clip given to the model
    crop_hw: Optional[list[int]] = None  # training crop (H, W); multiples of 14 unless the model resizes
    val_clip_len: Optional[int] = None  # None -> clip_len
    max_depth: float = 80.0  # evaluation clip range (metres for metric ground truth)
    require_depth: bool = True  # False: depth is neither needed nor loaded (e.g. colorization)
    require_intrinsics: bool = False  # True: batches carry `intrinsics` (every clip must have camera.npz)
    require_poses: bool = False  # True: batches carry `cam_to_world` and `pose_valid` (implies intrinsics)
    batch_size: int = 1
    num_workers: int = 2
    shuffle_buffer: int = 8
    batches_per_epoch: int = 500
    augment: AugmentConfig = field(default_factory=_depth_augment)


def cut_video_sample(clip: Clip, start: int, clip_len: int, num_tracks: int,
                     rng: np.random.Generator, require_depth: bool = True, require_intrinsics: bool = False,
                     require_poses: bool = False) -> dict[str, torch.Tensor]:
    """Frames start..start+clip_len with `num_tracks` random tracks visible somewhere in the window,
    and with depth if `require_depth` (else no depth keys, so every batch has the same keys), and
    with camera keys if `require_intrinsics` / `require_poses`."""
    if require_depth and clip.depth is None:
        raise ValueError(f"clip {clip.key} in {clip.source_url} has no depth.npz; video depth needs depth "
                         "(data.require_depth=false for data without depth, e.g. colorization)")
    if clip.num_frames < clip_len:
        raise TooFewTracks(f"clip {clip.key} has {clip.num_frames} frames < clip_len {clip_len}")
    window = slice(start, start + clip_len)
    visible = clip.visible[window]
    seen = np.flatnonzero(visible.any(axis=0))
    chosen = np.sort(rng.choice(seen, size=min(num_tracks, len(seen)), replace=False))
    tracks = np.zeros((clip_len, num_tracks, 2), np.float32)
    vis = np.zeros((clip_len, num_tracks), bool)
    tracks[:, : len(chosen)] = clip.tracks[window][:, chosen]
    vis[:, : len(chosen)] = visible[:, chosen]
    first = vis.argmax(axis=0)
    xy = tracks[first, np.arange(num_tracks)]
    queries = np.concatenate([first[:, None].astype(np.float32), xy], axis=1)
    sample = {
        "video": clip.decode_frames(range(start, start + clip_len)).permute(0, 3, 1, 2),
        "tracks": torch.from_numpy(tracks),
        "visible": torch.from_numpy(vis),
        "queries": torch.from_numpy(queries),
        "valid": torch.from_numpy(np.broadcast_to(vis.any(axis=0), vis.shape).copy()),
        "clip_id": torch.tensor(clip_id(clip.key)),
    }
    if require_depth:
        sample["depth"] = torch.from_numpy(np.ascontiguousarray(clip.depth[window])).unsqueeze(1)
        sample["depth_valid"] = torch.from_numpy(np.ascontiguousarray(clip.depth_valid[window])).unsqueeze(1)
        sample["is_disparity"] = torch.tensor(clip.meta.get("depth_kind", "depth") == "disparity")
    if require_intrinsics or require_poses:
        sample.update(_camera_keys(clip, window, require_poses))
    return sample


def _camera_keys(clip: Clip, window: slice, poses: bool) -> dict[str, torch.Tensor]:
    if clip.intrinsics is None or (poses and clip.cam_to_world is None):
        missing = "camera.npz" if clip.intrinsics is None else "cam_to_world in camera.npz"
        raise ValueError(f"clip {clip.key} in {clip.source_url} has no {missing} "
                         f"(data.require_intrinsics / data.require_poses need it)")
    keys = {"intrinsics": torch.from_numpy(clip.intrinsics[window].astype(np.float32))}
    if poses:
        keys["cam_to_world"] = torch.from_numpy(clip.cam_to_world[window].astype(np.float32))
        keys["pose_valid"] = torch.from_numpy(np.ascontiguousarray(clip.pose_valid[window]))
    return keys


class VideoClipStream(TrainClipStream):
    """TrainClipStream (shard split, shuffling, fixed batches per epoch) cutting depth clips."""

    def cut_sample(self, clip: Clip, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        start = int(rng.integers(0, max(clip.num_frames - self.cfg.clip_len, 0) + 1))
        return cut_video_sample(clip, start, self.cfg.clip_len, self.cfg.num_tracks, rng, self.cfg.require_depth,
                                self.cfg.require_intrinsics, self.cfg.require_poses)


class VideoEvalClips(EvalClips):
    """EvalClips (whole validation set in memory, map-style) cutting depth clips from frame 0."""

    def __init__(self, urls: list[str], clip_len: int, num_queries: int, require_depth: bool = True,
                 require_intrinsics: bool = False, require_poses: bool = False) -> None:
        # Set before EvalClips.__init__, which cuts every clip once to find the damaged ones.
        self.require_depth = require_depth
        self.require_intrinsics, self.require_poses = require_intrinsics, require_poses
        super().__init__(urls, clip_len, num_queries)

    def cut(self, clip: Clip, index: int) -> dict[str, torch.Tensor]:
        return cut_video_sample(clip, 0, min(self.clip_len, clip.num_frames), self.num_queries,
                                np.random.default_rng(index), self.require_depth, self.require_intrinsics,
                                self.require_poses)


class VideoDataModule(TrackingDataModule):
    """TrackingDataModule (shard resolution, DDP split, device augmentation) cutting depth clips."""

    def make_train_stream(self, rank: int, world: int, start_step: int) -> VideoClipStream:
        return VideoClipStream(self.train_urls, self.cfg, rank, world, start_step)

    def make_eval_dataset(self) -> VideoEvalClips:
        return VideoEvalClips(self.val_urls, self.cfg.val_clip_len or self.cfg.clip_len, self.cfg.num_tracks,
                              self.cfg.require_depth, self.cfg.require_intrinsics, self.cfg.require_poses)


@register_datamodule("video", VideoDataConfig)
def build_video_datamodule(cfg: DictConfig) -> VideoDataModule:
    return VideoDataModule(cfg.data, seed=cfg.seed)
