"""Readers of public datasets in their original layouts, one module per dataset (see base.py).

``SOURCES`` maps a ``tools/convert.py`` subcommand to its reader; ``select_sequences`` applies a
split or a published protocol's clip list (``datamodules/depth_benchmarks.py``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from datamodules.depth_benchmarks import BenchmarkSet, benchmark_set
from datamodules.sources.base import DatasetSource, SequenceRef
from datamodules.sources.bonn import BonnSource
from datamodules.sources.dynamic_replica import DynamicReplicaSource
from datamodules.sources.kitti import KittiSource
from datamodules.sources.nyuv2 import NyuV2Source
from datamodules.sources.pointodyssey import PointOdysseySource
from datamodules.sources.scannet import ScanNetSource
from datamodules.sources.sintel import SintelSource
from datamodules.sources.tartanair import TartanAirSource
from datamodules.sources.videos import VideosSource
from datamodules.sources.vkitti2 import VirtualKitti2Source

log = logging.getLogger(__name__)

SOURCES: dict[str, type[DatasetSource]] = {cls.name: cls for cls in (
    SintelSource, KittiSource, BonnSource, ScanNetSource, NyuV2Source, TartanAirSource, VirtualKitti2Source,
    PointOdysseySource, DynamicReplicaSource, VideosSource)}


def select_benchmark(source: DatasetSource, bench: BenchmarkSet) -> tuple[list[SequenceRef], list[str]]:
    """The protocol's sequences and frames; returns (sequences, names of the listed ones not found)."""
    available = {s.name: s for s in source.sequences(bench.source_split)}
    if bench.single_frames:  # the list names frames of one sequence (NYUv2 image indices)
        wanted = set(bench.sequences)
        chosen = []
        for seq in available.values():
            keep = [i for i, name in enumerate(seq.frame_names) if name in wanted]
            chosen.append(_subset(seq, keep))
        found = {n for s in chosen for n in s.frame_names}
        return chosen, [f"{source.name} frame {n}: not in the source" for n in bench.sequences if n not in found]
    chosen, missing = [], []
    for name in bench.sequences:
        if name in available:
            seq = available[name]
            chosen.append(_subset(seq, bench.select(len(seq.frames))))
        else:
            missing.append(f"{source.root}: sequence {name} of the protocol is missing")
    return chosen, missing


def _subset(seq: SequenceRef, keep: list[int]) -> SequenceRef:
    return replace(seq, frames=[seq.frames[i] for i in keep], frame_names=[seq.frame_names[i] for i in keep],
                   extra=dict(seq.extra))


def benchmark_meta(name: str, bench: BenchmarkSet) -> dict[str, Any]:
    """The `benchmark` field of meta.json for protocol clips (evaluation reads crop and cap from it)."""
    return {"benchmark": {"name": name, "dataset": bench.dataset, "frames": list(bench.frames),
                          "crop": list(bench.crop) if bench.crop else None, "even_crop": bench.even_crop,
                          "min_depth": bench.min_depth, "max_depth": bench.max_depth}}


__all__ = ["SOURCES", "DatasetSource", "SequenceRef", "benchmark_meta", "benchmark_set", "select_benchmark"]
