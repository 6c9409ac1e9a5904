"""Read samples from shards, skipping and counting damaged ones.

What is skipped (counted in `data/corrupt_skipped`, logged with the shard named) and what stops:
  - a truncated shard (cut between two samples, between the members of a sample, inside a member
    or a header): the samples before the cut are kept, the sample cut by it is skipped, the rest
    of the shard is gone; a shard that does not read at all likewise;
  - a corrupt sample (shards.CorruptSampleError: damaged meta.json, arrays or frames): skipped;
  - a schema violation (shards.ShardFormatError) is skipped while it is the exception, but a shard
    whose first SCHEMA_STOP_AFTER samples (all of them, for a shorter shard) violate the schema is
    data of another format, and stops training with the shard and the first violation named.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import webdataset as wds

from datamodules.shards import Clip, CorruptSampleError, ShardFormatError, decode_clip

log = logging.getLogger(__name__)

SCHEMA_STOP_AFTER = 3


@dataclass
class SkipCounter:
    """Samples lost to bad data since the last `take()`; reported with each batch."""

    corrupt: int = 0
    too_few_tracks: int = 0

    def take(self) -> tuple[int, int]:
        counts = (self.corrupt, self.too_few_tracks)
        self.corrupt = self.too_few_tracks = 0
        return counts


class TruncatedShardError(tarfile.ReadError):
    """The archive ends without its end-of-archive block: cut off by a failed copy or write."""


class _EndCheckingTarInfo(tarfile.TarInfo):
    """Header parsing that tells a truncated archive from a finished one.

    tarfile ends the iteration quietly on a missing or incomplete header (the data stops between
    two members or inside a header), exactly as on the zero block that really ends an archive.
    """

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:  # the zero block: the archive's proper end
            raise
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError) as err:
            raise TruncatedShardError(f"truncated at byte {tar.offset} ({err})") from None
        except tarfile.InvalidHeaderError as err:
            raise TruncatedShardError(f"damaged header at byte {tar.offset} ({err})") from None


def _split_member(name: str) -> tuple[str, str]:
    # WebDataset convention: the key is everything before the first dot of the basename.
    directory, _, base = name.rpartition("/")
    key, _, field = base.partition(".")
    return (f"{directory}/{key}" if directory else key), field


def iter_shard(url: str, skips: SkipCounter) -> Iterator[dict[str, Any]]:
    """Yield the complete samples of one shard (local path, URL or `pipe:`) as member name -> bytes.

    A read error or a truncation ends the shard: the samples before it are kept, the sample being
    assembled is dropped, and the damage is logged and counted once.
    """
    sample: dict[str, Any] = {}
    complete = 0
    try:
        with wds.gopen(url, "rb") as stream, \
                tarfile.open(fileobj=stream, mode="r|*", tarinfo=_EndCheckingTarInfo) as tar:
            for member in tar:
                if not member.isreg():
                    continue
                key, field = _split_member(member.name)
                if sample and key != sample["__key__"]:
                    yield sample
                    complete += 1
                    sample = {}
                if not sample:
                    sample = {"__key__": key, "__url__": url}
                sample[field] = tar.extractfile(member).read()
        if sample:
            yield sample
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        skips.corrupt += 1
        cut = f"; sample {sample['__key__']} skipped" if sample else ""
        log.warning("shard %s is damaged after %d complete sample(s) (%s: %s)%s; the rest of it is lost",
                    url, complete, type(err).__name__, err, cut)


def iter_clips(url: str, skips: SkipCounter) -> Iterator[Clip]:
    """Yield the decoded clips of one shard; damaged samples are counted in `skips` and logged.

    Raises ShardFormatError when the shard's first samples all violate the schema (module docstring).
    """
    valid = violations = 0
    first_violation: ShardFormatError | None = None
    for raw in iter_shard(url, skips):
        try:
            clip = decode_clip(raw)
        except CorruptSampleError as err:
            skips.corrupt += 1
            log.warning("skipping corrupt sample: %s", err)
            continue
        except ShardFormatError as err:
            violations += 1
            first_violation = first_violation or err
            if valid == 0 and violations >= SCHEMA_STOP_AFTER:
                raise _another_schema(url, violations, first_violation) from None
            skips.corrupt += 1
            log.warning("skipping a sample that violates the shard schema: %s", err)
            continue
        valid += 1
        yield clip
    if valid == 0 and first_violation is not None:
        raise _another_schema(url, violations, first_violation) from None


def _another_schema(url: str, violations: int, first: ShardFormatError) -> ShardFormatError:
    return ShardFormatError(f"shard {url} is not in this framework's clip schema (datamodules/shards.py): its first "
                            f"{violations} sample(s) violate it, e.g. {first}")
