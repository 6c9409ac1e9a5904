"""CoTracker3-style training augmentation on the device; tracks move with the frames.

All geometric operations (flips, zoom, crop, per-frame drift of zoom and crop centre) are
composed into one affine matrix per frame, applied to the frames with kornia's
`warp_affine` and to the tracks with the same matrix (pixel centres at integers, so the
warp uses align_corners=True). Photometric changes are drawn independently per frame, as
CoTracker does. Occluder boxes and leaving the frame make points invisible.
"""

from __future__ import annotations

import math

import kornia.augmentation as KA
import torch
from kornia.geometry.transform import warp_affine

from configs.schema import AugmentConfig


def _ar_drift(shape: tuple[int, ...], amplitude: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Smooth per-frame jitter along dim 1: d_t = 0.8 d_{t-1} + U(-a, a), d_0 = 0."""
    noise = (torch.rand(shape, generator=generator, device=device) * 2 - 1) * amplitude
    drift = torch.zeros(shape, device=device)
    for t in range(1, shape[1]):
        drift[:, t] = 0.8 * drift[:, t - 1] + noise[:, t]
    return drift


def sample_affines(
    tracks: torch.Tensor, visible: torch.Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int],
    cfg: AugmentConfig, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-frame 2x3 matrices (B, T, 2, 3) mapping input pixel coords to output pixel coords."""
    B, T = tracks.shape[:2]
    device = tracks.device
    H, W = in_hw
    Ho, Wo = out_hw

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=generator, device=device)

    base = uniform(cfg.scale_min, cfg.scale_max, B, 1)
    # Small anisotropy, then per-frame zoom drift (clipped like CoTracker's [0.2, 2]).
    scale = base.unsqueeze(-1) * (1 + uniform(-cfg.aspect_jitter, cfg.aspect_jitter, B, 1, 2))
    scale = (scale + _ar_drift((B, T, 2), cfg.scale_drift, generator, device).mul(base.unsqueeze(-1))).clamp(0.2, 2.0)

    flip_x = torch.rand(B, generator=generator, device=device) < cfg.flip_h_p
    flip_y = torch.rand(B, generator=generator, device=device) < cfg.flip_v_p
    flip_sign = torch.stack([torch.where(flip_x, -1.0, 1.0), torch.where(flip_y, -1.0, 1.0)], -1)  # (B, 2)
    flip_shift = torch.stack([torch.where(flip_x, W - 1.0, 0.0), torch.where(flip_y, H - 1.0, 0.0)], -1)

    # Crop centred on the frame-0 visible points (in flipped input coords), kept inside the image when it fits.
    xy0 = tracks[:, 0] * flip_sign[:, None] + flip_shift[:, None]
    w0 = visible[:, 0].float().unsqueeze(-1)
    centre = (xy0 * w0).sum(1) / w0.sum(1).clamp(min=1)
    centre = torch.where(w0.sum(1) > 0, centre, torch.tensor([(W - 1) / 2, (H - 1) / 2], device=device))
    half = torch.tensor([(Wo - 1) / 2, (Ho - 1) / 2], device=device) / base
    limit = torch.tensor([W - 1.0, H - 1.0], device=device)
    lo, hi = half, limit - half
    centre = torch.where(lo <= hi, torch.maximum(torch.minimum(centre, hi), lo), limit / 2)
    offset = _ar_drift((B, T, 2), cfg.offset_drift, generator, device) * torch.tensor([Wo, Ho], device=device)
    centre = centre[:, None] + offset / base[:, None]

    # q = S (F p - c) + c_out  with F p = sign * p + shift.
    out_centre = torch.tensor([(Wo - 1) / 2, (Ho - 1) / 2], device=device)
    linear = scale * flip_sign[:, None]  # diagonal (B, T, 2)
    translation = scale * (flip_shift[:, None] - centre) + out_centre
    affine = torch.zeros(B, T, 2, 3, device=device)
    affine[..., 0, 0], affine[..., 1, 1] = linear[..., 0], linear[..., 1]
    affine[..., :, 2] = translation
    return affine


