"""Joint tracker (CoTracker3 family): unrolled sliding-window training and TAP-Vid evaluation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from lightning_modules.cotracker3_loss import LossWeights, cotracker3_loss
from lightning_modules.point_tracking import PointTrackingModule
from lightning_modules.registry import MEDIA_EVERY_FROM_WANDB, QUERY_MODE_FROM_DATA, model_config, register_family
from models.cotracker3 import CoTrackerThree, CoTrackerThreeConfig
from models.cotracker3_predictor import CoTrackerThreePredictor

log = logging.getLogger(__name__)


@dataclass
class CoTracker3ModelConfig:
    family: str = "cotracker3"
    arch: CoTrackerThreeConfig = field(default_factory=CoTrackerThreeConfig)
    train_iters: int = 4
    eval_iters: int = 6
    lr: float = 5e-4
    weight_decay: float = 5e-4
    adam_eps: float = 1e-8
    warmup_pct: float = 0.05
    loss: LossWeights = field(default_factory=LossWeights)
    # official CoTracker3 .pth (scaled_online.pth, baseline_offline.pth, ...) or a .ckpt of this family
    init_from: Optional[str] = None
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes, e.g. ["fnet."]
    # Evaluation: the reference evaluator's rule is sigmoid(vis) * sigmoid(conf) > 0.6.
    visibility_rule: str = "vis_conf"
    visibility_threshold: float = 0.6
    eval_support_grid: int = 0  # 5 = the reference EvaluationPredictor's global grid
    backward_tracking: Optional[bool] = None  # None: online model in strided mode
    max_consecutive_nonfinite: int = 20  # skipped NaN/Inf steps in a row before training stops
    # From other sections (registry.py): the evaluation data's query mode, the media cadence.
    query_mode: str = QUERY_MODE_FROM_DATA
    media_every_n_validations: int = MEDIA_EVERY_FROM_WANDB


@register_family("cotracker3", CoTracker3ModelConfig)
class CoTracker3Module(PointTrackingModule):
    def __init__(self, cfg: DictConfig | CoTracker3ModelConfig | dict) -> None:
        super().__init__(model_config(cfg, CoTracker3ModelConfig))
        m = self.cfg
        self.model = CoTrackerThree(OmegaConf.to_object(m.arch))
        if m.init_from:
            self.model.load_official(m.init_from)
            log.info("initialised the tracker from %s", m.init_from)
        self._freeze(list(m.freeze))
        self.loss_weights = LossWeights(**OmegaConf.to_container(m.loss))

    def _freeze(self, prefixes: list[str]) -> None:
        from callbacks.unfreeze import set_trainable

        set_trainable(self.model, prefixes, False)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        windows = self.model.forward_train(batch["video"], batch["queries"], iters=self.cfg.train_iters)
        terms = cotracker3_loss([w.__dict__ for w in windows], batch, self.loss_weights,
                             mask_before_query=self.model.config.variant == "online")
        return self.finish_training_step(terms, batch["video"].shape[0], self.cfg.max_consecutive_nonfinite)

    def configure_optimizers(self) -> dict[str, Any]:
        m = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=m.lr, weight_decay=m.weight_decay, eps=m.adam_eps)
        # The reference schedules num_steps + 100 so the last steps keep a non-zero rate.
        total = int(self.trainer.estimated_stepping_batches) + 100
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=m.lr, total_steps=total, pct_start=m.warmup_pct, anneal_strategy="cos",
            cycle_momentum=False)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation
    def predictor(self) -> CoTrackerThreePredictor:
        m = self.cfg
        return CoTrackerThreePredictor(self.model, iters=m.eval_iters, support_grid_size=m.eval_support_grid,
                                       visibility_rule=m.visibility_rule, threshold=m.visibility_threshold)

    def predict_tracks(self, video: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        backward = self.cfg.backward_tracking
        if backward is None:
            backward = self.model.config.variant == "online" and self.query_mode == "strided"
        out = self.predictor()(video, queries, backward_tracking=backward)
        return out.tracks, out.visible
