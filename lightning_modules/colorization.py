"""Video colorization family: an image colorizer (``arch: convnet | ddcolor``) + Tracktention.

The model sees the L channel of the clip's frames and predicts ab (DESIGN.md: colorization
works in Lab); the ground truth is the frames' own ab. Loss: L1 on ab (DDColor's pixel loss)
plus, optionally, DDColor's colourfulness term 1 - M(rgb / 255) on the recombined RGB, averaged
over frames (DDColor sums it over the images of a GPU batch: its weight 0.5 at per-GPU batch b
equals ``colorfulness: 0.5 * b`` here), and a temporal term along the batch's tracks
(``track_temporal_loss``, our choice; TCVC instead ties each prediction to its optical-flow-warped
neighbours). DDColor's perceptual and GAN losses are not implemented. Evaluation: PSNR / SSIM /
colourfulness / CDC (``metrics/colorization.py``) on the recombined RGB. Tracks come from the
batch (ground truth or pre-extracted). Freezing: ``freeze`` prefixes start frozen (default: the
whole image colorizer, so only Tracktention trains); ``unfreeze`` stages make them trainable at
given steps (``callbacks/unfreeze.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from callbacks.console import HeadlineMetric
from lightning_modules.colorization_loss import ColorLossWeights, colorization_loss
from lightning_modules.nonfinite import NonFiniteGuard
from lightning_modules.registry import MEDIA_EVERY_FROM_WANDB, model_config, register_family
from lightning_modules.schedules import warmup_cosine
from lightning_modules.video_depth import UnfreezeStage
from lightning_modules.video_evaluation import VideoMetricsEvaluation
from metrics.colorization import ColorizationMetrics
from models.color import grey_rgb, l_ab_to_rgb, rgb_to_lab
from models.colorizer import ConvColorizerConfig
from models.video_colorizer import (
    ColorTracktentionConfig,
    VideoColorizer,
    build_image_colorizer,
    colorizer_classes,
    weights_reader,
)

log = logging.getLogger(__name__)


@dataclass
class ColorizationModelConfig:
    family: str = "colorization"
    arch: str = "convnet"  # convnet | ddcolor: which image colorizer (models/video_colorizer.py COLORIZER_ARCHS)
    convnet: ConvColorizerConfig = field(default_factory=ConvColorizerConfig)
    ddcolor: Optional[Any] = None  # fields of models.ddcolor.DDColorConfig; checked when the model is built
    tracktention: ColorTracktentionConfig = field(default_factory=ColorTracktentionConfig)
    init_from: Optional[str] = None  # the colorizer's own weights, or a .ckpt of this family (stage 1)
    freeze: list[str] = field(default_factory=lambda: ["image."])  # names inside VideoColorizer
    unfreeze: list[UnfreezeStage] = field(default_factory=list)
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_pct: float = 0.05
    loss: ColorLossWeights = field(default_factory=ColorLossWeights)
    max_consecutive_nonfinite: int = 20
    media_every_n_validations: int = MEDIA_EVERY_FROM_WANDB  # from wandb.* (registry.py)


def arch_config(model_cfg: DictConfig) -> Any:
    """The chosen colorizer's config dataclass instance, checked against its schema."""
    _, cfg_cls = colorizer_classes(model_cfg.arch)
    section = model_cfg.get(model_cfg.arch)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cfg_cls), section if section is not None else {})
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ValueError(f"model.{model_cfg.arch}: {err.msg if hasattr(err, 'msg') else err} "
                         f"(valid keys: {sorted(OmegaConf.structured(cfg_cls).keys())})") from None


@register_family("colorization", ColorizationModelConfig)
class ColorizationModule(NonFiniteGuard, VideoMetricsEvaluation, L.LightningModule):
    headline_metrics = (HeadlineMetric("CDC ↓", "cdc", "cdc_gt"), HeadlineMetric("PSNR ↑", "psnr"),
                        HeadlineMetric("SSIM ↑", "ssim"), HeadlineMetric("colourfulness", "colorfulness", "colorfulness_gt"))
    headline_baseline = "ground truth"

    def __init__(self, cfg: DictConfig | ColorizationModelConfig | dict) -> None:
        """`cfg`: the model section (registry.model_config)."""
        super().__init__()
        self.cfg = m = model_config(cfg, ColorizationModelConfig)
        image = build_image_colorizer(m.arch, arch_config(m))
        self.model = VideoColorizer(image, OmegaConf.to_object(m.tracktention))
        if m.init_from:
            self.model.load_image_weights(m.init_from, weights_reader(m.arch))
            log.info("initialised the image colorizer from %s", m.init_from)
        from callbacks.unfreeze import set_trainable

        set_trainable(self.model, list(m.freeze), False)
        self.val_metrics = ColorizationMetrics()
        self.media: dict[str, torch.Tensor] | None = None

    def configure_callbacks(self) -> list[L.Callback]:
        from callbacks.colorization_video import ColorizationVideoLogger
        from callbacks.unfreeze import staged_unfreeze_callbacks

        return [ColorizationVideoLogger(self.cfg.media_every_n_validations),
                *staged_unfreeze_callbacks(self.cfg.unfreeze, self.model)]

    def on_fit_start(self) -> None:
        frozen_image = any(not p.requires_grad for p in self.model.image.parameters())
        if frozen_image and not self.cfg.init_from and self.trainer.ckpt_path is None:
            raise ValueError("the image colorizer is frozen (model.freeze) but has no weights: set model.init_from "
                             "to its weights or a stage-1 checkpoint, or model.freeze=[] to train it from scratch")

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(Lab of the batch's video (B, T, 3, H, W), predicted ab (B, T, 2, H, W)); the model sees L only."""
        lab = rgb_to_lab(batch["video"])
        l = lab[:, :, :1]
        if self.model.tracktention is None:
            return lab, self.model(l).float()
        return lab, self.model(l, batch["tracks"], batch["visible"]).float()

    # ------------------------------------------------------------------ training
    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        lab, ab = self(batch)
        return colorization_loss(lab, ab, batch, self.cfg.loss)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        terms = self.loss_terms(batch)
        return self.finish_training_step(terms, batch["video"].shape[0], self.cfg.max_consecutive_nonfinite)

    def configure_optimizers(self) -> dict[str, Any]:
        m = self.cfg
        # Every parameter is registered (frozen ones get no gradient and are skipped), so staged
        # unfreezing needs no optimiser surgery.
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=m.lr, weight_decay=m.weight_decay)
        # Linear warm-up, cosine decay to 5 %.
        scheduler = warmup_cosine(optimizer, self.trainer.estimated_stepping_batches, m.warmup_pct)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: dict[str, torch.Tensor], metric: ColorizationMetrics) -> None:
        lab, ab = self(batch)
        l = lab[:, :, :1]
        pred_rgb = l_ab_to_rgb(l, ab)
        metric.update(pred_rgb, batch["video"])
        if self.media is None and self.global_rank == 0:
            self.media = {"grey": grey_rgb(l[0]).detach().cpu(), "pred": pred_rgb[0].detach().cpu(),
                          "gt": batch["video"][0].detach().cpu()}

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        lab, ab = self(batch)
        rgb = l_ab_to_rgb(lab[:, :, :1], ab).round().to(torch.uint8)
        return {"ab": ab.cpu(), "rgb": rgb.cpu(), "clip_id": batch["clip_id"].cpu()}
