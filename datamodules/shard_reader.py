"""Read raw samples (member name -> bytes) from shards, skipping and counting corrupt ones."""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import webdataset as wds

log = logging.getLogger(__name__)


@dataclass
class SkipCounter:
    """Samples lost to bad data since the last `take()`; reported with each batch."""

    corrupt: int = 0
    too_few_tracks: int = 0

    def take(self) -> tuple[int, int]:
        counts = (self.corrupt, self.too_few_tracks)
        self.corrupt = self.too_few_tracks = 0
        return counts


def _split_member(name: str) -> tuple[str, str]:
    # WebDataset convention: the key is everything before the first dot of the basename.
    directory, _, base = name.rpartition("/")
    key, _, field = base.partition(".")
    return (f"{directory}/{key}" if directory else key), field


def iter_shard(url: str, skips: SkipCounter) -> Iterator[dict[str, Any]]:
    """Yield the complete samples of one shard (local path, URL or `pipe:`).

    A read error ends the shard: the sample being assembled is dropped, the error is logged
    and counted, and the caller moves on to the next shard.
    """
    sample: dict[str, Any] = {}
    try:
        with wds.gopen(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                key, field = _split_member(member.name)
                if sample and key != sample["__key__"]:
                    yield sample
                    sample = {}
                if not sample:
                    sample = {"__key__": key, "__url__": url}
                sample[field] = tar.extractfile(member).read()
        if sample:
            yield sample
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        skips.corrupt += 1
        log.warning("skipping the rest of corrupt shard %s (%s: %s)", url, type(err).__name__, err)
