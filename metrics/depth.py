"""Video depth metrics (torchmetrics, sum states, DDP-correct).

Protocol (Video Depth Anything / DepthCrafter ``benchmark/eval``), per video:
1. valid pixels: ground-truth mask & 1e-3 < depth < max_depth;
2. prediction (a disparity) clipped to >= 1e-3; ONE least-squares scale and shift over all valid
   pixels of all frames against the ground-truth disparity 1 / depth (float64);
3. aligned disparity clipped to >= 1e-3, inverted to depth, clipped to [1e-3, max_depth];
4. AbsRel = mean over frames (with a valid pixel) of the per-frame mean |d - gt| / gt;
   delta1 = the same average of the fraction of pixels with max(d / gt, gt / d) < 1.25;
   RMSE = the same average of the per-frame sqrt(mean (d - gt)^2), in the ground truth's unit.
The benchmark figure is the plain mean over videos (fractions, as the papers print them).

Temporal consistency:
- ``tae`` (only when camera intrinsics and camera-to-world poses are given), VDA
  ``eval_tae.py``: for each consecutive pair, back-project the aligned predicted depth of frame k
  with K, move it by T_{k+1<-k} = P_{k+1}^-1 P_k, project into frame k+1 (nearest pixel; where
  several points land on one pixel the nearest wins, see ``reproject_depth``), AbsRel against the
  predicted depth of frame k+1 where both are > 0, and the same from k+1 to k;
  TAE = 100 x sum / (2 (T - 1)), mean over videos.
- ``track_tae`` (no poses needed), defined here: along the ground-truth point tracks, the change
  of the aligned predicted depth between consecutive frames should equal the change of the
  ground-truth depth. For every track n and pair (t, t+1) where the point is visible in both
  frames, inside both, and the ground truth is valid at its nearest pixel in both frames:
      e = |(D^_{t+1}(p_{t+1}) - D^_t(p_t)) - (D_{t+1}(p_{t+1}) - D_t(p_t))| / ((D_t(p_t) + D_{t+1}(p_{t+1})) / 2)
  with D^ the aligned prediction and D the ground truth, both read at the nearest pixel (no
  interpolation across depth edges). track_tae = 100 x mean of e over the video's pairs, mean over
  videos (videos without a usable pair are left out). It is TAE with the ground-truth 3-D motion
  replaced by ground-truth tracks plus ground-truth depth: a per-frame model that is right on
  average but flickers scores badly; a constant offset does not matter (per-video alignment).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


def _frames(x: Tensor) -> Tensor:
    return x[:, 0] if x.dim() == 4 else x  # (T, 1, H, W) -> (T, H, W)


MIN_DEPTH = 1e-3  # the protocol's floor for ground truth, prediction disparity and aligned depth


def fit_scale_shift(pred_disp: Tensor, gt_depth: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """The protocol's least-squares (s, t) of one video, float64 scalars.

    Minimises sum over valid pixels of (s * max(p, 1e-3) + t - 1 / (gt + 1e-8))^2 (the reference adds
    1e-8 to gt), pred_disp, gt_depth, valid (T, H, W). Closed form with centred sums, frame by frame
    (float64 temporaries stay frame-sized); it equals numpy's ``lstsq`` on the stacked pixels, including
    its minimum-norm answer for a constant prediction. Needs at least one valid pixel.
    """
    def frame_pixels(k: int) -> tuple[Tensor, Tensor]:
        v = valid[k]
        return pred_disp[k][v].double().clamp(min=MIN_DEPTH), 1.0 / (gt_depth[k][v].double() + 1e-8)

    count = int(valid.sum())
    if count == 0:
        raise ValueError("no valid pixel to fit the scale and shift")
    sum_p = sum_y = var_p = cov = torch.zeros((), dtype=torch.float64, device=pred_disp.device)
    for k in range(pred_disp.shape[0]):  # two passes rather than keeping every pixel in float64
        p, y = frame_pixels(k)
        sum_p, sum_y = sum_p + p.sum(), sum_y + y.sum()
    mean_p, mean_y = sum_p / count, sum_y / count
    for k in range(pred_disp.shape[0]):
        p, y = frame_pixels(k)
        var_p = var_p + ((p - mean_p) ** 2).sum()
        cov = cov + ((p - mean_p) * (y - mean_y)).sum()
    if var_p <= count * (1e-12 * mean_p) ** 2:  # constant prediction: the minimum-norm solution
        return mean_y * mean_p / (mean_p ** 2 + 1), mean_y / (mean_p ** 2 + 1)
    scale = cov / var_p
    return scale, mean_y - scale * mean_p


def depth_from_disparity(pred_disp: Tensor, scale: Tensor, shift: Tensor, max_depth: float) -> Tensor:
    """Aligned depth: clip(1 / max(s * max(p, 1e-3) + t, 1e-3), 1e-3, max_depth), float64."""
    disp = (scale * pred_disp.double().clamp(min=MIN_DEPTH) + shift).clamp(min=MIN_DEPTH)
    return (1.0 / disp).clamp(MIN_DEPTH, max_depth)


def align_disparity(pred_disp: Tensor, gt_depth: Tensor, valid: Tensor) -> Tensor:
    """One least-squares (s, t) per video in disparity space -> aligned disparity (T, H, W), float64.

    pred_disp, gt_depth (T, H, W); valid (T, H, W) bool (already restricted to the depth range).
    """
    scale, shift = fit_scale_shift(pred_disp, gt_depth, valid)
    return scale * pred_disp.double().clamp(min=MIN_DEPTH) + shift


def aligned_depth(pred_disp: Tensor, gt_depth: Tensor, valid: Tensor, max_depth: float) -> Tensor:
    """The protocol's aligned predicted depth (T, H, W), float64."""
    return depth_from_disparity(pred_disp, *fit_scale_shift(pred_disp, gt_depth, valid), max_depth)


