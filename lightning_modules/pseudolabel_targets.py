"""Pseudo-labels for a batch of unlabelled clips: queries, one teacher's tracks, the loss masks.

The same function serves training on the fly and the pre-extraction job, so both produce the
same targets (co-tracker ``train_on_real_data.py::forward_batch``, up to the student forward):

1. queries: SIFT keypoints of early frames, or uniform points when too few are found;
2. the teacher's support points are appended (module ``pseudolabel_teachers``);
3. the teacher tracks everything; the support points are cut off again;
4. pseudo visibility is the teacher's decision (CoTracker3: sigmoid(vis) > 0.9);
5. a sample whose keypoints were too few, or whose teacher tracks are not finite, keeps its
   tensors but gets ``valid`` all False, so it adds nothing to the loss (the reference zeroes
   its ``valid_mask``); its tracks are zeroed so no NaN reaches the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_modules.pseudolabel_teachers import Teacher
from models.keypoint_queries import KeypointQuerySampler


@dataclass
class PseudoLabels:
    queries: Tensor  # (B, N, 3) (t, x, y) pixels of the clip
    tracks: Tensor  # (B, T, N, 2) teacher tracks, float32
    visible: Tensor  # (B, T, N) bool, pseudo visibility
    valid: Tensor  # (B, T, N) bool, False for samples that must not be learned from
    occluded_loss: Tensor  # (B,) bool: the teacher's tracks of occluded points are supervised
    keypoints_found: Tensor  # (B,) bool: False where the queries are the uniform fallback

    def as_batch(self) -> dict[str, Tensor]:
        return {"queries": self.queries, "tracks": self.tracks, "visible": self.visible, "valid": self.valid,
                "occluded_loss": self.occluded_loss}


def cut_to_queries(tracks: Tensor, visible: Tensor, num_queries: int) -> tuple[Tensor, Tensor]:
    """Drop the support points that follow the first `num_queries` tracks."""
    return tracks[:, :, :num_queries], visible[:, :, :num_queries]


@torch.no_grad()
def make_pseudo_labels(video: Tensor, num: int, teacher: Teacher, sampler: KeypointQuerySampler,
                       generator: torch.Generator | None = None) -> PseudoLabels:
    """Targets for `num` queries on `video` (B, T, 3, H, W) float 0..255 from one teacher (module docstring)."""
    B, T, _, H, W = video.shape
    queries, found = sampler(video, num, generator)
    support = teacher.support_queries(B, T, (H, W), generator, video.device)
    tracks, visible = teacher.track(video, torch.cat([queries, support.to(queries.dtype)], dim=1))
    tracks, visible = cut_to_queries(tracks, visible, num)
    finite = torch.isfinite(tracks).flatten(1).all(1)
    tracks = torch.where(finite[:, None, None, None], tracks, torch.zeros_like(tracks))
    usable = (found & finite)[:, None, None]
    return PseudoLabels(queries=queries, tracks=tracks, visible=visible, valid=usable.expand(B, T, num).clone(),
                        occluded_loss=torch.full((B,), teacher.occluded_loss, dtype=torch.bool, device=video.device),
                        keypoints_found=found)
