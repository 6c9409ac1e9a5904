"""Pre-extract point tracks for video shards: a distributed Lightning predict job.

Every clip of the input shards is tracked by CoTracker3 (loaded strictly from an official
checkpoint) at `--num-tracks` random space-time queries (frame uniform over the clip, point uniform
over the frame), forwards and backwards, and written with its frames, depth and meta into new
shards whose tracks / visibility are the tracker's. Each rank reads its own subset of the input
shards (split by rank, then by dataloader worker) and writes its own output shards,
`<out>/<prefix>-rank<R>-<n>.tar`, so ranks never coordinate.

    python tools/extract_tracks.py --shards /data/vd/train --out /data/vd_tracks/train \\
        --checkpoint ckpt/scaled_offline.pth --variant offline --devices 8
    python tools/extract_tracks.py ... --accelerator cpu --devices 2      # gloo DDP on CPU

Queries are seeded from the clip key and `--seed`, so a rerun writes the same tracks. Each
written clip keeps its queries (`queries.npy`) and names the tracker (meta `tracks_teacher`).

`--pseudo-labels ARGS` writes training samples for pseudo-label fine-tuning instead
(`data.pseudo_labels=from_shards`): ARGS are the training run's `train.py` arguments, whose
teachers, query sampling and clip sampling are used, one labelled clip per stored video
(another `--seed` draws another clip):

    python tools/extract_tracks.py --shards /data/videos/train --out /data/pseudo/train --devices 8 \
        --pseudo-labels experiment=cotracker3_real_pseudolabel
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datamodules.clip_sampling import clip_id
from datamodules.shard_reader import SkipCounter, iter_clips
from datamodules.shards import CorruptSampleError, ShardWriter, encode_clip, expand_shards
from models.cotracker3 import CoTrackerThreeConfig
from models.cotracker3_predictor import TrackPreprocessor, build_tracker_predictor

log = logging.getLogger("extract_tracks")

# Meta fields encode_clip derives from the arrays; everything else is carried over.
_DERIVED_META = ("schema_version", "height", "width", "num_frames", "num_tracks", "fps", "source", "depth_kind",
                 "camera_convention")


class ClipSource(IterableDataset):
    """Whole clips of this rank's (and worker's) share of the shards, in shard order."""

    def __init__(self, urls: Sequence[str], rank: int, world_size: int) -> None:
        self.urls, self.rank, self.world_size = list(urls), rank, world_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        skips = SkipCounter()
        for url in self.urls[self.rank :: self.world_size][worker::workers]:
            for clip in iter_clips(url, skips):
                try:
                    frames = clip.decode_frames()
                except CorruptSampleError as err:
                    skips.corrupt += 1
                    log.warning("skipping corrupt sample: %s", err)
                    continue
                yield {"key": clip.key, "frames": frames, "jpeg_frames": clip.jpeg_frames,
                       "meta": clip.meta, "depth": clip.depth, "depth_valid": clip.depth_valid,
                       "intrinsics": clip.intrinsics, "cam_to_world": clip.cam_to_world, "pose_valid": clip.pose_valid}
        if skips.corrupt:
            log.warning("rank %d worker %d: %d damaged sample(s) skipped", self.rank, worker, skips.corrupt)


def _as_is(sample: dict[str, Any]) -> dict[str, Any]:
    return sample  # keep numpy depth arrays as they are (the default collate would convert them)


class ShardSource(L.LightningDataModule):
    def __init__(self, urls: Sequence[str], num_workers: int = 1) -> None:
        super().__init__()
        self.urls, self.num_workers = list(urls), num_workers

    def predict_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if len(self.urls) < world:
            log.warning("%d shards for %d ranks: some ranks have nothing to do", len(self.urls), world)
        # batch_size=None: clips differ in length and size; each batch is one clip.
        return DataLoader(ClipSource(self.urls, rank, world), batch_size=None, num_workers=self.num_workers,
                          collate_fn=_as_is)


class TrackExtractor(L.LightningModule):
    """predict_step: one clip -> tracks (T, N, 2) and visibility (T, N) from random space-time queries."""

    def __init__(self, predictor: torch.nn.Module, num_tracks: int = 576, seed: int = 0, teacher: str = "") -> None:
        super().__init__()
        self.preprocessor = TrackPreprocessor(predictor, num_tracks, backward_tracking=True)
        self.seed, self.teacher = seed, teacher

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        video = batch["frames"].to(self.device).permute(0, 3, 1, 2)[None].float()
        generator = torch.Generator().manual_seed(clip_id(batch["key"]) ^ self.seed)
        tracks, visible, queries = self.preprocessor(video, generator)
        return {**batch, "frames": batch["frames"].cpu(), "tracks": tracks[0].cpu().numpy(),
                "visible": visible[0].cpu().numpy(), "queries": queries[0].cpu().numpy(),
                "meta_update": {"tracks_source": "cotracker3", "track_queries": int(tracks.shape[2]),
                                "tracks_teacher": self.teacher}}


class ShardPredictionWriter(BasePredictionWriter):
    """Every rank writes the clips it predicted into its own shards (prefix carries the rank)."""

    def __init__(self, out_dir: str | Path, prefix: str = "tracks", clips_per_shard: int = 100) -> None:
        super().__init__(write_interval="batch")
        self.out_dir, self.prefix = Path(out_dir), prefix
        self.clips_per_shard = clips_per_shard
        self.writer: ShardWriter | None = None

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: dict[str, Any],
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        if self.writer is None:
            self.writer = ShardWriter(self.out_dir, prefix=f"{self.prefix}-rank{trainer.global_rank:03d}",
                                      max_count=self.clips_per_shard)
        meta = prediction["meta"]
        kept = {k: v for k, v in meta.items() if k not in _DERIVED_META}
        kept.update(prediction["meta_update"])
        self.writer.write_sample(encode_clip(
            prediction["key"], prediction["frames"].numpy(), prediction["tracks"], prediction["visible"],
            fps=meta.get("fps", 24.0), source=meta.get("source", "unknown"), depth=prediction["depth"],
            depth_valid=prediction["depth_valid"], depth_kind=meta.get("depth_kind", "depth"),
            extra_meta=kept, queries=prediction["queries"],
            encoded_frames=prediction["jpeg_frames"],  # the source's bytes (None: frames were cut)
            # Cameras of clips kept whole; pseudo-label samples are cut and cropped, so they carry none.
            intrinsics=prediction.get("intrinsics"), cam_to_world=prediction.get("cam_to_world"),
            pose_valid=prediction.get("pose_valid")))

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.writer is not None:
            self.writer.close()
            log.info("rank %d wrote %d clips to %s", trainer.global_rank, self.writer.count, self.out_dir)
            self.writer = None


def extract(shards: str | Sequence[str], out_dir: str | Path, predictor: torch.nn.Module | None = None, *,
            num_tracks: int = 576, seed: int = 0, accelerator: str = "auto", devices: int | str = "auto",
            num_nodes: int = 1, num_workers: int = 1, clips_per_shard: int = 100, prefix: str = "tracks",
            teacher: str = "", extractor: L.LightningModule | None = None) -> None:
    """Run the predict job; the outputs are shards under `out_dir`, one set per rank.

    `extractor` replaces the CoTracker3 track extractor (e.g. a PseudoLabelExtractor)."""
    devices_many = (isinstance(devices, int) and devices > 1) or num_nodes > 1
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                        strategy="ddp" if devices_many else "auto", logger=False, enable_progress_bar=False,
                        callbacks=[ShardPredictionWriter(out_dir, prefix, clips_per_shard)])
    module = extractor if extractor is not None else TrackExtractor(predictor, num_tracks, seed, teacher)
    trainer.predict(module, datamodule=ShardSource(expand_shards(shards), num_workers), return_predictions=False)


def pseudo_label_extractor(train_args: list[str], seed: int) -> L.LightningModule:
    """The pseudo-label extractor configured by a training run's arguments (its teachers and sampling)."""
    from omegaconf import OmegaConf

    from lightning_modules.pseudolabel_extraction import PseudoLabelExtractor
    from lightning_modules.pseudolabel_teachers import TeacherSet
    from train import load_config

    _, cfg = load_config(["fit", *train_args])
    if cfg.model.family != "cotracker3_pseudolabel" or cfg.data.kind != "unlabelled_videos":
        raise ValueError(f"--pseudo-labels needs a model.family=cotracker3_pseudolabel run on data.kind="
                         f"unlabelled_videos, got {cfg.model.family!r} on {cfg.data.kind!r}")
    teachers = TeacherSet.load([OmegaConf.to_object(t) for t in cfg.model.teachers])
    return PseudoLabelExtractor(teachers, OmegaConf.to_object(cfg.data), OmegaConf.to_object(cfg.model.queries), seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, nargs="+", help="input shards (pattern, directory or list)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--checkpoint", help="official CoTracker3 .pth (not with --pseudo-labels)")
    parser.add_argument("--variant", default="offline", choices=("online", "offline"))
    parser.add_argument("--arch", default="{}", help="JSON overrides of CoTrackerThreeConfig (e.g. tiny test models)")
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--num-tracks", type=int, default=576)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", default="auto")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--clips-per-shard", type=int, default=100)
    parser.add_argument("--prefix", default="tracks")
    parser.add_argument("--pseudo-labels", nargs="+", metavar="KEY=VALUE",
                        help="write pseudo-label training samples for the train.py run given by these arguments")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import json

    devices = int(args.devices) if args.devices.isdigit() else args.devices
    if args.pseudo_labels:
        from configs.loader import ConfigError
        from lightning_modules.pseudolabel_teachers import TeacherError

        try:
            extractor = pseudo_label_extractor(args.pseudo_labels, args.seed)
        except (ConfigError, TeacherError, ValueError) as err:
            parser.error(str(err))
        extract(args.shards, args.out, accelerator=args.accelerator, devices=devices, num_nodes=args.num_nodes,
                num_workers=args.num_workers, clips_per_shard=args.clips_per_shard, prefix=args.prefix,
                extractor=extractor)
        return
    if not args.checkpoint:
        parser.error("--checkpoint is required (or --pseudo-labels)")

    arch = json.loads(args.arch)
    unknown = set(arch) - {f.name for f in dataclasses.fields(CoTrackerThreeConfig)}
    if unknown:
        parser.error(f"unknown --arch keys {sorted(unknown)}")
    predictor = build_tracker_predictor({**arch, "variant": args.variant}, args.checkpoint, iters=args.iters)
    extract(args.shards, args.out, predictor, num_tracks=args.num_tracks, seed=args.seed,
            accelerator=args.accelerator, devices=devices, num_nodes=args.num_nodes, num_workers=args.num_workers,
            clips_per_shard=args.clips_per_shard, prefix=args.prefix,
            teacher=f"{Path(args.checkpoint).name} ({args.variant})")


if __name__ == "__main__":
    main()
