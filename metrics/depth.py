"""Video depth metrics (torchmetrics, sum states, DDP-correct).

Protocol (Video Depth Anything / DepthCrafter ``benchmark/eval``), per video:
1. valid pixels: ground-truth mask & 1e-3 < depth < max_depth;
2. prediction (a disparity) clipped to >= 1e-3; ONE least-squares scale and shift over all valid
   pixels of all frames against the ground-truth disparity 1 / depth (float64);
3. aligned disparity clipped to >= 1e-3, inverted to depth, clipped to [1e-3, max_depth];
4. AbsRel = mean over frames (with a valid pixel) of the per-frame mean |d - gt| / gt;
   delta1 = the same average of the fraction of pixels with max(d / gt, gt / d) < 1.25.
The benchmark figure is the plain mean over videos.

Temporal consistency:
- ``tae`` (only when camera intrinsics and camera-to-world poses are given), VDA
  ``eval_tae.py``: for each consecutive pair, back-project the aligned predicted depth of frame k
  with K, move it by T_{k+1<-k} = P_{k+1}^-1 P_k, project into frame k+1 (rounded pixels, later
  points overwrite), AbsRel against the predicted depth of frame k+1 where both are > 0, and the
  same from k+1 to k; TAE = 100 x sum / (2 (T - 1)), mean over videos.
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

import torch
from torch import Tensor
from torchmetrics import Metric


def _frames(x: Tensor) -> Tensor:
    return x[:, 0] if x.dim() == 4 else x  # (T, 1, H, W) -> (T, H, W)


def align_disparity(pred_disp: Tensor, gt_depth: Tensor, valid: Tensor) -> Tensor:
    """One least-squares (s, t) per video in disparity space -> aligned disparity (T, H, W), float64.

    pred_disp, gt_depth (T, H, W); valid (T, H, W) bool (already restricted to the depth range).
    """
    p = pred_disp.double().clamp(min=1e-3)
    g = 1.0 / gt_depth.double()[valid]
    x = p[valid]
    A = torch.stack([x, torch.ones_like(x)], dim=1)
    solution = torch.linalg.lstsq(A, g.unsqueeze(1)).solution.squeeze(1)
    return solution[0] * p + solution[1]


def aligned_depth(pred_disp: Tensor, gt_depth: Tensor, valid: Tensor, max_depth: float) -> Tensor:
    """The protocol's aligned predicted depth (T, H, W), float64."""
    disp = align_disparity(pred_disp, gt_depth, valid).clamp(min=1e-3)
    return (1.0 / disp).clamp(1e-3, max_depth)


def _tae_pair(depth1: Tensor, depth2: Tensor, rel: Tensor, K: Tensor) -> Tensor:
    """AbsRel between depth1 moved into frame 2 by the 4x4 transform `rel` and depth2 (VDA tae_torch)."""
    H, W = depth1.shape
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    yy, xx = torch.meshgrid(torch.arange(H, dtype=depth1.dtype), torch.arange(W, dtype=depth1.dtype), indexing="ij")
    pts = torch.stack([(xx - cx) * depth1 / fx, (yy - cy) * depth1 / fy, depth1], -1).reshape(-1, 3)
    moved = pts @ rel[:3, :3].T + rel[:3, 3]
    u = torch.round(moved[:, 0] * fx / moved[:, 2] + cx).long()
    v = torch.round(moved[:, 1] * fy / moved[:, 2] + cy).long()
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    zero = depth1.new_zeros(())
    if not inside.any():
        return zero
    proj = torch.zeros_like(depth1)
    proj[v[inside], u[inside]] = moved[inside, 2]
    both = (proj > 0) & (depth2 > 0)
    if not both.any():
        return zero
    return ((depth2[both] - proj[both]).abs() / depth2[both]).mean()


def temporal_alignment_error(depth: Tensor, intrinsics: Tensor, poses: Tensor) -> Tensor:
    """TAE x 100 of one video: depth (T, H, W) aligned prediction, intrinsics (T, 3, 3), poses (T, 4, 4)
    camera-to-world."""
    T = depth.shape[0]
    depth, intrinsics, poses = depth.double(), intrinsics.double(), poses.double()
    total = depth.new_zeros(())
    for k in range(T - 1):
        rel = torch.linalg.inv(poses[k + 1]) @ poses[k]
        total = total + _tae_pair(depth[k], depth[k + 1], rel, intrinsics[k])
        total = total + _tae_pair(depth[k + 1], depth[k], torch.linalg.inv(rel), intrinsics[k])
    return 100.0 * total / (2 * (T - 1))


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
    """AbsRel, delta1 and temporal consistency of relative-disparity predictions, per-video alignment.

    ``update(pred_disp, gt_depth, valid, ...)`` with pred_disp (B, T, [1,] H, W) disparity,
    gt_depth (B, T, [1,] H, W) depth (convert disparity ground truth first), valid bool of the
    same shape; optional tracks (B, T, N, 2) / visible (B, T, N) for
    ``track_tae`` and intrinsics (B, T, 3, 3) / poses (B, T, 4, 4) for ``tae``.
    """

    full_state_update = False

    def __init__(self, max_depth: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_depth = float(max_depth)
        for name in ("abs_rel_sum", "delta1_sum", "num_videos", "track_tae_sum", "track_videos", "tae_sum",
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
            frames = v.flatten(1).any(1)
            n = v.flatten(1).sum(1).clamp(min=1)
            rel = torch.where(v, (d - g).abs() / g.clamp(min=1e-3), torch.zeros_like(g)).flatten(1).sum(1) / n
            ratio = torch.maximum(d / g.clamp(min=1e-3), g / d)
            good = ((ratio < 1.25) & v).flatten(1).sum(1) / n
            self.abs_rel_sum += rel[frames].mean()
            self.delta1_sum += good.double()[frames].mean()
            self.num_videos += 1
            if tracks is not None:
                vis = torch.ones(tracks.shape[1:3], dtype=torch.bool, device=p.device) if visible is None else visible[b]
                err, ok = track_depth_changes(d, g, v, tracks[b], vis.bool())
                if ok.any():
                    self.track_tae_sum += 100.0 * err.sum() / ok.sum()
                    self.track_videos += 1
            if intrinsics is not None:
                self.tae_sum += temporal_alignment_error(d, intrinsics[b], poses[b])
                self.tae_videos += 1

    def compute(self) -> dict[str, Tensor]:
        out = {"abs_rel": self.abs_rel_sum / self.num_videos, "delta1": self.delta1_sum / self.num_videos}
        if self.track_videos > 0:
            out["track_tae"] = self.track_tae_sum / self.track_videos
        if self.tae_videos > 0:
            out["tae"] = self.tae_sum / self.tae_videos
        return {k: v.float() for k, v in out.items()}
