"""Write each predict batch's outputs (a dict of tensors) to `<dir>/rank{r}-batch{i}.npz`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class NpzPredictionWriter(BasePredictionWriter):
    """Every rank writes its own files, so a distributed predict job needs no gather."""

    def __init__(self, output_dir: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        if not isinstance(prediction, dict):
            raise TypeError(f"predict_step must return a dict of tensors, got {type(prediction).__name__}")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        arrays = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
                  for k, v in prediction.items()}
        path = self.output_dir / f"rank{trainer.global_rank}-dl{dataloader_idx}-batch{batch_idx:06d}.npz"
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
