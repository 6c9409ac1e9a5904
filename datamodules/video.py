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

A mix of datasets: ``train_sets`` (each clip drawn from a set with probability proportional to its
weight) and ``val_sets`` (one validation dataloader and one metric prefix each), see
``datamodules/dataset_mix.py``; the single-set keys ``train_shards`` / ``val_shards`` are unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from configs.loader import ConfigError
from configs.schema import AugmentConfig, SyntheticDataConfig
from datamodules.clip_sampling import TooFewTracks, clip_id
from datamodules.dataset_mix import MixedStreamMixin, TrainSetConfig, ValSetConfig, check_sets
from datamodules.registry import register_datamodule
from datamodules.shards import Clip
from datamodules.tracking import EvalClips, TrackingDataModule, TrainClipStream, expand_shard_key

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
    # A mix of datasets instead of train_shards: each clip from set i with probability weight_i / sum.
    train_sets: list[TrainSetConfig] = field(default_factory=list)
    # One validation set each (instead of val_shards); default with train_sets: one per training set.
    val_sets: list[ValSetConfig] = field(default_factory=list)
    val_summary: str = "mean"  # val/<metric> over several val sets: "mean", or one set's name
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


class MixedVideoClipStream(MixedStreamMixin, VideoClipStream):
    """Depth clips from several shard sets, each clip's set drawn by weight."""

    def __init__(self, sets: list[tuple[str, list[str], float]], cfg: VideoDataConfig, rank: int, world_size: int,
                 start_step: int = 0) -> None:
        super().__init__([url for _, urls, _ in sets for url in urls], cfg, rank, world_size, start_step)
        self.sets = sets


class VideoDataModule(TrackingDataModule):
    """TrackingDataModule (shard resolution, DDP split, device augmentation) cutting depth clips."""

    def __init__(self, cfg: VideoDataConfig, seed: int = 0) -> None:
        super().__init__(cfg, seed)
        if cfg.train_sets and cfg.train_shards is not None:
            raise ConfigError("set data.train_shards or data.train_sets, not both")
        if cfg.val_sets and cfg.val_shards is not None:
            raise ConfigError("set data.val_shards or data.val_sets, not both")
        check_sets(cfg.train_sets, cfg.val_sets, cfg.val_summary)
        self.train_sets: list[tuple[str, list[str], float]] = []
        self.val_sets: list[tuple[str, list[str]]] = []
        # One validation dataloader per name (the module logs val/<name>/...); empty = one unnamed set.
        self.val_set_names = [s.name for s in (cfg.val_sets or cfg.train_sets)]
        self.val_summary = cfg.val_summary

    def _resolve_shards(self) -> tuple[str | None, str]:
        if self.cfg.train_sets or self.cfg.val_sets:
            return None, ""  # every set names its own shards (no synthetic data to generate)
        return super()._resolve_shards()

    def setup(self, stage: str | None = None) -> None:
        if not (self.cfg.train_sets or self.cfg.val_sets):
            return super().setup(stage)
        cfg = self.cfg
        if stage == "fit" and not cfg.train_sets and cfg.train_shards is None:
            raise ConfigError("data.val_sets is set but neither data.train_sets nor data.train_shards: set one "
                              "(only validate / test / predict run on validation sets alone)")
        if cfg.train_shards is not None:
            self.train_urls = expand_shard_key("data.train_shards", cfg.train_shards)
        self.train_sets = [(s.name, expand_shard_key(f"data.train_sets[{i}].shards", s.shards), float(s.weight))
                           for i, s in enumerate(cfg.train_sets)]
        if self.train_sets:
            self.train_urls = [url for _, urls, _ in self.train_sets for url in urls]
        named = [(f"data.val_sets[{i}].shards", s) for i, s in enumerate(cfg.val_sets)] or \
            [(f"data.train_sets[{i}].shards", s) for i, s in enumerate(cfg.train_sets)]
        self.val_sets = [(s.name, expand_shard_key(key, s.shards)) for key, s in named]
        self.val_urls = [url for _, urls in self.val_sets for url in urls]  # predict reads them all

    def make_train_stream(self, rank: int, world: int, start_step: int) -> VideoClipStream:
        if self.train_sets:
            return MixedVideoClipStream(self.train_sets, self.cfg, rank, world, start_step)
        return VideoClipStream(self.train_urls, self.cfg, rank, world, start_step)

    def make_eval_dataset(self, urls: list[str] | None = None) -> VideoEvalClips:
        return VideoEvalClips(self.val_urls if urls is None else urls, self.cfg.val_clip_len or self.cfg.clip_len,
                              self.cfg.num_tracks, self.cfg.require_depth, self.cfg.require_intrinsics,
                              self.cfg.require_poses)

    def _set_loaders(self) -> list[DataLoader] | DataLoader:
        if not self.val_sets:
            return self._eval_loader()
        return [self._eval_loader(self.make_eval_dataset(urls)) for _, urls in self.val_sets]

    def val_dataloader(self) -> list[DataLoader] | DataLoader:
        return self._set_loaders()

    def test_dataloader(self) -> list[DataLoader] | DataLoader:
        return self._set_loaders()


@register_datamodule("video", VideoDataConfig)
def build_video_datamodule(cfg: DictConfig) -> VideoDataModule:
    return VideoDataModule(cfg.data, seed=cfg.seed)
