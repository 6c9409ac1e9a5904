"""Published video depth benchmarks as data: whole protocol videos, one dataloader per dataset.

``data.kind: depth_benchmark`` (``configs/data/depth_bench_*.yaml``, ``experiment=depth_benchmark_*``)
reads the shards ``tools/convert.py DATASET SRC OUT --split bench --benchmark NAME`` writes (one clip
per protocol video) and serves each video WHOLE, exactly as the protocol feeds the model:

- frames, depth, validity, cameras and tracks cropped like the reference extractors crop them
  (``BenchmarkSet.crop_box``: ScanNet's border, NYUv2's Eigen crop, KITTI's and Bonn's even sizes),
  except for VDA's TAE, whose model sees the uncropped frames and whose metric crops the
  prediction (``crop_input=False``; ``SetProtocol.metric_crop``);
- the protocol (crop, cap, TAE) comes from the table in ``datamodules/depth_benchmarks.py`` named by
  the set's ``benchmark`` / ``dataset``; every clip's ``meta.benchmark`` (written by the converter)
  must agree with it, so shards converted for another protocol are an error, not a wrong number.

One batch = one video (B = 1), a dict: ``video_key`` (a list of one str), ``video`` uint8
(1, T, 3, H, W), ``depth`` float32 (1, T, 1, H, W) metres, ``depth_valid`` bool (1, T, 1, H, W),
``tracks`` float32 (1, T, N, 2) and ``visible`` bool (1, T, N) (N = 0 unless ``tools/extract_tracks.py``
added tracks; points outside the crop are marked invisible), and with TAE ``intrinsics`` float64
(1, T, 3, 3) in pixels of ``video`` and ``cam_to_world`` float64 (1, T, 4, 4).

DDP: the videos of a set, in shard order (sorted shard names, then order inside each shard), are
dealt round-robin to the (rank, dataloader worker) readers: reader r of R keeps videos r, r + R, ...
Every video is evaluated whole by exactly one process, and no video is read twice (a rank may get one
video more than another; nothing waits on that). A damaged video is skipped with a warning; the
table shows how many videos each set has against the protocol's count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from configs.loader import ConfigError
from datamodules.depth_benchmarks import BenchmarkSet, benchmark_set
from datamodules.registry import register_datamodule
from datamodules.shard_reader import SkipCounter, iter_shard
from datamodules.shards import Clip, CorruptSampleError, ShardFormatError, decode_clip, expand_shards
from datamodules.workers import stop_signal_safe_loader
from metrics.depth_benchmark import Crop, crop_intrinsics

log = logging.getLogger(__name__)


@dataclass
class BenchmarkSetConfig:
    """One dataset of a benchmark run: one dataloader, one table row, metrics `val/<name>/...`."""

    name: str = "???"
    shards: str = "???"  # shard pattern, glob or directory; a relative path is under data.root
    benchmark: str = "depthcrafter"  # the protocol: depthcrafter | vda500 | tae (datamodules/depth_benchmarks.py)
    dataset: Optional[str] = None  # the protocol's dataset (sintel, scannet, kitti, bonn, nyuv2); None = name
    tae: Optional[bool] = None  # also compute TAE (needs cameras); None = for the `tae` protocol only


@dataclass
class DepthBenchmarkDataConfig:
    kind: str = "depth_benchmark"
    # Folder holding the converted protocol shards (the OUT folders of tools/convert.py ... --split bench);
    # the configs read it from $DEPTH_BENCH_ROOT.
    root: Optional[str] = None
    sets: list[BenchmarkSetConfig] = field(default_factory=list)
    # Inference as Video Depth Anything's: the shorter side to `input_size` (multiple of 14, aspect kept);
    # with `shrink_wide`, videos wider than 1.78:1 get a proportionally smaller size (KITTI: 280).
    input_size: int = 518
    shrink_wide: bool = True
    # Long videos run in windows of `window` frames sharing `overlap` frames, stitched as tools/predict.py does.
    window: int = 32
    overlap: int = 8
    tracks_seed: int = 0  # on-the-fly tracker: window i's random queries come from seed tracks_seed + i
    tae_reference: bool = False  # reproduce eval_tae.py's TAE defects (README "Video depth benchmark protocol")
    num_workers: int = 2


@dataclass(frozen=True)
class SetProtocol:
    """What the evaluation needs to know about one set (the module builds its metric from it)."""

    name: str
    benchmark: str
    bench: BenchmarkSet
    shards: str
    tae: bool

    @property
    def cap(self) -> float:
        return self.bench.max_depth

    @property
    def metric_crop(self) -> Crop | None:
        """The crop the metric applies (None: the video is already cropped)."""
        return None if self.bench.crop_input else self.bench.crop

    @property
    def expected_videos(self) -> int:
        return len(self.bench.sequences)


def set_protocols(cfg: DepthBenchmarkDataConfig | DictConfig) -> list[SetProtocol]:
    """The configured sets with their protocols; ConfigError for an unknown protocol, a duplicate
    name, no sets, a relative shard path without data.root, or windows that cannot advance."""
    if not 0 <= cfg.overlap < cfg.window:
        raise ConfigError(f"data.overlap={cfg.overlap} must be at least 0 and below data.window={cfg.window}")
    if cfg.input_size < 14:
        raise ConfigError(f"data.input_size={cfg.input_size}: at least one 14-pixel patch")
    if not cfg.sets:
        raise ConfigError("data.sets is empty: list the benchmark sets to evaluate "
                          "(e.g. experiment=depth_benchmark_depthcrafter or data=depth_bench_sintel)")
    protocols, names = [], set()
    for i, s in enumerate(cfg.sets):
        where = f"data.sets[{i}]"
        if s.name in names or not s.name or "/" in s.name:
            raise ConfigError(f"{where}.name={s.name!r}: names must be unique, non-empty and without '/'")
        names.add(s.name)
        dataset = s.dataset or s.name
        try:
            bench = benchmark_set(s.benchmark, dataset)
        except KeyError as err:
            raise ConfigError(f"{where} ({s.name}): {err.args[0]}") from None
        shards = s.shards
        if not Path(shards).is_absolute() and "://" not in shards and not shards.startswith("pipe:"):
            if not cfg.root:
                raise ConfigError(f"data.root is not set, and {where}.shards={shards!r} is relative to it: "
                                  "export DEPTH_BENCH_ROOT=<folder of the converted benchmark shards> or pass "
                                  "data.root=...")
            shards = str(Path(cfg.root) / shards)
        tae = s.benchmark == "tae" if s.tae is None else bool(s.tae)
        protocols.append(SetProtocol(s.name, s.benchmark, bench, shards, tae))
    return protocols


def inference_input_size(height: int, width: int, input_size: int = 518, shrink_wide: bool = True,
                         multiple: int = 14) -> int:
    """The network size Video Depth Anything infers a video at (``infer_video_depth``): `input_size`,
    or for frames wider than 1.78:1 ``round(int(input_size * 1.777 / ratio) / 14) * 14``."""
    ratio = max(height, width) / min(height, width)
    if shrink_wide and ratio > 1.78:
        return max(multiple, round(int(input_size * 1.777 / ratio) / multiple) * multiple)
    return input_size


def _check_protocol(clip: Clip, protocol: SetProtocol) -> None:
    meta = clip.meta.get("benchmark")
    where = f"{clip.source_url} sample {clip.key}"
    if not isinstance(meta, dict):
        raise ShardFormatError(f"{where} is not a protocol clip (no meta.benchmark): convert it with "
                               f"tools/convert.py {protocol.bench.dataset} SRC OUT --split bench "
                               f"--benchmark {protocol.benchmark}")
    b = protocol.bench
    expected = {"name": protocol.benchmark, "dataset": b.dataset, "max_depth": b.max_depth,
                "crop": list(b.crop) if b.crop else None, "even_crop": b.even_crop}
    wrong = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
    if wrong:
        raise ShardFormatError(f"{where} was converted for another protocol ({wrong}); set {protocol.name!r} "
                               f"evaluates {expected}")


def protocol_video(clip: Clip, protocol: SetProtocol) -> dict[str, Any]:
    """One whole video as the protocol feeds it to the model (module docstring; without the batch dimension)."""
    _check_protocol(clip, protocol)
    where = f"{clip.source_url} sample {clip.key}"
    if clip.depth is None:
        raise ShardFormatError(f"{where} has no depth.npz")
    if clip.meta.get("depth_kind", "depth") != "depth":
        raise ShardFormatError(f"{where} stores {clip.meta['depth_kind']}; the protocol needs metric depth")
    H, W = clip.depth.shape[1:]
    r0, r1, c0, c1 = protocol.bench.crop_box(H, W) if protocol.bench.crop_input else (0, H, 0, W)
    video = clip.decode_frames().permute(0, 3, 1, 2)[:, :, r0:r1, c0:c1]
    tracks = torch.from_numpy(clip.tracks - np.array([c0, r0], np.float32))
    inside = ((tracks >= -0.5) & (tracks < torch.tensor([c1 - c0, r1 - r0]) - 0.5)).all(-1)  # centres at integers
    item = {
        "video_key": clip.key,
        "video": video.contiguous(),
        "depth": torch.from_numpy(np.ascontiguousarray(clip.depth[:, None, r0:r1, c0:c1])),
        "depth_valid": torch.from_numpy(np.ascontiguousarray(clip.depth_valid[:, None, r0:r1, c0:c1])),
        "tracks": tracks,
        "visible": torch.from_numpy(clip.visible) & inside,
    }
    if protocol.tae:
        if clip.intrinsics is None or clip.cam_to_world is None:
            raise ShardFormatError(f"{where} has no camera.npz with cam_to_world; TAE (set {protocol.name!r}) needs "
                                   "ground-truth intrinsics and poses")
        item["intrinsics"] = crop_intrinsics(torch.from_numpy(clip.intrinsics).double(), r0, c0)
        item["cam_to_world"] = torch.from_numpy(clip.cam_to_world).double()
    return item


class BenchmarkVideos(IterableDataset):
    """The protocol videos of one set that this (rank, worker) reader evaluates (module docstring)."""

    def __init__(self, urls: list[str], protocol: SetProtocol, rank: int = 0, world_size: int = 1) -> None:
        self.urls, self.protocol, self.rank, self.world_size = urls, protocol, rank, world_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        reader, readers = self.rank * workers + worker, self.world_size * workers
        skips = SkipCounter()
        index = -1
        for url in self.urls:
            for raw in iter_shard(url, skips):
                index += 1
                if index % readers != reader:
                    continue
                try:
                    clip = decode_clip(raw)
                    yield protocol_video(clip, self.protocol)
                except CorruptSampleError as err:
                    log.warning("set %s: skipping a damaged video: %s", self.protocol.name, err)
        if skips.corrupt:
            log.warning("set %s: %d damaged shard part(s) skipped (see the warnings above)", self.protocol.name,
                        skips.corrupt)


class DepthBenchmarkDataModule(L.LightningDataModule):
    """One validation (and test) dataloader per benchmark set, in the configured order."""

    def __init__(self, cfg: DepthBenchmarkDataConfig | DictConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.protocols = set_protocols(cfg)
        self.val_set_names = [p.name for p in self.protocols]
        self.urls: list[list[str]] = []

    def setup(self, stage: str | None = None) -> None:
        if stage == "fit":
            raise ConfigError("data.kind=depth_benchmark evaluates (validate / test); to train, use video shards "
                              "(data=video_shards, data.train_sets for a mix of datasets)")
        self.urls = []
        for i, p in enumerate(self.protocols):
            try:
                self.urls.append(expand_shards(p.shards))
            except FileNotFoundError:
                raise ConfigError(f"data.sets[{i}] ({p.name}): no shards at {p.shards!r} (convert with "
                                  f"tools/convert.py {p.bench.dataset} SRC OUT --split bench --benchmark {p.benchmark})"
                                  ) from None

    def _loaders(self) -> list[DataLoader]:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        workers = self.cfg.num_workers
        # A batch is one whole video: videos differ in length and size.
        return [stop_signal_safe_loader(BenchmarkVideos(urls, p, rank, world), batch_size=1, num_workers=workers,
                                        prefetch_factor=1 if workers else None)
                for urls, p in zip(self.urls, self.protocols)]

    def val_dataloader(self) -> list[DataLoader]:
        return self._loaders()

    def test_dataloader(self) -> list[DataLoader]:
        return self._loaders()

    def predict_dataloader(self) -> DataLoader:
        raise ConfigError("data.kind=depth_benchmark is for validate / test; to write depth maps use "
                          "tools/predict.py depth on video files")


@register_datamodule("depth_benchmark", DepthBenchmarkDataConfig)
def build_depth_benchmark_datamodule(cfg: DictConfig) -> DepthBenchmarkDataModule:
    return DepthBenchmarkDataModule(cfg.data)
