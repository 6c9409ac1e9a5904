"""Convert public datasets from their original layouts into tracklight shards.

    python tools/convert.py DATASET SRC OUT [--split SPLIT | --split bench --benchmark NAME] [--workers N]
                            [--clip-len L --stride S] [--size H W] [--frame-format auto|jpeg|png] ...

DATASET: sintel, kitti, bonn, scannet, nyuv2, tartanair, vkitti2, pointodyssey, dynamic_replica,
videos (any folder of video files or frame folders: DAVIS, Videvo, ...) and kubric (the arguments
after `kubric` go to tools/convert_kubric.py). Shards land in OUT/<split>/ (OUT/<benchmark>/ for
`--split bench`). Formats, units and the camera convention: datamodules/shards.py and
datamodules/sources/; the driver (clips, workers, atomic writes, re-runs, skips):
datamodules/conversion.py; the protocol clip lists: datamodules/depth_benchmarks.py.
Exit status 2 for a user error (missing source, unknown split, options that differ from an
earlier conversion into OUT).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from datamodules.conversion import ConvertOptions, convert, cpu_count, format_summary
from datamodules.depth_benchmarks import BENCHMARKS
from datamodules.sources import SOURCES, benchmark_meta, benchmark_set, select_benchmark

log = logging.getLogger("convert")

DATASET_OPTIONS = {  # extra flags per dataset: flag -> (source option, help)
    "sintel": {"--pass": ("sintel_pass", "clean (default) or final"),
               "--depth-root": ("depth_root", "folder holding training/{depth,camdata_left} (default: SRC)")},
    "kitti": {"--depth-root": ("depth_root", "data_depth_annotated folder (default: SRC/data_depth_annotated)"),
              "--raw-root": ("raw_root", "raw data folder of <date>/ folders (default: SRC/raw_data)")},
    "nyuv2": {"--nyu-depth": ("nyu_depth", "filled (default, the protocol's) or raw")},
    "vkitti2": {"--camera": ("camera", "0 (default) or 1")},
    "dynamic_replica": {"--camera": ("camera", "left (default) or right")},
    "videos": {"--fps": ("fps", "frame rate recorded for frame folders (default 30)")},
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True)
    for name, cls in SOURCES.items():
        p = sub.add_parser(name, help=(cls.__module__ and sys.modules[cls.__module__].__doc__ or "").split("\n")[0])
        p.add_argument("src", type=Path)
        p.add_argument("out", type=Path)
        splits = cls.splits + (("bench",) if any(name in b for b in BENCHMARKS.values()) else ())
        p.add_argument("--split", default=splits[0], choices=splits, help=f"default {splits[0]}")
        p.add_argument("--benchmark", default="depthcrafter", choices=sorted(BENCHMARKS),
                       help="with --split bench: the protocol whose clips to write")
        p.add_argument("--workers", type=int, default=min(8, cpu_count()))
        p.add_argument("--clip-len", type=int, default=None,
                       help=f"frames per clip, 0 = whole sequence (default {cls.default_clip_len or 'whole sequence'})")
        p.add_argument("--stride", type=int, default=None, help="frames between clip starts (default: clip length)")
        p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                       help="stored frame size (default: the source's, or its depth map's)")
        p.add_argument("--frame-format", choices=("auto", "jpeg", "png"), default="auto",
                       help="frames that must be encoded: auto = png for evaluation sets, jpeg otherwise")
        p.add_argument("--jpeg-quality", type=int, default=95)
        p.add_argument("--max-depth", type=float, default=None,
                       help="depth at or beyond this (metres) is invalid (default: the dataset's sky rule)")
        p.add_argument("--max-tracks", type=int, default=2048, help="tracks kept per clip (datasets with tracks)")
        p.add_argument("--clips-per-shard", type=int, default=50)
        p.add_argument("--overwrite", action="store_true", help="rewrite shards that are already complete")
        p.add_argument("--no-progress", action="store_true")
        for flag, (_, help_text) in DATASET_OPTIONS.get(name, {}).items():
            p.add_argument(flag, default=None, help=help_text)
    sub.add_parser("kubric", help="CoTracker's Kubric folders (tools/convert_kubric.py; see its --help)",
                   add_help=False)
    return parser


def run(argv: list[str]) -> int:
    if argv[:1] == ["kubric"]:
        from tools import convert_kubric

        convert_kubric.main(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    cls = SOURCES[args.dataset]
    options = {dest: getattr(args, flag.lstrip("-").replace("-", "_"))
               for flag, (dest, _) in DATASET_OPTIONS.get(args.dataset, {}).items()}
    source = cls(args.src, **options)
    split_meta, skipped = {}, []
    if args.split == "bench":
        if args.clip_len is not None or args.stride is not None:
            raise ValueError("--split bench writes the protocol's clips; --clip-len / --stride do not apply")
        bench = benchmark_set(args.benchmark, args.dataset)
        sequences, skipped = select_benchmark(source, bench)
        clip_len, out = (1 if bench.single_frames else None), args.out / args.benchmark
        split_meta = benchmark_meta(args.benchmark, bench)
    else:
        sequences = source.sequences(args.split)
        clip_len = cls.default_clip_len if args.clip_len is None else (args.clip_len or None)
        out = args.out / args.split
    skipped += getattr(source, "unreadable", [])
    frame_format = args.frame_format if args.frame_format != "auto" else ("png" if cls.lossless_frames else "jpeg")
    opts = ConvertOptions(
        clip_len=clip_len, stride=args.stride, size=tuple(args.size) if args.size else None, frame_format=frame_format,
        jpeg_quality=args.jpeg_quality, max_depth=args.max_depth or getattr(cls, "default_max_depth", None),
        max_tracks=args.max_tracks, clips_per_shard=args.clips_per_shard, workers=args.workers,
        overwrite=args.overwrite)
    for message in skipped:
        log.warning("skipping: %s", message)
    summary = convert(source, args.split, out, opts, sequences, split_meta, progress=not args.no_progress,
                      listing_skips=skipped)
    print(format_summary(summary, out))
    return 0


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(run(sys.argv[1:] if argv is None else argv))
    except (FileNotFoundError, ValueError, KeyError, ImportError) as err:
        print(f"convert: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
