"""TAP-Vid evaluation data (DAVIS, RGB-Stacking, Kinetics, RoboTAP) from the official pickles.

The official files are Python pickles. They are read with the data-only unpickler of
`datamodules/safe_pickle.py`, which rebuilds dicts, lists and numpy arrays and refuses any
other global, so a tampered file cannot run code. Shards never use pickle.

Official layouts (each video: ``video`` uint8 (T, H, W, 3), ``points`` (N, T, 2) normalised
raster (x, y) in [0, 1], ``occluded`` bool (N, T)):

- DAVIS: ``tapvid_davis.pkl``, a dict video name -> video.
- RGB-Stacking: ``tapvid_rgb_stacking.pkl``, a list of videos.
- Kinetics: ``*_of_0010.pkl`` in one folder, each a list (or dict) of videos whose ``video``
  is a sequence of JPEG bytes, one per frame.
- RoboTAP: ``robotap_split*.pkl`` in one folder, each a dict video name -> video as DAVIS; the
  splits together are the benchmark (the reference merges them into one dict). A name found in
  two splits is an error rather than one video silently replacing the other.

Conversion at this border (as tapnet's readers, in tracklight's convention):

- Frames are resized to ``resize`` = (height, width), default 256x256, with torch bilinear
  interpolation (``align_corners=False``, ``antialias=True``, i.e. PIL-style bilinear with a
  widened filter when shrinking), kept as float32 0..255 without re-quantisation. tapnet
  resizes with ``mediapy.resize_video`` (PIL Lanczos on uint8), so pixels differ slightly;
  annotations do not depend on the resize.
- Points: x = x_norm * width - 0.5, y = y_norm * height - 0.5 (raster -> pixel centres at
  integers); ``metrics.tapvid`` adds the 0.5 back, so metrics match the benchmark's raster
  scaling by 256 (not 255).
- ``occluded`` is flipped to ``visible`` once, here.

Queries follow tapnet's ``sample_queries_first`` / ``sample_queries_strided``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from configs.loader import ConfigError
from configs.schema import TapVidDataConfig
from datamodules.errors import DataFormatError
from datamodules.registry import register_datamodule
from datamodules.safe_pickle import UnsafePickleError, load_data_pickle
from datamodules.workers import stop_signal_safe_loader

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("davis", "rgb_stacking", "kinetics", "robotap")
QUERY_MODES: tuple[str, ...] = ("first", "strided")
QUERY_STRIDE = 5
DEFAULT_FILES = {"davis": "tapvid_davis.pkl", "rgb_stacking": "tapvid_rgb_stacking.pkl"}
KINETICS_PATTERN = "*_of_0010.pkl"
# Datasets split over several pickles in one folder: the file-name pattern of their parts.
SPLIT_PATTERNS = {"kinetics": KINETICS_PATTERN, "robotap": "robotap_split*.pkl"}
REQUIRED_KEYS = ("video", "points", "occluded")
# Frames resized per chunk, so a long full-resolution video never sits in memory as float32.
_RESIZE_CHUNK = 16


def sample_queries_first(points: np.ndarray, occluded: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One query per track at its first visible frame; tracks never visible are dropped.

    Args:
        points: (N, T, 2) (x, y); occluded: (N, T) bool.

    Returns:
        queries (N', 3) (t, x, y), points (N', T, 2), occluded (N', T).
    """
    keep = (~occluded).any(axis=1)
    points, occluded = points[keep], occluded[keep]
    first = np.argmax(~occluded, axis=1)
    xy = points[np.arange(len(points)), first]
    queries = np.concatenate([first[:, None].astype(points.dtype), xy], axis=1)
    return queries.reshape(-1, 3), points, occluded