def frame_errors(depth: Tensor, gt_depth: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-frame AbsRel, delta1 (< 1.25), RMSE over the valid pixels, and which frames have one.

    depth, gt_depth (T, H, W); valid (T, H, W). Returns float64 (T,) tensors (0 where a frame has no
    valid pixel) and the (T,) bool mask of frames that have one: the protocol drops the others.
    """
    d, g = depth.double(), gt_depth.double().clamp(min=MIN_DEPTH)
    n = valid.flatten(1).sum(1)
    denom = n.clamp(min=1).double()
    zero = torch.zeros_like(d)
    abs_rel = torch.where(valid, (d - g).abs() / g, zero).flatten(1).sum(1) / denom
    inlier = valid & (torch.maximum(d / g, g / d) < 1.25)
    delta1 = inlier.flatten(1).sum(1).double() / denom
    rmse = (torch.where(valid, (d - g) ** 2, zero).flatten(1).sum(1) / denom).sqrt()
    return abs_rel, delta1, rmse, n > 0


def reproject_depth(depth: Tensor, K_src: Tensor, K_dst: Tensor, src_to_dst: Tensor, zbuffer: bool = True) -> Tensor:
    """Depth map of frame src seen from camera dst (0 where nothing lands), float64 (H, W).

    Every pixel (u, v) of ``depth`` (pixel centres at integer coordinates) is back-projected with
    K_src, moved by the 4x4 ``src_to_dst`` and projected with K_dst to the nearest pixel of an
    (H, W) map. Several points can land on one pixel: with ``zbuffer`` the nearest (smallest z)
    wins and points at or behind the camera are dropped, which is the visible surface; without
    it the last source pixel in raster order wins whatever its z: VDA's ``tae_torch`` scatters with
    plain indexing, which does that on one CPU thread and leaves the winner unspecified on a GPU.
    """
    H, W = depth.shape
    z = depth.double().reshape(-1)
    K_src, K_dst, rel = (m.to(dtype=torch.float64, device=z.device) for m in (K_src, K_dst, src_to_dst))
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64, device=z.device),
                          torch.arange(W, dtype=torch.float64, device=z.device), indexing="ij")
    x = (u.reshape(-1) - K_src[0, 2]) * z / K_src[0, 0]
    y = (v.reshape(-1) - K_src[1, 2]) * z / K_src[1, 1]
    moved = torch.stack([x, y, z], 1) @ rel[:3, :3].T + rel[:3, 3]
    z2 = moved[:, 2]
    u2 = torch.round(moved[:, 0] * K_dst[0, 0] / z2 + K_dst[0, 2])
    v2 = torch.round(moved[:, 1] * K_dst[1, 1] / z2 + K_dst[1, 2])
    keep = torch.isfinite(u2) & torch.isfinite(v2) & (u2 >= 0) & (u2 < W) & (v2 >= 0) & (v2 < H)
    if zbuffer:
        keep &= z2 > 0
    target = (v2[keep] * W + u2[keep]).long()
    if zbuffer:
        proj = torch.full((H * W,), torch.inf, dtype=torch.float64, device=z.device)
        proj.scatter_reduce_(0, target, z2[keep], reduce="amin")
        proj[torch.isinf(proj)] = 0.0
    else:
        source = torch.nonzero(keep).squeeze(1)
        winner = torch.full((H * W,), -1, dtype=torch.long, device=z.device)
        winner.scatter_reduce_(0, target, source, reduce="amax")
        proj = torch.where(winner >= 0, z2[winner.clamp(min=0)], torch.zeros_like(z2[:1]))
    return proj.reshape(H, W)


def temporal_alignment_error(depth: Tensor | Sequence[Tensor], intrinsics: Tensor, cam_to_world: Tensor,
                             reference: bool = False) -> tuple[Tensor, int]:
    """VDA's TAE x 100 of one video and the number of directed pairs it averages.

    depth (T, H, W) aligned predicted depth (or T (H, W) maps); intrinsics (T, 3, 3) in pixels of ``depth``;
    cam_to_world (T, 4, 4), OpenCV axes. For each pair (k, k+1), frame k is reprojected into k+1
    with T_{k+1<-k} = inv(P_{k+1}) P_k and compared with depth k+1 where both are > 0:
    mean |d_{k+1} - proj| / d_{k+1}; then k+1 into k. Default: z-buffered reprojection, and a
    directed pair where no pixel overlaps is left out of the mean, as are the pairs of a frame whose pose
    is not finite (a lost pose). ``reference=True`` reproduces
    ``eval_tae.py``: last write wins, and such a pair counts as error 0 in the 2 (T - 1) pairs.
    NaN when no pair is usable (a single frame).
    """
    T = len(depth)
    total, pairs = torch.zeros((), dtype=torch.float64, device=depth[0].device), 0
    for k in range(T - 1):
        if not (torch.isfinite(cam_to_world[k]).all() and torch.isfinite(cam_to_world[k + 1]).all()):
            continue  # a lost pose (NaN in converted shards: pose_valid False) leaves its pairs out
        rel = torch.linalg.inv(cam_to_world[k + 1].double()) @ cam_to_world[k].double()  # T_{k+1<-k}
        for src, dst, transform in ((k, k + 1, rel), (k + 1, k, torch.linalg.inv(rel))):
            proj = reproject_depth(depth[src], intrinsics[src], intrinsics[dst], transform, zbuffer=not reference)
            target = depth[dst].double()
            both = (proj > 0) & (target > 0)
            if both.any():
                total = total + ((target[both] - proj[both]).abs() / target[both]).mean()
                pairs += 1
            elif reference:
                pairs += 1
    return (100.0 * total / pairs if pairs else torch.full_like(total, float("nan"))), pairs


def track_depth_changes(pred_depth: Tensor, gt_depth: Tensor, valid: Tensor, tracks: Tensor,
                        visible: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pair relative errors e (see the module docstring) of one video and their usable-pair mask.

    pred_depth, gt_depth (T, H, W); valid (T, H, W); tracks (T, N, 2) pixels; visible (T, N).
    Returns (e (T-1, N), ok (T-1, N)).
    """
    T, H, W = gt_depth.shape
    px = torch.floor(tracks[..., 0].double() + 0.5).long()
    py = torch.floor(tracks[..., 1].double() + 0.5).long()
    inside = (px >= 0) & (px < W) & (py >= 0) & (py < H)
    xi, yi = px.clamp(0, W - 1), py.clamp(0, H - 1)
    t = torch.arange(T, device=gt_depth.device).unsqueeze(1).expand_as(xi)
    d_hat = pred_depth[t, yi, xi].double()
    d = gt_depth[t, yi, xi].double()
    ok_point = visible & inside & valid[t, yi, xi]
    ok = ok_point[1:] & ok_point[:-1]
    err = ((d_hat[1:] - d_hat[:-1]) - (d[1:] - d[:-1])).abs() / ((d[1:] + d[:-1]) / 2).clamp(min=1e-6)
    return torch.where(ok, err, torch.zeros_like(err)), ok


class VideoDepthMetrics(Metric):
    """AbsRel, delta1, RMSE and temporal consistency of relative-disparity predictions, per-video alignment.

    The training-time validation metric: each batch element is a whole clip. For the published
    benchmark tables (clips split over windows, crops, depth predictions, per-video results) use
    ``metrics.depth_benchmark.VideoDepthBenchmarkMetric``.

    ``update(pred_disp, gt_depth, valid, ...)`` with pred_disp (B, T, [1,] H, W) disparity,
    gt_depth (B, T, [1,] H, W) depth (convert disparity ground truth first), valid bool of the
    same shape; optional tracks (B, T, N, 2) / visible (B, T, N) for
    ``track_tae`` and intrinsics (B, T, 3, 3) / poses (B, T, 4, 4) for ``tae``.
    """

    full_state_update = False

    def __init__(self, max_depth: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_depth = float(max_depth)
        for name in ("abs_rel_sum", "delta1_sum", "rmse_sum", "num_videos", "track_tae_sum", "track_videos", "tae_sum",
                     "tae_videos"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred_disp: Tensor, gt_depth: Tensor, valid: Tensor, tracks: Tensor | None = None,
               visible: Tensor | None = None, intrinsics: Tensor | None = None, poses: Tensor | None = None) -> None:
        if (intrinsics is None) != (poses is None):
            raise ValueError("tae needs both intrinsics and poses")
        for b in range(pred_disp.shape[0]):
            p, g, v = _frames(pred_disp[b]).detach(), _frames(gt_depth[b]).double(), _frames(valid[b]).bool()
            if p.shape != g.shape or v.shape != g.shape:
                raise ValueError(f"prediction {tuple(p.shape)}, ground truth {tuple(g.shape)} and valid "
                                 f"{tuple(v.shape)} must have the same (T, H, W)")
            v = v & (g > 1e-3) & (g < self.max_depth)
            if not v.any():
                continue  # a video without ground truth cannot be scored
            d = aligned_depth(p, g, v, self.max_depth)
            abs_rel, delta1, rmse, frames = frame_errors(d, g, v)
            self.abs_rel_sum += abs_rel[frames].mean()
            self.delta1_sum += delta1[frames].mean()
            self.rmse_sum += rmse[frames].mean()
            self.num_videos += 1
            if tracks is not None:
                vis = torch.ones(tracks.shape[1:3], dtype=torch.bool, device=p.device) if visible is None else visible[b]
                err, ok = track_depth_changes(d, g, v, tracks[b], vis.bool())
                if ok.any():
                    self.track_tae_sum += 100.0 * err.sum() / ok.sum()
                    self.track_videos += 1
            if intrinsics is not None:
                tae, pairs = temporal_alignment_error(d, intrinsics[b], poses[b])
                if pairs:
                    self.tae_sum += tae
                    self.tae_videos += 1

    def compute(self) -> dict[str, Tensor]:
        out = {"abs_rel": self.abs_rel_sum / self.num_videos, "delta1": self.delta1_sum / self.num_videos,
               "rmse": self.rmse_sum / self.num_videos}
        if self.track_videos > 0:
            out["track_tae"] = self.track_tae_sum / self.track_videos
        if self.tae_videos > 0:
            out["tae"] = self.tae_sum / self.tae_videos
        return {k: v.float() for k, v in out.items()}
