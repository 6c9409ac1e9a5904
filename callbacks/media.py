"""Base callback: after validation, render the module's `media` clip to mp4 on rank 0 and log it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from callbacks.video_io import write_mp4


class ValidationVideoLogger(L.Callback):
    """Subclasses set `name`, `summaries` ({metric: "max"|"min"}) and implement `render(media)`.

    The mp4 is written under `<run_dir>/media/` whatever the logger and uploaded when W&B is
    active; `summaries` make W&B keep each metric's best value.
    """

    name = "video"
    summaries: dict[str, str] = {}

    def __init__(self, every_n_validations: int = 1, fps: float = 8.0) -> None:
        self.every = max(1, every_n_validations)
        self.fps = fps
        self.count = 0

    def render(self, media: dict[str, Any]) -> torch.Tensor:
        """uint8 (T, H, W, 3) frames to write."""
        raise NotImplementedError

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and isinstance(trainer.logger, WandbLogger):
            experiment = trainer.logger.experiment
            if hasattr(experiment, "define_metric"):
                for key, summary in self.summaries.items():
                    experiment.define_metric(key, summary=summary)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        media = getattr(pl_module, "media", None)
        if not trainer.is_global_zero or media is None or trainer.sanity_checking:
            return
        self.count += 1
        if (self.count - 1) % self.every:
            return
        path = Path(trainer.default_root_dir) / "media" / f"{self.name}_step{trainer.global_step:07d}.mp4"
        write_mp4(path, self.render(media), self.fps)
        if isinstance(trainer.logger, WandbLogger):
            import wandb

            trainer.logger.experiment.log({f"val/{self.name}_video": wandb.Video(str(path), format="mp4"),
                                           "trainer/global_step": trainer.global_step})
