"""Run a model on video files (mp4 / avi / webm / ... or a folder of jpg/png frames).

    # point tracks + overlay video, from a training checkpoint or the published CoTracker3 weights
    python tools/predict.py track --video in.mp4 --ckpt runs/x/checkpoints/last.ckpt --grid 10 --out pred/
    python tools/predict.py track --video in.mp4 --official cotracker3 --weights scaled_online.pth \\
        --query 0,12.5,30 --query 10,100,80 --out pred/           # or --queries q.txt / q.npy (t x y rows)
    # relative disparity (.npz, optional 16-bit PNGs) + colour-mapped video
    python tools/predict.py depth --video in.mp4 --ckpt runs/depth/checkpoints/last.ckpt \\
        --tracker-weights scaled_offline.pth --out pred/
    python tools/predict.py depth --video in.mp4 --official depth_anything_v2 --weights depth_anything_v2_vits.pth \\
        --encoder vits --out pred/                               # the image model, frame by frame
    # colour video from the luminance of the input
    python tools/predict.py colorize --video in.mp4 --ckpt runs/color/checkpoints/last.ckpt \\
        --tracker-weights scaled_offline.pth --out pred/

Long videos stream: the online tracker takes the frames chunk by chunk, depth and colour run on
overlapping windows. An unreadable input stops with exit code 2 and a message naming the file.
The logic lives in ``tools/predict_video.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from datamodules.query_files import parse_query, read_query_file
from datamodules.video_files import VideoReader
from models.checkpoint_io import CheckpointMismatchError

log = logging.getLogger("predict")


def _json(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def common(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--video", required=True, nargs="+", help="video file(s) or folder(s) of frames")
        sub.add_argument("--out", required=True, help="output directory")
        weights = sub.add_mutually_exclusive_group(required=True)
        weights.add_argument("--ckpt", help="a training checkpoint (.ckpt) of this framework")
        weights.add_argument("--weights", help="published weights (.pth), see --official")
        sub.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
        return sub

    track = common("track", "point tracks (.npz) and an overlay video")
    track.add_argument("--official", default="cotracker3", choices=["cotracker3"], help="what --weights holds")
    track.add_argument("--variant", default="online", choices=["online", "offline"], help="CoTracker3 variant of --weights")
    track.add_argument("--arch", type=_json, default={}, help="JSON overrides of CoTrackerThreeConfig (--weights)")
    track.add_argument("--iters", type=int, default=6, help="refinement iterations (--weights)")
    track.add_argument("--support-grid", type=int, default=6,
                       help="hidden support grid tracked with explicit queries (CoTracker3; 0 = none)")
    where = track.add_mutually_exclusive_group(required=True)
    where.add_argument("--grid", type=int, help="track a GRID x GRID grid of points")
    where.add_argument("--queries", help="text file of 't x y' rows or an (N, 3) .npy")
    where.add_argument("--query", action="append", help="one query 't,x,y' (repeatable)")
    track.add_argument("--grid-frame", type=int, default=0, help="frame of the --grid queries")
    track.add_argument("--no-backward", action="store_true",
                       help="online model: do not track backwards from queries after frame 0")
    track.add_argument("--no-overlay", action="store_true", help="skip the overlay mp4")

    def clip_model(sub: argparse.ArgumentParser, window: int, overlap: int) -> None:
        sub.add_argument("--window", type=int, default=window, help="frames per model call")
        sub.add_argument("--overlap", type=int, default=overlap, help="frames shared by consecutive windows")
        sub.add_argument("--tracker-weights", help="CoTracker3 .pth giving tracks to Tracktention layers")
        sub.add_argument("--tracker-variant", default="offline", choices=["online", "offline"])
        sub.add_argument("--tracker-arch", type=_json, default={}, help="JSON overrides of CoTrackerThreeConfig")
        sub.add_argument("--num-tracks", type=int, default=576, help="random space-time queries per window")
        sub.add_argument("--seed", type=int, default=0)

    depth = common("depth", "relative disparity (.npz / 16-bit PNG) and a colour-mapped video")
    depth.add_argument("--official", default="depth_anything_v2", choices=["depth_anything_v2"])
    depth.add_argument("--encoder", default="vits", choices=["vits", "vitb", "vitl", "vitg"], help="(--weights)")
    depth.add_argument("--input-size", type=int, help="shorter side fed to the network (multiple of 14; "
                                                      "default: the model's, 518 for --weights)")
    clip_model(depth, window=32, overlap=8)
    depth.add_argument("--png", action="store_true", help="also write 16-bit PNGs per frame")
    depth.add_argument("--no-npz", action="store_true")
    depth.add_argument("--no-mp4", action="store_true")
    depth.add_argument("--float32", action="store_true", help="store float32 in the .npz (default float16)")

    color = common("colorize", "a colour video from the luminance of the input")
    clip_model(color, window=16, overlap=4)
    return parser


def read_queries(args: argparse.Namespace) -> np.ndarray | None:
    if args.queries:
        return read_query_file(args.queries)
    if args.query:
        return np.asarray([parse_query(q) for q in args.query], dtype=np.float32)
    return None


def check_grid(args: argparse.Namespace) -> None:
    """A grid denser than the pixels of the smallest input video is refused before any weights load."""
    if not getattr(args, "grid", None):
        return
    if args.grid < 1:
        raise ValueError(f"--grid {args.grid}: must be at least 1")
    for video in args.video:
        info = VideoReader(video).info
        if args.grid > min(info.height, info.width):
            raise ValueError(f"--grid {args.grid}: {args.grid}x{args.grid} points are denser than the pixels of "
                             f"{video} ({info.width}x{info.height}); use --grid {min(info.height, info.width)} or less")


def check_tracker_memory(args: argparse.Namespace, tracker: object, queries: np.ndarray | None) -> None:
    """For a CoTracker3: the points (grid or queries, plus the hidden support grid) must fit in memory."""
    from models.cotracker3_predictor import CoTrackerThreePredictor
    from tools.predict_video import check_point_budget, pick_device

    if not isinstance(tracker, CoTrackerThreePredictor):
        return
    points = (args.grid ** 2 if queries is None else len(queries)) + tracker.support_grid_size ** 2
    what = f"--grid {args.grid}" if queries is None else "the queries"
    check_point_budget(points, tracker.model.inference_bytes_per_point(), pick_device(args.device), what)


def run_track(args: argparse.Namespace) -> list[dict[str, Path]]:
    from lightning_modules.cotracker3 import CoTracker3Module
    from lightning_modules.registry import module_from_checkpoint, track_families
    from models.cotracker3_predictor import build_tracker_predictor
    from tools.predict_video import track_video

    queries = read_queries(args)
    if args.ckpt:
        module, _ = module_from_checkpoint(args.ckpt, track_families())
        tracker = module
        if isinstance(module, CoTracker3Module):
            tracker = module.predictor()
            tracker.support_grid_size = args.support_grid
    else:
        tracker = build_tracker_predictor({**(args.arch or {}), "variant": args.variant}, args.weights, args.iters,
                                          args.support_grid)
    check_tracker_memory(args, tracker, queries)
    return [track_video(video, args.out, tracker, queries=queries, grid_size=args.grid or 0, grid_frame=args.grid_frame,
                        backward_tracking=not args.no_backward, device=args.device, overlay=not args.no_overlay)
            for video in args.video]


def build_tracks(args: argparse.Namespace, cfg_tracker: object | None):
    """The window tracker: --tracker-weights, else the checkpoint's on-the-fly tracker, else None."""
    from models.cotracker3_predictor import TrackPreprocessor, build_tracker_predictor

    if args.tracker_weights:
        arch = {**args.tracker_arch, "variant": args.tracker_variant}
        return TrackPreprocessor(build_tracker_predictor(arch, args.tracker_weights), args.num_tracks)
    if cfg_tracker is not None and cfg_tracker.checkpoint:
        from omegaconf import OmegaConf

        predictor = build_tracker_predictor(OmegaConf.to_container(cfg_tracker.arch), cfg_tracker.checkpoint,
                                            iters=cfg_tracker.iters)
        return TrackPreprocessor(predictor, cfg_tracker.num_tracks)
    return None


