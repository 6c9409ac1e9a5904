"""TrackingDataModule: stream point-tracking clips from shards, augment on the device."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from configs.loader import ConfigError
from configs.schema import TrackingDataConfig
from datamodules.augment import augment_tracking_batch
from datamodules.clip_sampling import TooFewTracks, cut_eval_sample, cut_training_sample
from datamodules.registry import register_datamodule
from datamodules.shard_reader import SkipCounter, iter_clips
from datamodules.shards import Clip, CorruptSampleError, expand_shards
from datamodules.synthetic_shards import ensure_synthetic_shards
from datamodules.workers import stop_signal_safe_loader

log = logging.getLogger(__name__)


def _collate(samples: list[dict[str, torch.Tensor]], skips: tuple[int, int]) -> dict[str, torch.Tensor]:
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    batch["num_corrupt_skipped"] = torch.tensor(skips[0])
    batch["num_too_few_tracks_skipped"] = torch.tensor(skips[1])
    return batch


# Consecutive clips that cannot give a sample before the stream gives up with an error.
MAX_UNUSABLE_IN_A_ROW = 500


class TrainClipStream(IterableDataset):
    """Endless shuffled training batches from this rank's (and worker's) disjoint shard subset.

    Shards are split by rank first, then by dataloader worker, so no two (rank, worker) pairs
    read the same shard; each pass over the subset is re-shuffled. Every rank yields exactly
    `batches_per_epoch` batches per epoch whatever its data, so DDP never waits on a rank.

    The order depends on the run's seed, the epoch and `start_step`, the global step training
    starts from: a run resumed from a checkpoint reads a new order (not the first batches again),
    the same one each time it resumes from that checkpoint.
    """

    def __init__(self, urls: list[str], cfg: TrackingDataConfig, rank: int, world_size: int,
                 start_step: int = 0) -> None:
        self.urls, self.cfg, self.rank, self.world_size = urls, cfg, rank, world_size
        self.start_step = start_step

    def __len__(self) -> int:
        return self.cfg.batches_per_epoch

    def worker_shards(self, worker_id: int, num_workers: int) -> list[str]:
        """The shards one (rank, worker) reader owns; raises when the split leaves it none."""
        urls = self.urls[self.rank :: self.world_size][worker_id::num_workers]
        if not urls:
            raise ValueError(
                f"{len(self.urls)} training shards cannot be split over {self.world_size} ranks x "
                f"{num_workers} workers; write more, smaller shards or lower data.num_workers"
            )
        return urls

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info else (0, 1)
        # torch's RNG is seeded per epoch and per worker by the DataLoader (and by seed_everything).
        rng = np.random.default_rng([int(torch.randint(0, 2**62, (1,))), self.rank, worker_id, self.start_step])
        share = self.cfg.batches_per_epoch // num_workers + (worker_id < self.cfg.batches_per_epoch % num_workers)
        skips = SkipCounter()
        samples = self.worker_samples(worker_id, num_workers, rng, skips)
        for _ in range(share):
            batch = [next(samples) for _ in range(self.cfg.batch_size)]
            yield _collate(batch, skips.take())

    def worker_samples(self, worker_id: int, num_workers: int, rng: np.random.Generator,
                       skips: SkipCounter) -> Iterator[dict[str, torch.Tensor]]:
        """This reader's endless sample stream (a dataset mix draws from several, datamodules/dataset_mix.py)."""
        return self._samples(self.worker_shards(worker_id, num_workers), rng, skips)

    def _clips(self, urls: list[str], rng: np.random.Generator, skips: SkipCounter) -> Iterator[Clip]:
        while True:
            produced = False
            for i in rng.permutation(len(urls)):
                for clip in iter_clips(urls[i], skips):
                    produced = True
                    yield clip
            if not produced:
                raise RuntimeError(f"no readable sample in training shards {urls}")

    def _samples(self, urls: list[str], rng: np.random.Generator, skips: SkipCounter) -> Iterator[dict[str, torch.Tensor]]:
        buffer: list[Clip] = []
        unusable_in_a_row = 0
        for clip in self._clips(urls, rng, skips):
            buffer.append(clip)
            if len(buffer) < self.cfg.shuffle_buffer:
                continue
            clip = buffer.pop(int(rng.integers(len(buffer))))
            try:
                sample = self.cut_sample(clip, rng)
            except TooFewTracks as err:
                skips.too_few_tracks += 1
                log.debug("skipping clip: %s", err)
                problem = (f"clips in a row were too short or had too few tracks (last: {err}); lower "
                           f"data.clip_len ({self.cfg.clip_len}) or data.num_queries / data.num_tracks to what "
                           f"the shards {urls[:3]}... hold")
            except CorruptSampleError as err:
                skips.corrupt += 1
                log.warning("skipping corrupt sample: %s", err)
                problem = f"clips in a row were corrupt (last: {err})"
            else:
                unusable_in_a_row = 0
                yield sample
                continue
            unusable_in_a_row += 1
            if unusable_in_a_row >= MAX_UNUSABLE_IN_A_ROW:  # otherwise the stream would spin forever
                raise RuntimeError(f"{unusable_in_a_row} {problem}")

    def cut_sample(self, clip: Clip, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """One fixed-shape training sample from a stored clip (subclasses cut other sample kinds)."""
        return cut_training_sample(clip, self.cfg.clip_len, self.cfg.num_queries, self.cfg.random_query_fraction, rng)


class EvalClips(Dataset):
    """Map-style validation set: every usable sample of the given shards, held compressed in memory.

    Validation sets are small; map-style lets Lightning's DistributedSampler split them. Each clip
    is cut once here, so damaged clips (and clips with too few tracks) are skipped and counted up
    front (`skipped`) instead of failing a validation epoch.
    """

    def __init__(self, urls: list[str], clip_len: int, num_queries: int) -> None:
        self.clip_len, self.num_queries = clip_len, num_queries
        self.skipped = SkipCounter()
        self.clips: list[Clip] = []
        for clip in (clip for url in urls for clip in iter_clips(url, self.skipped)):
            if self._usable(clip, len(self.clips)):
                self.clips.append(clip)
        if self.skipped.corrupt or self.skipped.too_few_tracks:
            log.warning("validation set: %d clip(s) kept, %d corrupt and %d with too few tracks skipped",
                        len(self.clips), self.skipped.corrupt, self.skipped.too_few_tracks)
        if not self.clips:
            raise FileNotFoundError(f"validation shards {urls} hold no usable sample")

    def _usable(self, clip: Clip, index: int) -> bool:
        try:
            self.cut(clip, index)
        except CorruptSampleError as err:
            self.skipped.corrupt += 1
            log.warning("skipping corrupt validation sample: %s", err)
            return False
        except TooFewTracks as err:
            self.skipped.too_few_tracks += 1
            log.warning("skipping validation clip: %s", err)
            return False
        return True

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.cut(self.clips[index], index)

    def cut(self, clip: Clip, index: int) -> dict[str, torch.Tensor]:
        """The evaluation sample of `clip` (subclasses cut other sample kinds)."""
        return cut_eval_sample(clip, self.clip_len, self.num_queries, seed=index)


def expand_shard_key(key: str, pattern: str) -> list[str]:
    try:
        return expand_shards(pattern)
    except FileNotFoundError:
        raise ConfigError(f"{key}={pattern!r} matches no shard files") from None


class TrackingDataModule(L.LightningDataModule):
    def __init__(self, cfg: TrackingDataConfig, seed: int = 0) -> None:
        super().__init__()
        if cfg.batch_size < 1:
            raise ConfigError(f"data.batch_size={cfg.batch_size}: must be at least 1")
        self.cfg, self.seed = cfg, seed
        self.train_urls: list[str] = []
        self.val_urls: list[str] = []

    def _resolve_shards(self) -> tuple[str | None, str]:
        """(train, val) shard specs: the configured ones, else the embedded synthetic data."""
        train, val = self.cfg.train_shards, self.cfg.val_shards
        if train is None and val is None:
            return ensure_synthetic_shards(self.cfg.synthetic)
        return train, val or train

    def prepare_data(self) -> None:
        self._resolve_shards()  # generates the synthetic cache once per node

    def setup(self, stage: str | None = None) -> None:
        train, val = self._resolve_shards()
        if train is None and stage == "fit":
            raise ConfigError("data.val_shards is set but data.train_shards is not: set data.train_shards too "
                              "(only validate / test / predict run on data.val_shards alone)")
        self.train_urls = expand_shard_key("data.train_shards", train) if train is not None else []
        self.val_urls = expand_shard_key("data.val_shards" if self.cfg.val_shards else "data.train_shards", val)

    def _rank_world_step(self) -> tuple[int, int, int]:
        trainer = self.trainer  # a resumed run has restored its global step when it asks for the loader
        return (trainer.global_rank, trainer.world_size, trainer.global_step) if trainer is not None else (0, 1, 0)

    def make_train_stream(self, rank: int, world: int, start_step: int) -> TrainClipStream:
        return TrainClipStream(self.train_urls, self.cfg, rank, world, start_step)

    def make_eval_dataset(self) -> Dataset:
        return EvalClips(self.val_urls, self.cfg.val_clip_len or self.cfg.clip_len,
                         self.cfg.val_num_queries or self.cfg.num_queries)

    def train_dataloader(self) -> DataLoader:
        stream = self.make_train_stream(*self._rank_world_step())
        workers = self.cfg.num_workers
        return stop_signal_safe_loader(stream, batch_size=None, num_workers=workers, persistent_workers=False,
                                       prefetch_factor=2 if workers else None)

    def _eval_loader(self, dataset: Dataset | None = None) -> DataLoader:
        dataset = self.make_eval_dataset() if dataset is None else dataset
        return stop_signal_safe_loader(dataset, batch_size=self.cfg.batch_size, shuffle=False,
                                       num_workers=min(self.cfg.num_workers, len(dataset)))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        batch["video"] = batch["video"].float()
        trainer = self.trainer
        if trainer is not None and trainer.training and self.cfg.augment.enabled:
            batch = augment_tracking_batch(batch, self.cfg.augment, self.cfg.crop_hw)
        return batch


@register_datamodule("tracking", TrackingDataConfig)
def build_tracking_datamodule(cfg: DictConfig) -> TrackingDataModule:
    return TrackingDataModule(cfg.data, seed=cfg.seed)
