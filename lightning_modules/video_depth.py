"""Video depth family: Depth Anything V2 + Tracktention fine-tuned on depth clips.

Loss: per-frame SSI + gradient matching + temporal gradient matching (``video_depth_loss``), in
disparity. Evaluation: per-video aligned AbsRel / delta1 and track-based temporal consistency
(``metrics/depth.py``). Tracks come from the batch (ground truth or pre-extracted), or from a
frozen CoTracker3 run on the fly when ``model.tracker.checkpoint`` is set (metrics still use the
batch's tracks). With ``data.kind=depth_benchmark`` validate / test run the published video depth
protocol on whole videos instead (``lightning_modules/depth_benchmark_evaluation.py``) and
``results_table()`` (only then) gives its table. Freezing: ``freeze`` prefixes start frozen;
``unfreeze`` stages make them trainable at given steps (``callbacks/unfreeze.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from callbacks.console import HeadlineMetric
from configs.loader import ConfigError
from datamodules.benchmark_videos import DepthBenchmarkDataModule
from lightning_modules.depth_benchmark_evaluation import DepthBenchmarkRun, tracks_source
from lightning_modules.nonfinite import NonFiniteGuard
from lightning_modules.registry import MEDIA_EVERY_FROM_WANDB, model_config, register_family
from lightning_modules.schedules import warmup_cosine
from lightning_modules.video_depth_loss import DepthLossWeights, VideoDepthLoss, reciprocal_where_valid
from lightning_modules.video_evaluation import VideoMetricsEvaluation
from metrics.depth import VideoDepthMetrics, aligned_depth
from models.cotracker3 import CoTrackerThreeConfig
from models.cotracker3_predictor import TrackPreprocessor, build_tracker_predictor
from models.video_depth import VideoDepthAnything, VideoDepthConfig

log = logging.getLogger(__name__)


@dataclass
class UnfreezeStage:
    step: int = 0
    prefixes: list[str] = field(default_factory=list)


@dataclass
class OnTheFlyTrackerConfig:
    checkpoint: Optional[str] = None  # official CoTracker3 .pth; None = tracks come from the batch
    arch: CoTrackerThreeConfig = field(default_factory=CoTrackerThreeConfig)
    num_tracks: int = 576
    iters: int = 6


@dataclass
class VideoDepthModelConfig:
    family: str = "video_depth"
    arch: VideoDepthConfig = field(default_factory=VideoDepthConfig)
    init_from: Optional[str] = None  # depth_anything_v2_vit*.pth, or a stage-1 .ckpt of this family
    freeze: list[str] = field(default_factory=lambda: ["image.pretrained."])  # names inside VideoDepthAnything
    unfreeze: list[UnfreezeStage] = field(default_factory=list)
    lr: float = 1e-4
    encoder_lr_scale: float = 0.1  # the pretrained encoder moves slower once unfrozen
    weight_decay: float = 0.01
    warmup_pct: float = 0.05
    loss: DepthLossWeights = field(default_factory=DepthLossWeights)
    tracker: OnTheFlyTrackerConfig = field(default_factory=OnTheFlyTrackerConfig)
    max_consecutive_nonfinite: int = 20
    # From other sections (registry.py): the evaluation depth range of the data, the media cadence.
    max_depth: float = "${oc.select:data.max_depth,80.0}"
    media_every_n_validations: int = MEDIA_EVERY_FROM_WANDB


def depth_targets(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(target disparity, ground-truth depth, valid mask), whatever the shard's depth_kind."""
    valid = batch["depth_valid"].bool() & (batch["depth"] > 0)
    stored = reciprocal_where_valid(batch["depth"].float(), valid)  # the other representation
    is_disp = batch["is_disparity"].view(-1, 1, 1, 1, 1)
    disparity = torch.where(is_disp, batch["depth"].float(), stored)
    depth = torch.where(is_disp, stored, batch["depth"].float())
    return disparity, depth, valid