def sample_queries_strided(
    points: np.ndarray, occluded: np.ndarray, stride: int = QUERY_STRIDE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At frames 0, stride, 2*stride, ... every track visible there becomes a query.

    A track visible at several such frames appears once per query (its whole track copied).
    Queries are ordered by frame, then by track, as in tapnet.

    Returns:
        queries (N', 3) (t, x, y), points (N', T, 2), occluded (N', T).
    """
    queries, tracks, occs = [], [], []
    for t in range(0, occluded.shape[1], stride):
        mask = ~occluded[:, t]
        frame = np.full((int(mask.sum()), 1), t, dtype=points.dtype)
        queries.append(np.concatenate([frame, points[mask, t]], axis=1))
        tracks.append(points[mask])
        occs.append(occluded[mask])
    return (
        np.concatenate(queries).reshape(-1, 3),
        np.concatenate(tracks).reshape(-1, *points.shape[1:]),
        np.concatenate(occs).reshape(-1, occluded.shape[1]),
    )


def tapvid_pickle_files(path: str | Path, dataset: str) -> list[Path]:
    """The pickle file(s) of ``dataset`` at ``path``.

    DAVIS / RGB-Stacking: the ``.pkl`` file itself, or a folder holding the official file name.
    Kinetics / RoboTAP: a folder of ``*_of_0010.pkl`` / ``robotap_split*.pkl`` files (sorted by
    name), or a single such file.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"TAP-Vid {dataset} path does not exist: {path}")
    if path.is_file():
        return [path]
    if dataset in SPLIT_PATTERNS:
        files = sorted(path.glob(SPLIT_PATTERNS[dataset]))
        if not files:
            raise FileNotFoundError(f"no TAP-Vid {dataset} files matching {SPLIT_PATTERNS[dataset]} in {path}")
        return files
    file = path / DEFAULT_FILES[dataset]
    if not file.is_file():
        raise FileNotFoundError(f"TAP-Vid {dataset} file not found: {file}")
    return [file]


def _load_pickle(file: Path) -> Any:
    try:
        return load_data_pickle(file)
    except UnsafePickleError as err:
        raise DataFormatError(f"{file} is not a plain TAP-Vid data pickle: {err}") from None


def _records(file: Path, data: Any) -> list[tuple[Any, str]]:
    """(key into ``data``, video name) for every video in a loaded pickle."""
    if isinstance(data, Mapping):
        return [(key, str(key)) for key in data]
    if isinstance(data, (list, tuple)):
        return [(i, f"{file.stem}_{i:04d}") for i in range(len(data))]
    raise DataFormatError(f"{file}: expected a dict or list of videos at the top level, got {type(data).__name__}")


def _is_jpeg_sequence(video: Any) -> bool:
    return len(video) > 0 and isinstance(video[0], bytes)


def _check_record(file: Path, key: Any, record: Any) -> None:
    """Structure and shape checks that need no decoding."""
    where = f"{file}, video {key!r}"
    if not isinstance(record, Mapping):
        raise DataFormatError(f"{where}: expected a dict with keys {REQUIRED_KEYS}, got {type(record).__name__}")
    for name in REQUIRED_KEYS:
        if name not in record:
            raise DataFormatError(f"{where}: missing key {name!r} (has {sorted(map(str, record))})")
    points, occluded, video = np.asarray(record["points"]), np.asarray(record["occluded"]), record["video"]
    if points.ndim != 3 or points.shape[2] != 2:
        raise DataFormatError(f"{where}: key 'points' must be (N, T, 2), got shape {points.shape}")
    if occluded.shape != points.shape[:2] or occluded.dtype != bool:
        raise DataFormatError(
            f"{where}: key 'occluded' must be bool {points.shape[:2]}, got {occluded.dtype} {occluded.shape}"
        )
    if not _is_jpeg_sequence(video):
        shape = np.shape(video)
        if len(shape) != 4 or shape[3] != 3 or np.asarray(video).dtype != np.uint8:
            raise DataFormatError(f"{where}: key 'video' must be uint8 (T, H, W, 3) or JPEG bytes per frame, got {shape}")
    if len(video) != points.shape[1]:
        raise DataFormatError(f"{where}: key 'video' has {len(video)} frames but 'points' has {points.shape[1]}")


def _frames(video: Any) -> Iterator[np.ndarray]:
    """uint8 (H, W, 3) frames, decoding JPEG bytes lazily."""
    if _is_jpeg_sequence(video):
        for data in video:
            with Image.open(io.BytesIO(data)) as image:
                yield np.asarray(image.convert("RGB"))
    else:
        yield from video


def _resize_video(video: Any, size: tuple[int, int]) -> torch.Tensor:
    """(T, 3, height, width) float32 0..255, resized with antialiased bilinear when needed."""
    chunks, chunk = [], []

    def flush() -> None:
        frames = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).float()
        if tuple(frames.shape[-2:]) != size:
            frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)
        chunks.append(frames)
        chunk.clear()

    for frame in _frames(video):
        chunk.append(frame)
        if len(chunk) == _RESIZE_CHUNK:
            flush()
    if chunk:
        flush()
    return torch.cat(chunks)


