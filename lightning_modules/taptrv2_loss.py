"""TAPTRv2 training loss: the reference `PointTrackingCriterion` with its TAPTRv2 weights, on our batch layout.

IDEA-Research/TAPTR (branch v2) matches prediction n to ground truth n (no Hungarian matching)
and supervises the full-sequence trajectory of every decoder layer:

  loss = sum_l position_weight     * L1(layer_tracks[l])
       + sum_l apu_position_weight * L1(layer_apu_tracks[l])   # positions right after APU
       + visibility_weight * focal(vis_logits)                 # last layer only

L1 is |dx| + |dy| on coordinates normalised by (W - 1, H - 1), summed over the supervised
point-frames and divided by (their count + 1). A point-frame is supervised when it lies after
the point's query frame (no loss at the query frame or before it) and is annotated (`valid`);
for positions its ground truth must also lie inside the frame ([0, 1] after normalisation,
the reference's `ignore_outsight`). Occluded points inside the frame keep their position loss.

The visibility term is the sigmoid focal loss (alpha 0.25, gamma 2) on 3 logits against the
one-hot label `occluded + 1` (1 = visible, 2 = occluded, class 0 never a target), summed over
classes and supervised point-frames (out-of-frame ones included) and divided by (count + 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TaptrV2LossConfig:
    position_weight: float = 5.0  # bbox_loss_coef, every decoder layer (layer decay 1.0)
    apu_position_weight: float = 5.0  # supervise_ca_update, every decoder layer
    visibility_weight: float = 1.0  # cls_loss_coef, last layer only (ignore_middle_cls_loss)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    ignore_outside: bool = True  # ignore_outsight: no position loss where the ground truth leaves the frame


def after_query_mask(queries: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B, T, N) bool: frames strictly after each point's query frame (the reference's update mask).

    Query frames are rounded to whole frames, as the model does.
    """
    frames = torch.arange(num_frames, device=queries.device, dtype=queries.dtype)
    return frames[None, :, None] > queries[:, None, :, 0].round()


def normalise_xy(points: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Pixels (centres at integers) -> [0, 1] by (W - 1, H - 1), the reference's `compensate_HW_ratio`."""
    return points / points.new_tensor([hw[1] - 1, hw[0] - 1])


def position_l1(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum over masked entries of |dx| + |dy|, / (count + 1); pred, gt (B, T, N, 2) normalised, mask (B, T, N)."""
    per_point = (pred - gt).abs().sum(-1)
    return (per_point * mask).sum() / (mask.sum() + 1)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Element-wise RetinaNet focal loss on independent sigmoids (no reduction)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def visibility_focal(logits: torch.Tensor, visible: torch.Tensor, mask: torch.Tensor, alpha: float,
                     gamma: float) -> torch.Tensor:
    """Focal loss of (B, T, N, 3) logits against label 1 (visible) / 2 (occluded), / (count + 1)."""
    labels = torch.where(visible, 1, 2)
    targets = F.one_hot(labels, num_classes=logits.shape[-1]).to(logits.dtype)
    per_point = sigmoid_focal_loss(logits, targets, alpha, gamma).sum(-1)
    return (per_point * mask).sum() / (mask.sum() + 1)


def taptrv2_loss(layer_tracks: torch.Tensor, layer_apu_tracks: torch.Tensor, vis_logits: torch.Tensor,
                 batch: dict[str, torch.Tensor], cfg: TaptrV2LossConfig) -> dict[str, torch.Tensor]:
    """Loss terms for (L, B, T, N, 2) pixel tracks of every decoder layer and (B, T, N, 3) last-layer logits.

    Returns the unweighted sums over layers (`position`, `apu_position`), the last layer's
    `position_last`, `visibility`, and the weighted total `loss`.
    """
    gt_tracks, queries = batch["tracks"], batch["queries"]
    if layer_tracks.shape[1:] != gt_tracks.shape or layer_apu_tracks.shape != layer_tracks.shape:
        raise ValueError(f"layer tracks {tuple(layer_tracks.shape)} / APU tracks {tuple(layer_apu_tracks.shape)} "
                         f"do not match (L, *{tuple(gt_tracks.shape)})")
    if vis_logits.shape[:-1] != gt_tracks.shape[:-1] or vis_logits.shape[-1] != 3:
        raise ValueError(f"visibility logits {tuple(vis_logits.shape)} must be (B, T, N, 3)")
    hw = tuple(batch["video"].shape[-2:])
    supervised = after_query_mask(queries, gt_tracks.shape[1]) & batch["valid"]
    gt = normalise_xy(gt_tracks, hw)
    position_mask = supervised
    if cfg.ignore_outside:
        position_mask = supervised & ((gt >= 0) & (gt <= 1)).all(-1)
    position_mask = position_mask.to(gt.dtype)
    per_layer = torch.stack([position_l1(normalise_xy(p, hw), gt, position_mask) for p in layer_tracks])
    per_layer_apu = torch.stack([position_l1(normalise_xy(p, hw), gt, position_mask) for p in layer_apu_tracks])
    visibility = visibility_focal(vis_logits, batch["visible"], supervised.to(vis_logits.dtype), cfg.focal_alpha,
                                  cfg.focal_gamma)
    terms = {"position": per_layer.sum(), "position_last": per_layer[-1].detach(),
             "apu_position": per_layer_apu.sum(), "visibility": visibility}
    terms["loss"] = (cfg.position_weight * terms["position"] + cfg.apu_position_weight * terms["apu_position"]
                     + cfg.visibility_weight * visibility)
    return terms
