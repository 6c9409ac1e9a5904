"""TAPTRv2 family: the reference criterion, AdamW with a separate backbone rate, MultiStepLR, EMA.

Evaluation (TAP-Vid metrics, zero-motion baseline, media, predict) and the non-finite loss skip
come from `PointTrackingModule`; with `ema_decay` set, validation / test / predict see the
exponential moving average of the weights (callbacks/ema.py), as the reference evaluates its
`ema_model`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from lightning_modules.point_tracking import PointTrackingModule
from lightning_modules.registry import MEDIA_EVERY_FROM_WANDB, QUERY_MODE_FROM_DATA, model_config, register_family
from lightning_modules.taptrv2_loss import TaptrV2LossConfig, taptrv2_loss
from models.taptrv2 import TaptrV2, TaptrV2Config, load_resnet50_imagenet, load_taptrv2_checkpoint
from models.track_ops import before_query_frame, reverse_queries

log = logging.getLogger(__name__)


@dataclass
class TaptrV2ModelConfig:
    family: str = "taptrv2"
    arch: TaptrV2Config = field(default_factory=TaptrV2Config)
    backbone_weights: Optional[str] = None  # local ImageNet ResNet-50 state dict (conv1/bn1/layer1..4)
    init_from: Optional[str] = None  # official taptrv2.pth
    lr: float = 2e-4
    backbone_lr: float = 1e-5  # lr_backbone: every ResNet parameter
    weight_decay: float = 1e-4  # on every parameter, as the reference's 'default' param dicts
    # MultiStepLR in optimiser steps (the reference steps it per epoch at epochs 100 and 130).
    lr_milestones: list[int] = field(default_factory=lambda: [34375, 44688])
    lr_gamma: float = 0.1
    ema_decay: Optional[float] = 0.9997  # None: no weight averaging
    loss: TaptrV2LossConfig = field(default_factory=TaptrV2LossConfig)
    max_consecutive_nonfinite: int = 20  # skipped NaN/Inf steps in a row before training stops
    # Evaluation pads each video's queries to this many with dummy points, as the reference does
    # (num_queries_per_video_eval): points interact through spatial self-attention, so the count
    # changes the real points' tracks. 0 turns it off.
    eval_num_queries: int = 800
    # Frames before a query's frame come from a pass over the time-reversed clip, as the reference
    # fuses its strided evaluation. None: only when the data's query_mode is "strided".
    eval_backward: Optional[bool] = None
    # From other sections (registry.py): the evaluation data's query mode, the media cadence.
    query_mode: str = QUERY_MODE_FROM_DATA
    media_every_n_validations: int = MEDIA_EVERY_FROM_WANDB


def dummy_queries(video_shape: torch.Size, count: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """(B, count, 3) padding queries drawn as the reference's evaluation draws them: integer pixels
    at least 1/16 of the frame away from its borders, query frame uniform in the first 12 frames
    (fewer if the clip is shorter). Seeded, so every evaluation uses the same dummies. The
    reference also keeps them >= 1 px from the real points; that rule is not applied here."""
    B, T, _, H, W = video_shape
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, min(12, T), (B, count, 1), generator=g)
    x = torch.randint(W // 16, W - W // 16, (B, count, 1), generator=g)
    y = torch.randint(H // 16, H - H // 16, (B, count, 1), generator=g)
    return torch.cat([t, x, y], dim=-1).float().to(device)


def build_taptrv2(m: DictConfig) -> TaptrV2:
    """The network from the model config, with ImageNet ResNet-50 and/or TAPTRv2 weights loaded strictly."""
    arch: TaptrV2Config = OmegaConf.to_object(m.arch)
    model = TaptrV2(arch)
    if m.backbone_weights:
        load_resnet50_imagenet(model, m.backbone_weights)
        log.info("loaded the ImageNet ResNet-50 from %s", m.backbone_weights)
    if m.init_from:
        load_taptrv2_checkpoint(model, m.init_from)
        log.info("initialised TAPTRv2 from %s", m.init_from)
    return model


@register_family("taptrv2", TaptrV2ModelConfig)
class TaptrV2Module(PointTrackingModule):
    def __init__(self, cfg: DictConfig | TaptrV2ModelConfig | dict) -> None:
        super().__init__(model_config(cfg, TaptrV2ModelConfig))
        self.model = build_taptrv2(self.cfg)
        self.loss_cfg = TaptrV2LossConfig(**OmegaConf.to_container(self.cfg.loss))

    def configure_callbacks(self) -> list[L.Callback]:
        from callbacks.ema import ExponentialMovingAverage

        callbacks = super().configure_callbacks()
        if self.cfg.ema_decay is not None:
            callbacks.append(ExponentialMovingAverage(self.cfg.ema_decay))
        return callbacks

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        out = self.model(batch["video"], batch["queries"])
        terms = taptrv2_loss(out.layer_tracks, out.layer_apu_tracks, out.vis_logits, batch, self.loss_cfg)
        return self.finish_training_step(terms, batch["video"].shape[0], self.cfg.max_consecutive_nonfinite)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Two AdamW groups: the ResNet at `backbone_lr`, everything else at `lr`."""
        m = self.cfg
        backbone = [p for p in self.model.backbone_parameters() if p.requires_grad]
        backbone_ids = {id(p) for p in backbone}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in backbone_ids]
        return [{"params": rest, "lr": m.lr, "name": "transformer"},
                {"params": backbone, "lr": m.backbone_lr, "name": "backbone"}]

    def configure_optimizers(self) -> dict[str, Any]:
        m = self.cfg
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=m.lr, weight_decay=m.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(m.lr_milestones),
                                                         gamma=m.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def predict_tracks(self, video: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tracks, visible = self._track_padded(video, queries)
        backward = self.cfg.eval_backward
        if backward is None:
            backward = self.query_mode == "strided"
        if backward:
            T = video.shape[1]
            back_tracks, back_visible = self._track_padded(video.flip(1), reverse_queries(queries, T))
            before = before_query_frame(queries, T)
            tracks = torch.where(before.unsqueeze(-1), back_tracks.flip(1), tracks)
            visible = torch.where(before, back_visible.flip(1), visible)
        return tracks, visible

    def _track_padded(self, video: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = queries.shape[1]
        padding = self.cfg.eval_num_queries - n
        if padding > 0:
            queries = torch.cat([queries, dummy_queries(video.shape, padding, queries.device).to(queries.dtype)], 1)
        out = self.model(video, queries)
        return out.tracks[:, :, :n], out.visible[:, :, :n]
