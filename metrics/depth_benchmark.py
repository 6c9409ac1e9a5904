"""The published video depth benchmark protocol (DepthCrafter / Video Depth Anything) as a Metric.

``VideoDepthBenchmarkMetric`` scores whole videos the way ``benchmark/eval/eval.py`` (both
repositories) and VDA's ``eval_tae.py`` do, with the math of ``metrics/depth.py``:

1. the prediction is a relative disparity (``prediction="disparity"``, e.g. Depth Anything V2 and
   VDA) or a depth (``prediction="depth"``, inverted first: 1 / d where d > 0, else 0);
2. it is resized to the ground truth (bilinear, half-pixel centres, no antialias: ``cv2.resize``'s
   INTER_LINEAR) and the ground-truth crop is applied (see ``crop`` / ``prediction_cropped``);
3. valid = the converter's mask & 1e-3 < gt < cap, over the whole clip;
4. ONE least-squares scale and shift per video, in float64, over all valid pixels of all its frames,
   fitted in disparity space (target 1 / gt); aligned disparity clipped to >= 1e-3, inverted,
   depth clipped to [1e-3, cap];
5. per frame AbsRel, delta1 (< 1.25) and RMSE over its valid pixels; frames without a valid pixel
   are dropped; mean over the video's frames, then plain mean over videos (not frame-weighted);
6. with ``compute_tae``: TAE on the aligned depth of every frame of the clip (GT depth is used only
   for the alignment), with the ground-truth intrinsics and camera-to-world poses.

Metric names returned by ``compute()`` (scalar tensors, as the papers print them):
``abs_rel`` (fraction, e.g. 0.089), ``delta1`` (fraction, e.g. 0.926), ``rmse`` (ground-truth unit,
metres), ``tae`` (only with ``compute_tae``: 100 x mean relative error, e.g. 0.570), ``num_videos``
(videos scored). ``per_video()`` gives one dict per video for a table.

Feeding contract. A video is identified by its key (a string of at most 256 UTF-8 bytes). It may
arrive in several chunks (windows, batches): each ``update`` appends its frames, in arrival order,
to the video's buffer (about 9 bytes per ground-truth pixel per frame, on ``buffer_device``), and
the update with ``video_done=True`` (the default) aligns and scores the whole video once and frees
the buffer;
``compute()`` also finishes videos still open. Chunks must not overlap or repeat frames, and all
chunks of one video must reach the same process (under DDP, shard the evaluation by video); the
per-video results are gathered from every process at ``compute()``, and a video scored on two
processes with the same frame and pixel counts (a distributed sampler's padding) is counted once.
A video without any valid pixel is counted in ``num_skipped``, left out of the means, and warned
about.

Where the reference code is wrong, the default is right and ``tae_reference=True`` reproduces it
(see README "Video depth benchmark protocol"): the reference neither shifts the principal point by
the ground-truth crop nor z-buffers its reprojection, and it counts a pair without overlap as 0.
``reference_sintel_depth`` reproduces VDA's Sintel ground-truth quantisation, to measure it
(``tools/measure_protocol_defects.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

from metrics.depth import depth_from_disparity, fit_scale_shift, frame_errors, temporal_alignment_error

Crop = tuple[int | None, int | None, int | None, int | None]

KEY_BYTES = 256
ROW_FIELDS = ("abs_rel", "delta1", "rmse", "tae", "frames", "frames_dropped", "valid_pixels", "tae_pairs",
              "scale", "shift")
_COUNT_FIELDS = ("frames", "frames_dropped", "valid_pixels")


def crop_slices(crop: Crop | None, height: int, width: int) -> tuple[slice, slice]:
    """(rows, cols) slices of a (y0, y1, x0, x1) crop with Python slice semantics (negative ends,
    None, out-of-range ends clamp): ScanNet (8, -8, 11, -11), NYUv2 (45, 471, 41, 601), KITTI in
    VDA (0, 374, 0, 1242). None = the whole frame."""
    if crop is None:
        return slice(0, height), slice(0, width)
    if len(crop) != 4:
        raise ValueError(f"crop must be (y0, y1, x0, x1), got {crop!r}")
    rows = slice(*slice(crop[0], crop[1]).indices(height)[:2])
    cols = slice(*slice(crop[2], crop[3]).indices(width)[:2])
    if rows.stop <= rows.start or cols.stop <= cols.start:
        raise ValueError(f"crop {crop!r} leaves nothing of a {height}x{width} frame")
    return rows, cols


def crop_intrinsics(intrinsics: Tensor, top: int, left: int) -> Tensor:
    """Intrinsics (..., 3, 3) of the crop starting at (top, left): the principal point moves by the
    offset; the focal lengths do not change."""
    out = intrinsics.clone()
    out[..., 0, 2] -= left
    out[..., 1, 2] -= top
    return out


def reference_sintel_depth(depth: Tensor) -> Tensor:
    """Sintel ground truth as VDA's benchmark reads it (``dataset_extract_sintel.py`` +
    ``eval_utils.gen_json``): metres written as ``depth.astype(np.uint16)`` (truncated to whole
    metres, wrapping modulo 65536 as numpy does on x86), read back divided by 65535 / 650. Depth
    below 1 m becomes 0 (invalid), and the values are about 1/100.8 of metres, so the 70 cap acts
    at ~7 km and RMSE is in those units. Scale-invariant metrics only see the quantisation."""
    whole = torch.floor(depth.double().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)).remainder(65536)
    return whole / (65535 / 650)


@dataclass
class _Chunk:
    disparity: Tensor  # (T, H, W) float32, resized and cropped to the ground truth
    gt: Tensor  # (T, H, W) float32
    valid: Tensor  # (T, H, W) bool, already including the depth range
    intrinsics: Tensor | None  # (T, 3, 3) float64, in pixels of the cropped ground truth
    cam_to_world: Tensor | None  # (T, 4, 4) float64


def _encode_key(key: str) -> Tensor:
    data = key.encode("utf-8")
    if not data or len(data) > KEY_BYTES or b"\0" in data:
        raise ValueError(f"video key must be 1-{KEY_BYTES} UTF-8 bytes without NUL, got {key!r}")
    return torch.tensor(list(data) + [0] * (KEY_BYTES - len(data)), dtype=torch.uint8)


def _decode_key(row: Tensor) -> str:
    return bytes(row.tolist()).rstrip(b"\0").decode("utf-8")


def _videos_first(x: Tensor | None, name: str, batch: int | None) -> Tensor | None:
    """(B, T, ...) view of a per-video tensor given for one video or a batch."""
    if x is None:
        return None
    if batch is None:
        return x.unsqueeze(0)
    if x.shape[0] != batch:
        raise ValueError(f"{name} has {x.shape[0]} videos, the keys {batch}")
    return x


def _maps(x: Tensor, name: str) -> Tensor:
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]  # (T, 1, H, W) -> (T, H, W)
    if x.dim() != 3:
        raise ValueError(f"{name} must be (T, H, W) or (T, 1, H, W) per video, got {tuple(x.shape)}")
    return x


class VideoDepthBenchmarkMetric(Metric):
    """The DepthCrafter / VDA video depth protocol; see the module docstring.

    Args:
        cap: the dataset's maximum depth (Sintel 70, ScanNet 10, KITTI 80, Bonn 10, NYUv2 10).
        prediction: "disparity" (affine-invariant inverse depth, e.g. Depth Anything V2) or "depth"
            (inverted before anything else). No default: the choice changes every number.
        crop: ground-truth crop (y0, y1, x0, x1), Python slice semantics (``crop_slices``); None = none.
        prediction_cropped: False (default) = the prediction covers the whole ground-truth frame given
            to ``update``: it is resized to that frame, then cropped like the ground truth. True = the
            model saw frames already cropped the same way (the reference extractors crop ScanNet and
            NYUv2 RGB before inference): the prediction is resized straight to the cropped size.
        compute_tae: also compute TAE; every update must then give intrinsics and cam_to_world.
        tae_reference: reproduce ``eval_tae.py``'s defects for TAE (principal point not moved by the
            crop, last write wins, pairs without overlap count as 0); False = done right.
        buffer_device: where open videos are kept and scored; None = the device of the ground truth
            given to ``update`` (fast on an accelerator), "cpu" to spare accelerator memory.

    ``update(video_key, pred, gt, valid=None, intrinsics=None, cam_to_world=None, video_done=True)``:
        one video: key str, pred (T, [1,] h, w) at any resolution, gt (T, [1,] H, W) depth in metres,
        valid (T, [1,] H, W) bool from the converter (None = all), intrinsics (T, 3, 3) or (3, 3) in
        pixels of the uncropped ``gt`` grid (pixel centres at integer coordinates), cam_to_world
        (T, 4, 4) OpenCV (x right, y down, z forward), metres (both ignored without ``compute_tae``);
        or a batch: a sequence of B keys and the same tensors with a leading B (video_done a bool or
        B bools).
    """

    full_state_update = False

    def __init__(self, cap: float, prediction: Literal["disparity", "depth"], crop: Crop | None = None,
                 prediction_cropped: bool = False, compute_tae: bool = False, tae_reference: bool = False,
                 buffer_device: str | torch.device | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if prediction not in ("disparity", "depth"):
            raise ValueError(f"prediction must be 'disparity' or 'depth', got {prediction!r}")
        if not cap > 1e-3:
            raise ValueError(f"cap must be > 1e-3 (metres), got {cap!r}")
        if crop is not None:
            crop_slices(crop, 1 << 30, 1 << 30)  # validates the shape of the tuple early
        self.cap = float(cap)
        self.prediction = prediction
        self.crop = None if crop is None else tuple(crop)
        self.prediction_cropped = prediction_cropped
        self.compute_tae = compute_tae
        self.tae_reference = tae_reference
        self.buffer_device = None if buffer_device is None else torch.device(buffer_device)
        self.add_state("video_rows", default=[], dist_reduce_fx="cat")  # (1, len(ROW_FIELDS)) float64
        self.add_state("video_keys", default=[], dist_reduce_fx="cat")  # (1, KEY_BYTES) uint8
        self._open: dict[str, list[_Chunk]] = {}
        self._scored: set[str] = set()

    # ------------------------------------------------------------------ feeding
    def update(self, video_key: str | Sequence[str], pred: Tensor, gt: Tensor, valid: Tensor | None = None,
               intrinsics: Tensor | None = None, cam_to_world: Tensor | None = None,
               video_done: bool | Sequence[bool] = True) -> None:
        single = isinstance(video_key, str)
        keys = [video_key] if single else list(video_key)
        batch = None if single else len(keys)
        done = [video_done] * len(keys) if isinstance(video_done, bool) else list(video_done)
        if len(done) != len(keys):
            raise ValueError(f"video_done has {len(done)} entries for {len(keys)} videos")
        if self.compute_tae and (intrinsics is None or cam_to_world is None):
            raise ValueError(f"compute_tae needs intrinsics and cam_to_world (videos {keys})")
        preds, gts = _videos_first(pred, "pred", batch), _videos_first(gt, "gt", batch)
        valids = _videos_first(valid, "valid", batch)
        Ks = _videos_first(intrinsics, "intrinsics", batch) if self.compute_tae else None
        poses = _videos_first(cam_to_world, "cam_to_world", batch) if self.compute_tae else None
        for b, key in enumerate(keys):
            _encode_key(key)  # a bad key fails before anything is kept
            if key in self._scored:
                raise ValueError(f"video {key!r} was already scored: call reset() between evaluations, and "
                                 "mark only its last chunk video_done")
            chunk = self._prepare(key, preds[b], gts[b], None if valids is None else valids[b],
                                  None if Ks is None else Ks[b], None if poses is None else poses[b])
            self._open.setdefault(key, []).append(chunk)
            if done[b]:
                self._score(key)

    def _prepare(self, key: str, pred: Tensor, gt: Tensor, valid: Tensor | None, K: Tensor | None,
                 pose: Tensor | None) -> _Chunk:
        pred, gt = _maps(pred.detach(), "pred"), _maps(gt.detach(), "gt")
        T, H, W = gt.shape
        device = self.buffer_device or gt.device
        if pred.shape[0] != T:
            raise ValueError(f"video {key!r}: prediction has {pred.shape[0]} frames, ground truth {T}")
        if not torch.isfinite(pred).all():
            raise ValueError(f"video {key!r}: the prediction has NaN or infinite values")
        pred = pred.to(device=gt.device, dtype=torch.float32)
        if self.prediction == "depth":
            pred = torch.where(pred > 0, 1.0 / pred, torch.zeros_like(pred))
        rows, cols = crop_slices(self.crop, H, W)
        if self.prediction_cropped:
            size = (rows.stop - rows.start, cols.stop - cols.start)
            disparity = _resize(pred, size)
        else:
            disparity = _resize(pred, (H, W))[:, rows, cols]
        gt = gt.float()
        ok = (gt > 1e-3) & (gt < self.cap)
        if valid is not None:
            valid = _maps(valid.detach(), "valid")
            if valid.shape != gt.shape:
                raise ValueError(f"video {key!r}: valid {tuple(valid.shape)} and gt {tuple(gt.shape)} differ")
            ok &= valid.to(gt.device).bool()
        K_crop = pose64 = None
        if K is not None:
            K = K.detach().double().expand(T, 3, 3) if K.dim() == 2 else K.detach().double()
            if K.shape != (T, 3, 3) or pose.shape != (T, 4, 4):
                raise ValueError(f"video {key!r}: intrinsics {tuple(K.shape)} and cam_to_world "
                                 f"{tuple(pose.shape)} must be ({T}, 3, 3) and ({T}, 4, 4)")
            K_crop = K if self.tae_reference else crop_intrinsics(K, rows.start, cols.start)
            K_crop, pose64 = K_crop.to(device), pose.detach().double().to(device)
        return _Chunk(disparity.to(device), gt[:, rows, cols].to(device), ok[:, rows, cols].to(device), K_crop,
                      pose64)

    def _score(self, key: str) -> None:
        chunks = self._open.pop(key)
        disparity = torch.cat([c.disparity for c in chunks])
        gt = torch.cat([c.gt for c in chunks])
        valid = torch.cat([c.valid for c in chunks])
        row = dict.fromkeys(ROW_FIELDS, float("nan"))
        row.update(frames=0, frames_dropped=gt.shape[0], valid_pixels=int(valid.sum()), tae_pairs=0)
        if row["valid_pixels"] > 0:
            scale, shift = fit_scale_shift(disparity, gt, valid)
            depth, per_frame = [], []  # frame by frame: float64 temporaries stay frame-sized
            for k in range(gt.shape[0]):
                d = depth_from_disparity(disparity[k], scale, shift, self.cap)
                per_frame.append(frame_errors(d[None], gt[k][None], valid[k][None]))
                if self.compute_tae:
                    depth.append(d)
            abs_rel, delta1, rmse, frames = (torch.cat(column) for column in zip(*per_frame))
            row.update(abs_rel=abs_rel[frames].mean().item(), delta1=delta1[frames].mean().item(),
                       rmse=rmse[frames].mean().item(), frames=int(frames.sum()),
                       frames_dropped=int((~frames).sum()), scale=scale.item(), shift=shift.item())
            if self.compute_tae:
                K = torch.cat([c.intrinsics for c in chunks])
                poses = torch.cat([c.cam_to_world for c in chunks])
                tae, pairs = temporal_alignment_error(depth, K, poses, reference=self.tae_reference)
                row.update(tae=tae.item(), tae_pairs=pairs)
        values = torch.tensor([[float(row[f]) for f in ROW_FIELDS]], dtype=torch.float64, device=self.device)
        self.video_rows.append(values)
        self.video_keys.append(_encode_key(key).unsqueeze(0).to(self.device))
        self._scored.add(key)

    def _finish_open_videos(self) -> None:
        for key in list(self._open):
            self._score(key)

    # ------------------------------------------------------------------ reduction
    def sync(self, *args, **kwargs) -> None:
        self._finish_open_videos()  # before the states are gathered: open videos are local
        # Every process must gather tensors of the same rank and dtype, even one that saw no video.
        if not self.video_rows:
            self.video_rows.append(torch.zeros((0, len(ROW_FIELDS)), dtype=torch.float64, device=self.device))
            self.video_keys.append(torch.zeros((0, KEY_BYTES), dtype=torch.uint8, device=self.device))
        super().sync(*args, **kwargs)

    def merge_state(self, incoming_state: dict | Metric) -> None:
        if isinstance(incoming_state, VideoDepthBenchmarkMetric):
            incoming_state._finish_open_videos()
        self._finish_open_videos()
        super().merge_state(incoming_state)

    def reset(self) -> None:
        super().reset()
        self._open.clear()
        self._scored.clear()

    def _results(self) -> list[dict[str, float | str]]:
        """One dict per distinct video, sorted by key (the input order does not matter)."""
        self._finish_open_videos()
        # A list of (1, C) rows locally; one (N, C) tensor once gathered.
        rows = [self.video_rows] if isinstance(self.video_rows, Tensor) else self.video_rows
        keys = [self.video_keys] if isinstance(self.video_keys, Tensor) else self.video_keys
        if not rows:
            return []
        rows = torch.cat([r.reshape(-1, len(ROW_FIELDS)) for r in rows]).cpu()
        keys = torch.cat([k.reshape(-1, KEY_BYTES) for k in keys]).cpu()
        results: dict[str, dict[str, float | str]] = {}
        for key_row, values in zip(keys, rows):
            key = _decode_key(key_row)
            result = {"video": key, **dict(zip(ROW_FIELDS, values.tolist()))}
            result.update({f: int(result[f]) for f in (*_COUNT_FIELDS, "tae_pairs")})
            if key in results:
                if any(results[key][f] != result[f] for f in _COUNT_FIELDS):
                    raise ValueError(f"video {key!r} was scored twice with different frames: its chunks reached "
                                     "several processes, or two clips share the key")
                continue  # the same video twice (a distributed sampler's padding): counted once
            results[key] = result
        return [results[k] for k in sorted(results)]

    def compute(self) -> dict[str, Tensor]:
        results = self._results()
        scored = [r for r in results if r["frames"] > 0]
        skipped = len(results) - len(scored)
        if skipped:
            names = ", ".join(str(r["video"]) for r in results if r["frames"] == 0)
            rank_zero_warn(f"VideoDepthBenchmarkMetric: {skipped} of {len(results)} videos have no valid "
                           f"ground-truth pixel and are left out: {names}", UserWarning)

        def mean(field: str, rows: list[dict]) -> Tensor:
            values = [r[field] for r in rows]
            return torch.tensor(sum(values) / len(values) if values else float("nan"), dtype=torch.float64)

        out = {name: mean(name, scored) for name in ("abs_rel", "delta1", "rmse")}
        if self.compute_tae:
            out["tae"] = mean("tae", [r for r in scored if r["tae_pairs"] > 0])
        out["num_videos"] = torch.tensor(len(scored), dtype=torch.float64)
        out["num_skipped"] = torch.tensor(skipped, dtype=torch.float64)
        return out

    def per_video(self) -> list[dict[str, float | str]]:
        """Per-video results gathered from every process, sorted by key: ``video`` (the key) and
        ROW_FIELDS (``abs_rel``, ``delta1``, ``rmse``, ``tae`` (NaN without TAE), ``frames`` scored,
        ``frames_dropped`` (no valid pixel), ``valid_pixels``, ``tae_pairs``, the fitted ``scale``
        and ``shift``). A skipped video has frames 0 and NaN metrics."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync,
                               should_unsync=self._should_unsync):
            return self._results()


def _resize(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(T, h, w) -> (T, *size), bilinear with half-pixel centres and no antialias (cv2 INTER_LINEAR)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
