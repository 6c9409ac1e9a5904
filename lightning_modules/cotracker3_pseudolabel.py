"""CoTracker3 fine-tuned on unlabelled videos with pseudo-labels from frozen teachers.

CoTracker3's second stage (co-tracker ``train_on_real_data.py``): the student starts from a
Kubric checkpoint (``init_from``: an official ``.pth`` or a ``.ckpt`` of a CoTracker3 family);
each batch gets its targets from one teacher of ``teachers``, drawn by weight, on SIFT
queries (``queries``), unless the batch comes from shards pre-extracted by
``tools/extract_tracks.py --pseudo-labels`` (``data.pseudo_labels=from_shards``) and already
carries them. Loss: ``pseudolabel_loss`` (position terms only; ``vis_conf_head`` frozen).

Randomness (seeded by ``seed``, the step and the batch index, so a rerun draws the same): the
teacher is drawn once per step for all ranks (``teacher_draw=shared``: every rank of a step
learns from the same teacher, as in the reference, whose ranks draw from identically seeded
generators), or per rank (``per_rank``: a mixture of teachers within each step). Queries are
drawn per rank. Teachers are loaded when fitting starts, so validating, testing or predicting
with a checkpoint of this family needs no teacher files; checkpoints hold the student only and
also load as ``model.init_from`` of the ``cotracker3`` family.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lightning_modules.cotracker3 import CoTracker3ModelConfig, CoTracker3Module
from lightning_modules.cotracker3_pseudolabel_loss import PseudoLabelLossConfig, pseudolabel_loss
from lightning_modules.pseudolabel_targets import make_pseudo_labels
from lightning_modules.pseudolabel_teachers import TEACHER_DRAWS, TeacherConfig, TeacherSet
from lightning_modules.registry import model_config, register_family
from models.keypoint_queries import KeypointQuerySampler, QuerySamplingConfig

log = logging.getLogger(__name__)

DATA_KIND = "unlabelled_videos"


@dataclass
class CoTracker3PseudolabelModelConfig(CoTracker3ModelConfig):
    """The cotracker3 family's settings plus teachers and query sampling; defaults: the reference's
    real-data recipe (lr 5e-5, OneCycle without warm-up, weight decay 1e-5, vis_conf_head frozen)."""

    family: str = "cotracker3_pseudolabel"
    teachers: list[TeacherConfig] = field(default_factory=list)
    teacher_draw: str = "shared"  # shared | per_rank (module docstring)
    queries: QuerySamplingConfig = field(default_factory=QuerySamplingConfig)
    lr: float = 5e-5
    weight_decay: float = 1e-5
    warmup_pct: float = 0.0
    loss: PseudoLabelLossConfig = field(default_factory=PseudoLabelLossConfig)
    freeze: list[str] = field(default_factory=lambda: ["updateformer.vis_conf_head."])
    # From other sections: validation on a TAP-Vid benchmark (data.val_tapvid) uses its query mode;
    # the training data's kind, pseudo-label source and tracks per clip; the run's seed.
    query_mode: str = "${oc.select:data.query_mode,${oc.select:data.val_tapvid.query_mode,first}}"
    data_kind: Optional[str] = "${oc.select:data.kind,null}"
    pseudo_labels: str = "${oc.select:data.pseudo_labels,on_the_fly}"
    num_queries: int = "${oc.select:data.num_queries,384}"
    seed: int = "${oc.select:seed,0}"


def _generator(*entropy: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def teacher_generator(draw: str, seed: int, step: int, batch_idx: int, rank: int) -> torch.Generator:
    """The generator of a batch's teacher draw: the same on every rank for `shared` draws."""
    return _generator(seed, step, batch_idx) if draw == "shared" else _generator(seed, step, batch_idx, rank)


@register_family("cotracker3_pseudolabel", CoTracker3PseudolabelModelConfig)
class CoTracker3PseudolabelModule(CoTracker3Module):
    def __init__(self, cfg: DictConfig | CoTracker3PseudolabelModelConfig | dict) -> None:
        super().__init__(model_config(cfg, CoTracker3PseudolabelModelConfig))
        m = self.cfg
        if m.teacher_draw not in TEACHER_DRAWS:
            raise ValueError(f"model.teacher_draw must be one of {TEACHER_DRAWS}, got {m.teacher_draw!r}")
        self.loss_cfg = PseudoLabelLossConfig(**OmegaConf.to_container(m.loss))
        self.sampler = KeypointQuerySampler(OmegaConf.to_object(m.queries))
        self.teachers: TeacherSet | None = None  # loaded in setup("fit"); never in the state_dict

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        if self.cfg.data_kind != DATA_KIND:
            raise ValueError(f"model.family=cotracker3_pseudolabel trains on data.kind={DATA_KIND!r} "
                             f"(unlabelled clips), got data.kind={self.cfg.data_kind!r}")
        if self.cfg.pseudo_labels == "on_the_fly" and self.teachers is None:
            self.teachers = TeacherSet.load([OmegaConf.to_object(t) for t in self.cfg.teachers])

    def on_fit_start(self) -> None:
        if self.teachers is not None:
            self.teachers.to(self.device)

    def pseudo_labels(self, video: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        """Targets for a batch of clips from one drawn teacher (on the fly)."""
        seed, step, rank = self.cfg.seed, self.global_step, self.global_rank
        index = self.teachers.draw(teacher_generator(self.cfg.teacher_draw, seed, step, batch_idx, rank))
        labels = make_pseudo_labels(video, self.cfg.num_queries, self.teachers[index], self.sampler,
                                    _generator(seed, step, batch_idx, rank, 1))
        B = video.shape[0]
        self.log("train/teacher", float(index), batch_size=B)
        self.log("train/keypoint_fallbacks", float((~labels.keypoints_found).sum()), batch_size=B)
        return labels.as_batch()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        video = batch["video"]
        targets = batch if "tracks" in batch else self.pseudo_labels(video, batch_idx)
        m = self.cfg
        windows = self.model.forward_train(video, targets["queries"], iters=m.train_iters)
        terms = pseudolabel_loss([w.__dict__ for w in windows], targets, self.loss_cfg,
                                 mask_before_query=self.model.config.variant == "online")
        return self.finish_training_step(terms, video.shape[0], m.max_consecutive_nonfinite)