@register_family("video_depth", VideoDepthModelConfig)
class VideoDepthModule(NonFiniteGuard, VideoMetricsEvaluation, L.LightningModule):
    headline_metrics = (HeadlineMetric("AbsRel ↓", "abs_rel"), HeadlineMetric("δ1 ↑", "delta1"),
                        HeadlineMetric("track-TAE ↓", "track_tae"), HeadlineMetric("TAE ↓", "tae"))

    def __init__(self, cfg: DictConfig | VideoDepthModelConfig | dict) -> None:
        """`cfg`: the model section (registry.model_config)."""
        super().__init__()
        self.cfg = m = model_config(cfg, VideoDepthModelConfig)
        self.benchmark: DepthBenchmarkRun | None = None  # set up from a depth_benchmark data module (setup)
        self.val_metrics = VideoDepthMetrics(m.max_depth)
        self.model = VideoDepthAnything(OmegaConf.to_object(m.arch))
        if m.init_from:
            self.model.load_image_weights(m.init_from)
            log.info("initialised the image model from %s", m.init_from)
        from callbacks.unfreeze import set_trainable

        set_trainable(self.model, list(m.freeze), False)
        self.criterion = VideoDepthLoss(DepthLossWeights(**OmegaConf.to_container(m.loss)))
        # Kept out of the module tree: the frozen tracker is not part of this model's checkpoints.
        self._tracker: list[TrackPreprocessor] = []
        if m.tracker.checkpoint:
            predictor = build_tracker_predictor(OmegaConf.to_container(m.tracker.arch), m.tracker.checkpoint,
                                                iters=m.tracker.iters)
            self._tracker.append(TrackPreprocessor(predictor, m.tracker.num_tracks, backward_tracking=True))
        self.media: dict[str, torch.Tensor] | None = None

    def configure_callbacks(self) -> list[L.Callback]:
        from callbacks.depth_video import DepthVideoLogger
        from callbacks.unfreeze import staged_unfreeze_callbacks

        return [DepthVideoLogger(self.cfg.media_every_n_validations),
                *staged_unfreeze_callbacks(self.cfg.unfreeze, self.model)]

    def setup(self, stage: str) -> None:
        """With the depth benchmark's data module, validate / test run its protocol (module docstring)."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if isinstance(datamodule, DepthBenchmarkDataModule) and self.benchmark is None:
            self.benchmark = DepthBenchmarkRun(datamodule.protocols, datamodule.cfg)
            self.results_table = self.benchmark.results_table  # train.py prints it instead of its key list

    def model_tracks(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Tracks fed to the model: the on-the-fly tracker's, else the batch's; None for an image model."""
        if self.model.tracktention is None:
            return None, None
        if self._tracker:
            tracker = self._tracker[0].to(batch["video"].device)
            tracks, visible, _ = tracker(batch["video"])
            return tracks, visible
        return batch["tracks"], batch["visible"]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tracks, visible = self.model_tracks(batch)
        return self.model(batch["video"], tracks, visible).float()

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        pred = self(batch)
        target, _, valid = depth_targets(batch)
        terms = self.criterion(pred, target, valid)
        return self.finish_training_step(terms, pred.shape[0], self.cfg.max_consecutive_nonfinite)

    def configure_optimizers(self) -> dict[str, Any]:
        m = self.cfg
        # Every parameter is registered (frozen ones get no gradient and are skipped), so staged
        # unfreezing needs no optimiser surgery; the pretrained encoder gets a scaled rate.
        encoder = [p for n, p in self.model.named_parameters() if n.startswith("image.pretrained.")]
        rest = [p for n, p in self.model.named_parameters() if not n.startswith("image.pretrained.")]
        optimizer = torch.optim.AdamW(
            [{"params": rest, "lr": m.lr}, {"params": encoder, "lr": m.lr * m.encoder_lr_scale}],
            lr=m.lr, weight_decay=m.weight_decay)
        # Linear warm-up, cosine decay to 5 %.
        scheduler = warmup_cosine(optimizer, self.trainer.estimated_stepping_batches, m.warmup_pct)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: dict[str, torch.Tensor], metric: VideoDepthMetrics) -> None:
        pred = self(batch)
        _, depth, valid = depth_targets(batch)
        # TAE needs both; clips with intrinsics but no poses (KITTI) still get the other metrics.
        poses = batch.get("cam_to_world")
        metric.update(pred, depth, valid, batch["tracks"], batch["visible"],
                      batch.get("intrinsics") if poses is not None else None, poses)
        if self.media is None and self.global_rank == 0:
            v = valid[0, :, 0] & (depth[0, :, 0] < self.cfg.max_depth)
            if v.any():
                aligned = aligned_depth(pred[0, :, 0].detach(), depth[0, :, 0].double(), v, self.cfg.max_depth)
                self.media = {"video": batch["video"][0].detach().cpu(), "pred_depth": aligned.float().cpu(),
                              "gt_depth": depth[0, :, 0].cpu(), "valid": v.cpu()}

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"disparity": self(batch).cpu(), "clip_id": batch["clip_id"].cpu()}

    # ------------------------------------------------------------------ benchmark (data.kind=depth_benchmark)
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.benchmark is None:
            return super().validation_step(batch, batch_idx, dataloader_idx)
        self.benchmark.evaluate(batch, dataloader_idx, self.model, self._tracker[0] if self._tracker else None)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    def on_validation_start(self) -> None:
        if self.benchmark is not None and not self.cfg.init_from and self.trainer.ckpt_path is None:
            raise ConfigError("the benchmark would score an untrained model: pass model.init_from=<depth_anything_v2_"
                              "vit*.pth> (the image model) or ckpt=<a video depth run's .ckpt>")

    def on_test_start(self) -> None:
        self.on_validation_start()

    def on_validation_epoch_start(self) -> None:
        if self.benchmark is None:
            super().on_validation_epoch_start()
        else:
            log.info("video depth benchmark: Tracktention tracks %s", self._tracks_source())

    def on_test_epoch_start(self) -> None:
        if self.benchmark is None:
            super().on_test_epoch_start()
        else:
            self.on_validation_epoch_start()

    def epoch_results(self) -> dict[str, torch.Tensor]:
        if self.benchmark is None:
            return super().epoch_results()
        return self.benchmark.finish(self._tracks_source())

    def _tracks_source(self) -> str:
        return tracks_source(self.model, self._tracker[0] if self._tracker else None)
