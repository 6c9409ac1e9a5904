"""Pre-extraction of pseudo-labels: the predict step of ``tools/extract_tracks.py --pseudo-labels``.

Each stored video becomes one training sample, cut and labelled exactly as training on the
fly would (``datamodules.unlabelled_videos`` clip sampling, ``make_pseudo_labels`` with a
teacher drawn by weight), seeded by the clip key and ``seed`` so a rerun writes the same
samples and another seed writes new ones. The sample keeps its queries and names its teacher
(meta ``pseudo_labels``), so ``data.pseudo_labels=from_shards`` trains on it as stored.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch

from datamodules.clip_sampling import clip_id
from datamodules.unlabelled_videos import UnlabelledVideoDataConfig, clip_frame_indices, crop_origin, draw_clip_len
from lightning_modules.pseudolabel_targets import make_pseudo_labels
from lightning_modules.pseudolabel_teachers import TeacherSet
from models.keypoint_queries import KeypointQuerySampler, QuerySamplingConfig


class PseudoLabelExtractor(L.LightningModule):
    """predict_step: one whole clip (``frames`` uint8 (T, H, W, 3)) -> one labelled training sample."""

    def __init__(self, teachers: TeacherSet, data: UnlabelledVideoDataConfig, queries: QuerySamplingConfig,
                 seed: int = 0) -> None:
        super().__init__()
        self.teachers, self.data, self.seed = teachers, data, seed
        self.sampler = KeypointQuerySampler(queries)

    def on_predict_start(self) -> None:
        self.teachers.to(self.device)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        key = batch["key"]
        entropy = [self.seed, clip_id(key)]
        rng = np.random.default_rng(entropy)
        frames = batch["frames"]
        indices = clip_frame_indices(frames.shape[0], draw_clip_len(self.data, rng), self.data, rng)
        crop = tuple(self.data.crop_hw) if self.data.crop_hw is not None else None
        y0, x0 = crop_origin(tuple(frames.shape[1:3]), crop, rng, key)
        clip = frames[torch.from_numpy(indices)]
        if crop is not None:
            clip = clip[:, y0:y0 + crop[0], x0:x0 + crop[1]]
        video = clip.to(self.device).permute(0, 3, 1, 2)[None].float()
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        index = self.teachers.draw(generator)
        teacher = self.teachers[index]
        labels = make_pseudo_labels(video, self.data.num_queries, teacher, self.sampler, generator)
        info = {"teacher": teacher.name, "teacher_type": teacher.type, "occluded_loss": bool(teacher.occluded_loss),
                "keypoints_found": bool(labels.keypoints_found[0]), "seed": self.seed,
                "source_frames": [int(i) for i in indices], "crop_origin": [y0, x0]}
        return {"key": f"{key}s{self.seed}", "frames": clip.contiguous(), "meta": batch["meta"],
                "depth": None, "depth_valid": None, "jpeg_frames": None,
                "tracks": labels.tracks[0].cpu().numpy(), "visible": labels.visible[0].cpu().numpy(),
                "queries": labels.queries[0].cpu().numpy(), "meta_update": {"pseudo_labels": info}}
