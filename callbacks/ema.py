"""Exponential moving average of the weights, used for validation / test / predict.

After every optimiser step: ema = decay * ema + (1 - decay) * param for each floating-point
parameter; buffers are copied as they are (the averaged model is then a complete state dict).
The raw weights keep training; the averaged ones are swapped in for evaluation and swapped
back afterwards. The average lives in the checkpoint as this callback's state, next to the raw
weights, so `resume=auto` continues it exactly and `validate ckpt=...` evaluates it.

DDP: after an optimiser step every rank holds the same weights, so every rank applies the same
update and no communication is needed. Sharded strategies (FSDP) are not supported.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy


class ExponentialMovingAverage(L.Callback):
    def __init__(self, decay: float = 0.9997) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.averaged: dict[str, torch.Tensor] | None = None  # parameter and buffer name -> tensor
        self.updates = 0  # optimiser steps folded into the average
        self._last_step = 0  # trainer.global_step at the last update
        self._swapped = False

    # -- state ---------------------------------------------------------------------------------

    @staticmethod
    def _tracked(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        params = {name: p for name, p in pl_module.named_parameters() if p.is_floating_point()}
        buffers = dict(pl_module.named_buffers())
        return {**params, **buffers}

    def _ensure_averaged(self, pl_module: L.LightningModule) -> None:
        """Start the average from the current weights, or move a restored one onto their devices."""
        tracked = self._tracked(pl_module)
        if self.averaged is None:
            self.averaged = {name: t.detach().clone() for name, t in tracked.items()}
            return
        if self.averaged.keys() != tracked.keys():
            missing = sorted(tracked.keys() - self.averaged.keys())
            unexpected = sorted(self.averaged.keys() - tracked.keys())
            raise RuntimeError(f"EMA state does not match the model: missing {missing}, unexpected {unexpected}")
        for name, t in tracked.items():
            if self.averaged[name].device != t.device or self.averaged[name].dtype != t.dtype:
                self.averaged[name] = self.averaged[name].to(device=t.device, dtype=t.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "last_step": self._last_step,
                "averaged": self.averaged}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updates = int(state_dict["updates"])
        self._last_step = int(state_dict["last_step"])
        self.averaged = state_dict["averaged"]

    # -- updates -------------------------------------------------------------------------------

    @torch.no_grad()
    def update(self, pl_module: L.LightningModule) -> None:
        """Fold the current weights into the average once."""
        self._ensure_averaged(pl_module)
        assert self.averaged is not None
        params = {name: p for name, p in pl_module.named_parameters() if p.is_floating_point()}
        ema = [self.averaged[name] for name in params]
        torch._foreach_mul_(ema, self.decay)
        torch._foreach_add_(ema, [p.detach() for p in params.values()], alpha=1.0 - self.decay)
        for name, buffer in pl_module.named_buffers():
            self.averaged[name].copy_(buffer)
        self.updates += 1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy, FSDPStrategy):
            # Each rank would average only its shard, and only rank 0's state would be saved.
            raise ValueError("the EMA callback does not support sharded training (trainer.strategy=fsdp); "
                             "disable it (e.g. model.ema_decay=null) or use DDP")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._ensure_averaged(pl_module)  # a resumed run already holds the checkpoint's average

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # global_step counts optimiser steps, so accumulation micro-batches do not update.
        if trainer.global_step > self._last_step:
            self.update(pl_module)
            self._last_step = trainer.global_step

    # -- evaluation with the average -------------------------------------------------------------

    @torch.no_grad()
    def _swap(self, pl_module: L.LightningModule) -> None:
        assert self.averaged is not None
        for name, t in self._tracked(pl_module).items():
            kept = t.detach().clone()
            t.data.copy_(self.averaged[name])
            self.averaged[name].copy_(kept)
        self._swapped = not self._swapped

    def _swap_in(self, pl_module: L.LightningModule) -> None:
        # Outside fit, only an average restored from a checkpoint is used.
        if self.averaged is None or self._swapped:
            return
        self._ensure_averaged(pl_module)
        self._swap(pl_module)

    def _swap_out(self, pl_module: L.LightningModule) -> None:
        if self._swapped:
            self._swap(pl_module)

    # Epoch-level hooks: checkpoints written at on_validation_end already see the raw weights again.
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_in(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_out(pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_in(pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_out(pl_module)

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_in(pl_module)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_out(pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._swap_out(pl_module)  # never leave the averaged weights in the training model

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self._swapped:
            raise RuntimeError("checkpoint requested while the EMA weights are swapped in; the raw weights "
                               "would be lost")
