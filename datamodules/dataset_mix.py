"""Training on a mix of shard sets drawn by weight, with one validation set per dataset.

``data.train_sets: [{name, shards, weight}, ...]`` (instead of ``data.train_shards``): every training
clip comes from set i with probability ``weight_i / sum(weights)``, whatever the sets' sizes (the
multi-dataset recipes of video depth models, e.g. 0.4 TartanAir + 0.3 PointOdyssey + ...). Each
(rank, dataloader worker) reader streams its own disjoint shard subset of EVERY set (the usual
split, per set) and draws the set of each clip from its own generator, seeded like the rest of the
stream (the run's seed, the epoch, the rank, the worker and the start step): the same seed gives
the same clips, and a resumed run reads a new order, as for a single set.

``data.val_sets: [{name, shards}, ...]`` (default: one per training set, on its shards): one
validation dataloader each; the module logs ``val/<name>/<metric>`` per set and ``val/<metric>`` as
their summary (``data.val_summary``: ``mean`` over the sets, or one set's name), so
``checkpoint.monitor: val/abs_rel`` keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from configs.loader import ConfigError


@dataclass
class TrainSetConfig:
    name: str = "???"
    shards: str = "???"  # brace pattern / glob / directory
    weight: float = 1.0  # relative probability of drawing a clip from this set


@dataclass
class ValSetConfig:
    name: str = "???"
    shards: str = "???"


def check_sets(train_sets: Sequence, val_sets: Sequence, val_summary: str) -> None:
    """ConfigError for duplicate or empty names, weights that are not positive and finite, or a
    `val_summary` that is neither `mean` nor a validation set's name."""
    for key, sets in (("data.train_sets", train_sets), ("data.val_sets", val_sets)):
        names = [s.name for s in sets]
        bad = [n for n in names if not n or "/" in n or names.count(n) > 1]
        if bad:
            raise ConfigError(f"{key}: names must be unique, non-empty and without '/', got {names}")
    weights = [s.weight for s in train_sets]
    if any(not (np.isfinite(w) and w > 0) for w in weights):
        raise ConfigError(f"data.train_sets weights must be positive and finite, got {weights}")
    names = [s.name for s in (val_sets or train_sets)]
    if names and val_summary != "mean" and val_summary not in names:
        raise ConfigError(f"data.val_summary={val_summary!r}: use 'mean' or one of the validation sets {names}")


def draw_by_weight(streams: Sequence[Iterator], weights: Sequence[float],
                   rng: np.random.Generator) -> Iterator[tuple[int, object]]:
    """Endless (set index, item): each item comes from the stream of a set drawn with probability
    weight / sum(weights) by `rng`, independently for every item."""
    p = np.asarray(weights, dtype=np.float64)
    p = p / p.sum()
    while True:
        i = int(rng.choice(len(streams), p=p))
        yield i, next(streams[i])


class MixedStreamMixin:
    """For a ``TrainClipStream`` subclass: samples from several shard sets, drawn by weight.

    The class sets ``sets`` (list of (name, urls, weight)); the stream's own ``urls`` are all of them.
    """

    sets: list[tuple[str, list[str], float]]

    def worker_shards(self, worker_id: int, num_workers: int) -> list[str]:
        return [url for name, urls, _ in self.sets for url in self.set_shards(name, urls, worker_id, num_workers)]

    def set_shards(self, name: str, urls: list[str], worker_id: int, num_workers: int) -> list[str]:
        mine = urls[self.rank :: self.world_size][worker_id::num_workers]
        if not mine:
            raise ValueError(f"training set {name!r}: {len(urls)} shards cannot be split over {self.world_size} "
                             f"ranks x {num_workers} workers; write more, smaller shards (tools/convert.py "
                             "--clips-per-shard) or lower data.num_workers")
        return mine

    def worker_samples(self, worker_id: int, num_workers: int, rng: np.random.Generator,
                       skips: object) -> Iterator[dict[str, torch.Tensor]]:
        # One child generator per set's stream (shuffling, clip cuts) and one for the draws, so that a
        # set's own order does not depend on how often the others were drawn.
        *children, draws = rng.spawn(len(self.sets) + 1)
        streams = [self._samples(self.set_shards(name, urls, worker_id, num_workers), child, skips)
                   for (name, urls, _), child in zip(self.sets, children)]
        return (sample for _, sample in draw_by_weight(streams, [w for *_, w in self.sets], draws))
