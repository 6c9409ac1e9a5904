"""Chrono family: frozen DINOv2 + temporal adapters trained with the reference `tapir_loss`.

Evaluation (TAP-Vid metrics, zero-motion baseline, media clip, predict) and the non-finite
loss skip are shared with every point tracker (`PointTrackingModule`); this module supplies
the model, the loss and the optimiser.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from lightning_modules.chrono_loss import ChronoLossConfig, chrono_loss
from lightning_modules.point_tracking import PointTrackingModule
from lightning_modules.registry import MEDIA_EVERY_FROM_WANDB, QUERY_MODE_FROM_DATA, model_config, register_family
from models.chrono import Chrono, ChronoConfig
from models.dinov2 import load_dinov2

log = logging.getLogger(__name__)


@dataclass
class ChronoModelConfig:
    family: str = "chrono"
    arch: ChronoConfig = field(default_factory=ChronoConfig)
    # false trains DINOv2 too: only for the CPU demo with a random tiny backbone.
    freeze_backbone: bool = True
    backbone_weights: Optional[str] = None  # official dinov2_vit*14_pretrain.pth
    init_from: Optional[str] = None  # released Chrono Lightning .ckpt (chrono_base.ckpt, ...)
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_pct: float = 0.003  # OneCycle pct_start
    loss: ChronoLossConfig = field(default_factory=ChronoLossConfig)
    max_consecutive_nonfinite: int = 20  # skipped NaN/Inf steps in a row before training stops
    # From other sections (registry.py): the evaluation data's query mode, the media cadence.
    query_mode: str = QUERY_MODE_FROM_DATA
    media_every_n_validations: int = MEDIA_EVERY_FROM_WANDB


def build_chrono(m: DictConfig) -> Chrono:
    """The network from the model config, with DINOv2 and/or Chrono weights loaded strictly."""
    arch: ChronoConfig = OmegaConf.to_object(m.arch)
    backbone = None
    if m.backbone_weights:
        backbone = load_dinov2(m.backbone_weights, arch=arch.backbone, num_register_tokens=arch.num_register_tokens,
                               embed_dim=arch.embed_dim, depth=arch.depth, num_heads=arch.num_heads,
                               img_size=arch.backbone_img_size, patch_size=arch.patch_size)
        log.info("loaded DINOv2 %s from %s", arch.backbone, m.backbone_weights)
    model = Chrono(arch, backbone=backbone, freeze_backbone=m.freeze_backbone)
    if m.init_from:
        model.load_chrono_checkpoint(m.init_from)
        log.info("initialised Chrono from %s", m.init_from)
    return model


@register_family("chrono", ChronoModelConfig)
class ChronoModule(PointTrackingModule):
    def __init__(self, cfg: DictConfig | ChronoModelConfig | dict) -> None:
        super().__init__(model_config(cfg, ChronoModelConfig))
        self.model = build_chrono(self.cfg)
        self.loss_cfg = ChronoLossConfig(**OmegaConf.to_container(self.cfg.loss))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        out = self.model(batch["video"], batch["queries"])
        terms = chrono_loss(out, batch, self.loss_cfg)
        return self.finish_training_step(terms, batch["video"].shape[0], self.cfg.max_consecutive_nonfinite)

    def configure_optimizers(self) -> dict[str, Any]:
        m = self.cfg
        # A frozen DINOv2 has requires_grad False, so only adapters + occlusion head are optimised.
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=m.lr, weight_decay=m.weight_decay)
        # Reference: OneCycleLR(max_lr=lr, pct_start, total_steps=max_steps) with PyTorch's
        # defaults (cosine, div 25, final div 1e4, momentum cycled 0.85 <-> 0.95).
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=m.lr, total_steps=max(int(self.trainer.estimated_stepping_batches), 1),
            pct_start=m.warmup_pct)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def predict_tracks(self, video: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(video, queries)
        return out.tracks, out.visible
