"""Unlabelled video clips for pseudo-label training (`data.kind=unlabelled_videos`).

Training clips come from colour shards (any tracks stored in them are ignored) and are cut
as co-tracker's ``RealDataset`` cuts real videos:

- length ``clip_len`` frames, or (``random_clip_len``, the offline recipe) uniform in
  [clip_len // 2, clip_len), drawn once per batch so the batch stacks (the reference trains
  one clip per GPU, so there the draw is per clip);
- a video shorter than the length is extended by playing it backwards, then forwards again,
  and so on;
- ``random_frame_rate``: a stride uniform in [1, min(max_frame_rate, frames // length)), i.e.
  1 to 3 (the reference's ``np.random.randint`` excludes its upper bound);
- a start uniform over the positions that fit (the reference's draw excludes the last one);
- a random ``crop_hw`` crop at full resolution (no resize, no augmentation); a video smaller
  than the crop is skipped and counted.

With ``pseudo_labels=from_shards`` the shards were written by
``tools/extract_tracks.py --pseudo-labels``: each sample is a training clip already cut and
labelled (queries, teacher tracks and pseudo visibility, meta ``pseudo_labels`` naming the
teacher), read as stored. Validation is on labelled tracking shards (``val_shards``) or a
TAP-Vid benchmark (``val_tapvid``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from configs.schema import TapVidDataConfig
from datamodules.clip_sampling import TooFewTracks, clip_id
from datamodules.registry import register_datamodule
from datamodules.shards import Clip, ShardFormatError, expand_shards
from datamodules.tapvid import TapVidDataModule
from datamodules.tracking import EvalClips, TrainClipStream
from datamodules.workers import ignore_stop_signals

PSEUDO_LABEL_SOURCES = ("on_the_fly", "from_shards")
MIN_CLIP_LEN = 8  # the reference refuses shorter training clips


@dataclass
class UnlabelledVideoDataConfig:
    kind: str = "unlabelled_videos"
    train_shards: str = "???"  # colour shards (tools/convert.py videos), or pre-extracted pseudo-labels
    pseudo_labels: str = "on_the_fly"  # on_the_fly (teachers run every step) | from_shards
    num_queries: int = 384  # tracks per clip (reference --traj_per_sample)
    clip_len: int = 64  # reference --sequence_len
    random_clip_len: bool = False  # length uniform in [clip_len // 2, clip_len) (offline recipe)
    random_frame_rate: bool = True  # reference --random_frame_rate
    max_frame_rate: int = 4
    crop_hw: Optional[list[int]] = None  # (H, W) random crop; None keeps the stored size
    batch_size: int = 1
    num_workers: int = 2
    shuffle_buffer: int = 32
    batches_per_epoch: int = 500
    val_shards: Optional[str] = None  # labelled tracking shards
    val_clip_len: Optional[int] = None  # None -> clip_len
    val_num_queries: int = 256
    val_tapvid: Optional[TapVidDataConfig] = None  # or a TAP-Vid benchmark (path, dataset, query_mode, ...)

    def __post_init__(self) -> None:
        if self.pseudo_labels not in PSEUDO_LABEL_SOURCES:
            raise ValueError(f"data.pseudo_labels must be one of {PSEUDO_LABEL_SOURCES}, got {self.pseudo_labels!r}")
        shortest = self.clip_len // 2 if self.random_clip_len else self.clip_len
        if shortest < MIN_CLIP_LEN:
            raise ValueError(f"data.clip_len={self.clip_len} allows clips of {shortest} frames; "
                             f"clips need at least {MIN_CLIP_LEN} (as in the reference)")


def draw_clip_len(cfg: UnlabelledVideoDataConfig, rng: np.random.Generator) -> int:
    return int(rng.integers(cfg.clip_len // 2, cfg.clip_len)) if cfg.random_clip_len else cfg.clip_len


def clip_frame_indices(num_frames: int, length: int, cfg: UnlabelledVideoDataConfig,
                       rng: np.random.Generator) -> np.ndarray:
    """Indices of the `length` frames of a training clip cut from a video of `num_frames` frames."""
    if num_frames < 1:
        raise TooFewTracks("video has no frames")
    order = np.arange(num_frames)
    while len(order) < length:  # play back and forth until long enough
        order = np.concatenate([order, order[::-1]])
    stride = 1
    if cfg.random_frame_rate:
        top = min(cfg.max_frame_rate, len(order) // length)
        if top > 1:
            stride = int(rng.integers(1, top))
    span = length * stride
    start = int(rng.integers(0, len(order) - span)) if span < len(order) else 0
    return order[start:start + span:stride]


def crop_origin(hw: tuple[int, int], crop_hw: tuple[int, int] | None, rng: np.random.Generator,
                key: str) -> tuple[int, int]:
    """Top-left (y0, x0) of a random crop, drawn like the reference (last offset excluded)."""
    if crop_hw is None:
        return 0, 0
    (H, W), (ch, cw) = hw, crop_hw
    if H < ch or W < cw:
        raise TooFewTracks(f"clip {key} is {W}x{H}, smaller than the crop {cw}x{ch}")
    return (int(rng.integers(0, H - ch)) if H > ch else 0), (int(rng.integers(0, W - cw)) if W > cw else 0)


def cut_unlabelled_clip(clip: Clip, length: int, cfg: UnlabelledVideoDataConfig,
                        rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """A training clip: uint8 video (T, 3, h, w) and the clip id."""
    frames = clip_frame_indices(clip.num_frames, length, cfg, rng)
    crop = tuple(cfg.crop_hw) if cfg.crop_hw is not None else None
    y0, x0 = crop_origin((clip.meta["height"], clip.meta["width"]), crop, rng, clip.key)
    video = clip.decode_frames(frames.tolist()).permute(0, 3, 1, 2)
    if crop is not None:
        video = video[:, :, y0:y0 + crop[0], x0:x0 + crop[1]].contiguous()
    return {"video": video, "clip_id": torch.tensor(clip_id(clip.key))}


def stored_pseudo_labels(clip: Clip) -> dict[str, torch.Tensor]:
    """A sample written by the pseudo-label extraction job, as stored."""
    info = clip.meta.get("pseudo_labels")
    if info is None or clip.queries is None:
        raise ShardFormatError(f"{clip.source_url} sample {clip.key}: not a pre-extracted pseudo-label sample "
                               "(needs queries.npy and meta 'pseudo_labels'; write it with "
                               "tools/extract_tracks.py --pseudo-labels)")
    visible = torch.from_numpy(np.ascontiguousarray(clip.visible))
    return {
        "video": clip.decode_frames().permute(0, 3, 1, 2),
        "queries": torch.from_numpy(np.ascontiguousarray(clip.queries)),
        "tracks": torch.from_numpy(np.ascontiguousarray(clip.tracks)),
        "visible": visible,
        "valid": torch.full(visible.shape, bool(info["keypoints_found"])),
        "occluded_loss": torch.tensor(bool(info["occluded_loss"])),
        "clip_id": torch.tensor(clip_id(clip.key)),
    }


class UnlabelledClipStream(TrainClipStream):
    """Batches of unlabelled training clips (or stored pseudo-labelled ones).

    The parent cuts samples lazily, one batch after another, so a length drawn when a batch's
    first sample is cut holds for exactly that batch.
    """

    def __init__(self, urls: list[str], cfg: UnlabelledVideoDataConfig, rank: int, world_size: int) -> None:
        super().__init__(urls, cfg, rank, world_size)
        self.length = cfg.clip_len
        self.left_in_batch = 0

    def cut_sample(self, clip: Clip, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        if self.cfg.pseudo_labels == "from_shards":
            sample = stored_pseudo_labels(clip)
            expected = (self.cfg.num_queries, *(self.cfg.crop_hw or ()))
            found = (sample["queries"].shape[0], *(sample["video"].shape[-2:] if self.cfg.crop_hw else ()))
            if found != expected or (not self.cfg.random_clip_len and sample["video"].shape[0] != self.cfg.clip_len):
                raise ShardFormatError(
                    f"{clip.source_url} sample {clip.key}: {sample['video'].shape[0]} frames, {found[0]} queries, size "
                    f"{tuple(sample['video'].shape[-2:])}; the config expects data.clip_len={self.cfg.clip_len}, "
                    f"data.num_queries={self.cfg.num_queries}, data.crop_hw={self.cfg.crop_hw}")
            return sample
        if self.left_in_batch == 0:
            self.length = draw_clip_len(self.cfg, rng)
            self.left_in_batch = self.cfg.batch_size
        sample = cut_unlabelled_clip(clip, self.length, self.cfg, rng)
        self.left_in_batch -= 1
        return sample


class UnlabelledVideoDataModule(L.LightningDataModule):
    def __init__(self, cfg: UnlabelledVideoDataConfig) -> None:
        super().__init__()
        if cfg.val_shards is None and cfg.val_tapvid is None:
            raise ValueError("data.kind=unlabelled_videos needs labelled validation clips: set data.val_shards "
                             "(tracking shards) or data.val_tapvid (a TAP-Vid benchmark)")
        if cfg.pseudo_labels == "from_shards" and cfg.random_clip_len and cfg.batch_size > 1:
            raise ValueError("pre-extracted clips of random lengths cannot be stacked: use data.batch_size=1")
        self.cfg = cfg
        self.train_urls: list[str] = []
        self.val_urls: list[str] = []
        self.tapvid = None if cfg.val_tapvid is None else TapVidDataModule(
            path=cfg.val_tapvid.path, dataset=cfg.val_tapvid.dataset, query_mode=cfg.val_tapvid.query_mode,
            resize=tuple(cfg.val_tapvid.resize), num_workers=cfg.val_tapvid.num_workers,
            max_videos=cfg.val_tapvid.max_videos)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_urls = expand_shards(self.cfg.train_shards)
        if self.cfg.val_shards is not None and self.tapvid is None:
            self.val_urls = expand_shards(self.cfg.val_shards)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        workers = self.cfg.num_workers
        return DataLoader(UnlabelledClipStream(self.train_urls, self.cfg, rank, world), batch_size=None,
                          num_workers=workers, prefetch_factor=2 if workers else None,
                          worker_init_fn=ignore_stop_signals)

    def _eval_loader(self) -> DataLoader:
        if self.tapvid is not None:
            self.tapvid.trainer = self.trainer  # its sampler splits videos over ranks
            return self.tapvid.val_dataloader()
        dataset = EvalClips(self.val_urls, self.cfg.val_clip_len or self.cfg.clip_len, self.cfg.val_num_queries)
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=False,
                          num_workers=min(self.cfg.num_workers, len(dataset)), worker_init_fn=ignore_stop_signals)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        batch["video"] = batch["video"].float()  # no augmentation: the reference trains on real clips as they are
        return batch


@register_datamodule("unlabelled_videos", UnlabelledVideoDataConfig)
def build_unlabelled_video_datamodule(cfg: DictConfig) -> UnlabelledVideoDataModule:
    from omegaconf import OmegaConf

    return UnlabelledVideoDataModule(OmegaConf.to_object(cfg.data))