class TapVidDataset(Dataset):
    """One item per TAP-Vid video, in tracklight's convention.

    Item: ``video`` float32 (T, 3, H, W) 0..255; ``queries`` float32 (N, 3) (t, x, y);
    ``tracks`` float32 (T, N, 2) (x, y) pixels, centres at integers; ``visible`` bool (T, N);
    ``valid`` bool (T, N), all True; ``name`` str; ``query_mode`` str. (H, W) = ``resize``.

    Pickles are loaded at construction to index and check every video, then re-read on demand
    (only the last file stays in memory), so Kinetics' ten files are never all held at once.
    """

    def __init__(
        self,
        path: str | Path,
        dataset: str = "davis",
        query_mode: str = "first",
        resize: tuple[int, int] = (256, 256),
        max_videos: int | None = None,
    ) -> None:
        if query_mode not in QUERY_MODES:
            raise ValueError(f"query_mode must be one of {QUERY_MODES}, got {query_mode!r}")
        self.files = tapvid_pickle_files(path, dataset)
        self.dataset = dataset
        self.query_mode = query_mode
        self.resize = (int(resize[0]), int(resize[1]))
        self._cache: tuple[Path, Any] | None = None
        self.index: list[tuple[Path, Any, str]] = []  # (file, key, name)
        seen: dict[str, Path] = {}
        for file in self.files:
            if max_videos is not None and len(self.index) >= max_videos:
                break
            log.info("loading TAP-Vid pickle %s (data-only unpickler: arrays and containers)", file)
            data = self._load(file)
            for key, name in _records(file, data):
                _check_record(file, key, data[key])
                if name in seen:
                    raise ValueError(f"video name {name!r} appears in both {seen[name]} and {file}")
                seen[name] = file
                self.index.append((file, key, name))
        if max_videos is not None:
            self.index = self.index[:max_videos]

    def _load(self, file: Path) -> Any:
        if self._cache is None or self._cache[0] != file:
            self._cache = (file, _load_pickle(file))
        return self._cache[1]

    def __getstate__(self) -> dict[str, Any]:
        # Workers started with "spawn" re-read the pickle instead of receiving it by IPC.
        return {**self.__dict__, "_cache": None}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        file, key, name = self.index[i]
        record = self._load(file)[key]
        height, width = self.resize
        video = _resize_video(record["video"], self.resize)
        points = np.asarray(record["points"], dtype=np.float64) * np.array([width, height]) - 0.5
        occluded = np.asarray(record["occluded"], dtype=bool)
        if self.query_mode == "first":
            queries, points, occluded = sample_queries_first(points, occluded)
        else:
            queries, points, occluded = sample_queries_strided(points, occluded)
        visible = torch.from_numpy(~occluded.T.copy())
        return {
            "video": video,
            "queries": torch.from_numpy(queries.astype(np.float32)),
            "tracks": torch.from_numpy(points.transpose(1, 0, 2).astype(np.float32)),
            "visible": visible,
            "valid": torch.ones_like(visible),
            "name": name,
            "query_mode": self.query_mode,
        }


class _UnpaddedDistributedSampler(DistributedSampler):
    """Rank r gets videos r, r + world, r + 2 * world, ... with no padding.

    torch's DistributedSampler (what Lightning injects) pads ranks to equal length by
    repeating videos, which would score those videos twice. Being a DistributedSampler, this
    one is left in place by Lightning. Ranks may differ by one batch; every rank needs at
    least one, because the first DDP forward after training broadcasts buffers (a collective).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        if len(dataset) < num_replicas:
            raise ValueError(
                f"TAP-Vid evaluation needs at least one video per rank: {len(dataset)} videos for"
                f" {num_replicas} ranks (raise max_videos or use fewer devices)"
            )
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.total_size = len(dataset)
        self.num_samples = len(range(rank, self.total_size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))


class TapVidDataModule(L.LightningDataModule):
    """Validation / test loaders over a TAP-Vid benchmark.

    Batches hold one video (videos differ in T and N): ``video`` (1, T, 3, H, W),
    ``queries`` (1, N, 3), ``tracks`` (1, T, N, 2), ``visible`` / ``valid`` (1, T, N),
    ``name`` and ``query_mode`` as one-element lists of str. Under DDP each rank gets a
    disjoint share of the videos (none repeated, so ``metrics.tapvid.TapVidMetrics`` summed
    across ranks is the benchmark mean); ranks may run one batch fewer than others, so do not
    log per-step values with ``sync_dist=True``.
    """

    def __init__(
        self,
        path: str | Path,
        dataset: str = "davis",
        query_mode: str = "first",
        resize: tuple[int, int] = (256, 256),
        num_workers: int = 0,
        max_videos: int | None = None,
    ) -> None:
        super().__init__()
        if query_mode not in QUERY_MODES:
            raise ValueError(f"query_mode must be one of {QUERY_MODES}, got {query_mode!r}")
        tapvid_pickle_files(path, dataset)  # fail at construction on a wrong path or dataset
        self.path = Path(path)
        self.dataset_name = dataset
        self.query_mode = query_mode
        self.resize = (int(resize[0]), int(resize[1]))
        self.num_workers = num_workers
        self.max_videos = max_videos
        self.dataset: TapVidDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = TapVidDataset(self.path, self.dataset_name, self.query_mode, self.resize, self.max_videos)

    def _dataloader(self) -> DataLoader:
        if self.dataset is None:
            self.setup()
        assert self.dataset is not None
        sampler = None
        kwargs = getattr(self.trainer, "distributed_sampler_kwargs", None) if self.trainer is not None else None
        if kwargs and kwargs.get("num_replicas", 1) > 1:
            sampler = _UnpaddedDistributedSampler(self.dataset, kwargs["num_replicas"], kwargs["rank"])
        return stop_signal_safe_loader(
            self.dataset,
            batch_size=1,
            shuffle=False,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        return self._dataloader()

    def test_dataloader(self) -> DataLoader:
        return self._dataloader()


@register_datamodule("tapvid", TapVidDataConfig)
def build_tapvid_datamodule(cfg: DictConfig) -> TapVidDataModule:
    d = cfg.data
    try:
        return TapVidDataModule(path=d.path, dataset=d.dataset, query_mode=d.query_mode, resize=tuple(d.resize),
                                num_workers=d.num_workers, max_videos=d.max_videos)
    except FileNotFoundError as err:
        raise ConfigError(f"data.path={d.path!r}: {err}") from None
    except ValueError as err:  # data.dataset or data.query_mode
        raise ConfigError(f"data: {err}") from None
