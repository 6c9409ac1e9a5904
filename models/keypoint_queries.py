"""Query points for pseudo-label training: SIFT keypoints of early frames, uniform points otherwise.

CoTracker3's real-video stage (co-tracker ``train_on_real_data.py`` with
``--real_data_filter_sift``, ``get_sift_sampled_pts``) queries the points a detector finds
easy to track: ``num_frames`` = 8 frames are drawn uniformly from frames
0 .. int(T * 0.25) (repeats allowed), each contributes its strongest SIFT keypoints (at most
``ceil(num / num_frames)``), and the queries are the first ``num`` of them in draw order, as
(frame, floor(x), floor(y)). When the frames hold fewer keypoints the sample falls back to
uniform space-time queries and is marked as not found; the training loss then ignores it.

Differences from the reference, which calls OpenCV's SIFT:
- Keypoints come from kornia's SIFT scale-space detector (``SIFTFeatureScaleSpace``: DoG
  extrema over a 3-level-per-octave pyramid of the doubled image, sub-pixel refinement),
  run upright, without descriptors, on the luminance of the frame in [0, 1]. Kornia applies
  no contrast test, so detections with |DoG| below ``contrast_threshold`` (OpenCV's
  default 0.04 over its 3 layers) are dropped here; kornia has no Hessian edge test.
- The reference passes RGB frames to OpenCV as if BGR, so its grey weights R and B swapped;
  here the luminance is the standard one.
- The per-frame budget is ceil(num / num_frames) instead of floor: with floor, any ``num``
  that is not a multiple of ``num_frames`` could never be reached by an upright detector.
- Uniform points lie in [0, W - 1] x [0, H - 1] (pixel centres, our convention), not [0, W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from models.track_ops import random_space_time_queries

METHODS = ("sift", "uniform")


@dataclass
class QuerySamplingConfig:
    """How the student's queries are drawn on an unlabelled clip (defaults: the reference's)."""

    method: str = "sift"  # sift | uniform
    num_frames: int = 8  # frames searched for keypoints
    first_fraction: float = 0.25  # ... drawn from frames 0 .. int(T * first_fraction)
    contrast_threshold: float = 0.04 / 3  # minimum |DoG| of a keypoint (image in [0, 1])

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"query sampling method must be one of {METHODS}, got {self.method!r}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if not 0.0 <= self.first_fraction <= 1.0:
            raise ValueError(f"first_fraction must be in [0, 1], got {self.first_fraction}")


class KeypointQuerySampler:
    """Draws (B, num, 3) queries (t, x, y) for a video (B, T, 3, H, W) in 0..255.

    Not an nn.Module on purpose: the detector's buffers must not enter a model's state_dict.
    """

    def __init__(self, config: QuerySamplingConfig) -> None:
        self.config = config
        self._detectors: dict[tuple[int, str], torch.nn.Module] = {}

    def _detector(self, per_frame: int, device: torch.device) -> torch.nn.Module:
        key = (per_frame, str(device))
        if key not in self._detectors:
            from kornia.feature import SIFTFeatureScaleSpace

            sift = SIFTFeatureScaleSpace(num_features=per_frame, upright=True)
            self._detectors[key] = sift.detector.to(device).eval()
        return self._detectors[key]

    @torch.no_grad()
    def __call__(self, video: Tensor, num: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Returns queries (B, num, 3) on the video's device and found (B,) bool: False where the
        keypoints were too few and the queries are the uniform fallback."""
        if num < 1:
            raise ValueError(f"the number of queries must be >= 1, got {num}")
        B, T, _, H, W = video.shape
        if self.config.method == "uniform":
            uniform = random_space_time_queries(B, T, (H, W), num, generator, device=video.device)
            return uniform, torch.ones(B, dtype=torch.bool, device=video.device)
        keypoints = self.keypoints(video, num, generator)
        uniform = random_space_time_queries(B, T, (H, W), num, generator, device=video.device)
        found = torch.tensor([len(k) >= num for k in keypoints], device=video.device)
        queries = torch.stack([k[:num] if len(k) >= num else u for k, u in zip(keypoints, uniform)])
        return queries, found

    def keypoints(self, video: Tensor, num: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """Per sample, the kept keypoints (K_b <= ~num, 3) as (frame, floor(x), floor(y)), in draw order."""
        from kornia.color import rgb_to_grayscale
        from kornia.feature import get_laf_center

        c = self.config
        B, T = video.shape[:2]
        last = int(T * c.first_fraction)
        frames = torch.randint(0, last + 1, (B, c.num_frames), generator=generator,
                               device=generator.device if generator is not None else "cpu").to(video.device)
        per_frame = math.ceil(num / c.num_frames)
        picked = video[torch.arange(B, device=video.device)[:, None], frames]  # (B, F, 3, H, W)
        # The detector needs float32 whatever autocast the caller runs under.
        with torch.autocast(video.device.type, enabled=False):
            gray = rgb_to_grayscale(picked.flatten(0, 1).float() / 255.0)
            lafs, responses = self._detector(per_frame, video.device)(gray)
        centres = get_laf_center(lafs).floor().view(B, c.num_frames, per_frame, 2)
        # Slots are sorted by response; unfilled slots hold a zero response.
        kept = responses.view(B, c.num_frames, per_frame) >= c.contrast_threshold
        t = frames[:, :, None, None].expand(B, c.num_frames, per_frame, 1).to(centres.dtype)
        points = torch.cat([t, centres], dim=-1)
        return [points[b][kept[b]].float() for b in range(B)]