def run_depth(args: argparse.Namespace) -> list[dict[str, Path]]:
    from lightning_modules.registry import module_from_checkpoint
    from models.video_depth import TracktentionConfig, VideoDepthAnything, VideoDepthConfig
    from tools.predict_video import depth_video

    if args.ckpt:
        module, cfg = module_from_checkpoint(args.ckpt, ("video_depth",))
        model, tracks = module.model, build_tracks(args, cfg.model.tracker)
    else:
        model = VideoDepthAnything(VideoDepthConfig(encoder=args.encoder, input_size=518,
                                                    tracktention=TracktentionConfig(enabled=False)))
        model.load_image_weights(args.weights)
        tracks = None
    if args.input_size:
        model.config.input_size = args.input_size
    return [depth_video(video, args.out, model, tracks=tracks, window=args.window, overlap=args.overlap,
                        device=args.device, npz=not args.no_npz, png=args.png, mp4=not args.no_mp4,
                        npz_dtype="float32" if args.float32 else "float16", seed=args.seed)
            for video in args.video]


def run_colorize(args: argparse.Namespace) -> list[dict[str, Path]]:
    from lightning_modules.registry import module_from_checkpoint
    from tools.predict_video import PredictError, colorize_video

    if not args.ckpt:
        raise PredictError("colorize needs a training checkpoint (--ckpt); published colorizer weights are "
                           "loaded through model.init_from in training")
    module, _ = module_from_checkpoint(args.ckpt, ("colorization",))
    tracks = build_tracks(args, None)
    return [colorize_video(video, args.out, module.model, tracks=tracks, window=args.window, overlap=args.overlap,
                           device=args.device, seed=args.seed)
            for video in args.video]


def check_output_dir(out: str) -> None:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory; give a folder for the outputs")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run = {"track": run_track, "depth": run_depth, "colorize": run_colorize}[args.command]
    from tools.predict_video import pick_device

    try:
        check_output_dir(args.out)  # fail on these before loading any weights
        pick_device(args.device)
        for video in args.video:
            VideoReader(video)
        check_grid(args)
        results = run(args)
    except (ValueError, FileNotFoundError, CheckpointMismatchError) as err:
        # VideoReadError, QueryError and PredictError are ValueErrors whose message names the input
        print(f"error: {err}", file=sys.stderr)
        return 2
    for paths in results:
        for kind, path in paths.items():
            print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