def apply_affine_to_points(points: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """points (B, T, N, 2), affine (B, T, 2, 3) -> transformed points."""
    return points @ affine[..., :2].transpose(-1, -2) + affine[..., 2].unsqueeze(-2)


def warp_video(video: torch.Tensor, affine: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    B, T = video.shape[:2]
    warped = warp_affine(video.flatten(0, 1), affine.flatten(0, 1), dsize=out_hw, mode="bilinear",
                         padding_mode="zeros", align_corners=True)
    return warped.view(B, T, *warped.shape[1:])


def photometric(video: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Colour jitter and blur with parameters drawn independently for every frame."""
    B, T = video.shape[:2]
    frames = video.flatten(0, 1) / 255.0
    jitter = KA.ColorJiggle(0.2, 0.2, 0.2, 0.25 / math.pi, p=cfg.color_jitter_p)
    blur = KA.RandomGaussianBlur((11, 11), (0.1, 2.0), p=cfg.blur_p)
    frames = blur(jitter(frames)).clamp(0, 1) * 255.0
    return frames.view(B, T, *frames.shape[1:])


def add_occluders(
    video: torch.Tensor, tracks: torch.Tensor, visible: torch.Tensor, cfg: AugmentConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes filled with their mean colour on frames after the first; covered points become invisible."""
    B, T, _, H, W = video.shape
    device = video.device
    video, visible = video.clone(), visible.clone()
    active_frame = torch.rand(B, T, generator=generator, device=device) < cfg.occluder_p
    active_frame[:, 0] = False
    count = torch.randint(1, cfg.max_occluders + 1, (B, T), generator=generator, device=device)
    ys = torch.arange(H, device=device).view(1, 1, H, 1)
    xs = torch.arange(W, device=device).view(1, 1, 1, W)
    for k in range(cfg.max_occluders):
        on = active_frame & (count > k)
        if not on.any():
            continue
        size = cfg.occluder_min_size + (cfg.occluder_max_size - cfg.occluder_min_size) * torch.rand(
            B, T, 2, generator=generator, device=device)
        size = size * torch.tensor([W, H], device=device)
        corner = torch.rand(B, T, 2, generator=generator, device=device) * torch.tensor([W, H], device=device) - size / 2
        x0, y0 = corner[..., 0, None, None], corner[..., 1, None, None]
        x1, y1 = x0 + size[..., 0, None, None], y0 + size[..., 1, None, None]
        box = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1) & on[..., None, None]  # (B, T, H, W)
        area = box.sum((-1, -2)).clamp(min=1).unsqueeze(-1)
        mean = (video * box.unsqueeze(2)).sum((-1, -2)) / area  # (B, T, 3)
        video = torch.where(box.unsqueeze(2), mean[..., None, None], video)
        px, py = tracks[..., 0], tracks[..., 1]
        inside = (px >= x0[..., 0]) & (px <= x1[..., 0]) & (py >= y0[..., 0]) & (py <= y1[..., 0]) & on[..., None]
        visible &= ~inside
    return video, visible


def in_frame(tracks: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    H, W = hw
    x, y = tracks[..., 0], tracks[..., 1]
    return (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)


def requery(queries: torch.Tensor, tracks: torch.Tensor, visible: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each query frame if the point is still visible there, else use its first visible frame.

    Tracks never visible after augmentation are marked invalid (excluded from the loss).
    """
    B, T, N = visible.shape
    frame = queries[..., 0].round().long().clamp(0, T - 1)
    still = visible.gather(1, frame.unsqueeze(1)).squeeze(1)
    first = visible.float().argmax(1)
    frame = torch.where(still, frame, first)
    xy = tracks.gather(1, frame.view(B, 1, N, 1).expand(B, 1, N, 2)).squeeze(1)
    ever = visible.any(1)
    return torch.cat([frame.unsqueeze(-1).float(), xy], -1), valid & ever.unsqueeze(1)


def augment_tracking_batch(
    batch: dict[str, torch.Tensor], cfg: AugmentConfig, crop_hw: list[int] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Augment a training batch in place of its video / tracks / visible / queries / valid."""
    video, tracks, visible = batch["video"], batch["tracks"], batch["visible"]
    in_hw = tuple(video.shape[-2:])
    out_hw = tuple(crop_hw) if crop_hw else in_hw
    video = photometric(video, cfg)
    affine = sample_affines(tracks, visible, in_hw, out_hw, cfg, generator)
    video = warp_video(video, affine, out_hw)
    tracks = apply_affine_to_points(tracks, affine)
    visible = visible & in_frame(tracks, out_hw)
    video, visible = add_occluders(video, tracks, visible, cfg, generator)
    queries, valid = requery(batch["queries"], tracks, visible, batch["valid"])
    out = dict(batch)
    out.update(video=video, tracks=tracks, visible=visible, queries=queries, valid=valid)
    if "intrinsics" in batch:  # pixel coordinates moved by the affine: K' = A K (a flip gives a negative focal)
        A = torch.cat([affine, affine.new_tensor([0.0, 0.0, 1.0]).expand(*affine.shape[:2], 1, 3)], dim=-2)
        out["intrinsics"] = A @ batch["intrinsics"]
    if "depth" in batch:  # depth follows the geometry; nearest keeps invalid pixels from bleeding
        out["depth"] = warp_affine(batch["depth"].flatten(0, 1), affine.flatten(0, 1), dsize=out_hw,
                                   mode="nearest", align_corners=True).view(*video.shape[:2], 1, *out_hw)
        mask = warp_affine(batch["depth_valid"].flatten(0, 1).float(), affine.flatten(0, 1), dsize=out_hw,
                           mode="nearest", align_corners=True)
        out["depth_valid"] = mask.view(*video.shape[:2], 1, *out_hw) > 0.5
    return out
