"""Skip NaN/Inf training steps on every rank together; stop after too many in a row."""

from __future__ import annotations

import logging

import lightning as L
import torch

log = logging.getLogger(__name__)


class NonFiniteGuard:
    """Mixin for LightningModules: `return self.finish_training_step(terms, batch_size, max_in_a_row)`.

    All ranks agree (via all_gather) so DDP stays in lockstep: no rank runs backward when any
    rank's loss is not finite. A skipped step logs its loss terms as NaN (loggers would otherwise
    repeat the previous step's values) and counts `train/nonfinite_steps_skipped`. While
    `consecutive_nonfinite` > 0 no checkpoint is written (callbacks/checkpointing.py): the weights
    that gave a non-finite loss are not saved. `max_consecutive_nonfinite` skipped steps in a row raise.
    """

    consecutive_nonfinite: int = 0
    nonfinite_total: int = 0

    def finish_training_step(self: L.LightningModule, terms: dict[str, torch.Tensor], batch_size: int,
                             max_consecutive: int) -> torch.Tensor | None:
        """Common end of a training_step: keep the terms, skip non-finite steps, log, return the loss."""
        self.last_loss_terms = {k: v.detach() for k, v in terms.items()}
        finite = self.all_ranks_finite(terms["loss"], max_consecutive)
        for key, value in terms.items():
            value = value if finite else float("nan")  # a skipped step: its loss did not count
            self.log("train/loss" if key == "loss" else f"train/loss_{key}", value, prog_bar=key == "loss",
                     batch_size=batch_size)
        return terms["loss"] if finite else None

    def all_ranks_finite(self: L.LightningModule, loss: torch.Tensor, max_consecutive: int) -> bool:
        finite = torch.isfinite(loss.detach()).float()
        if self._trainer is not None and self._trainer.world_size > 1:
            finite = self.all_gather(finite).min()
        if finite > 0:
            self.consecutive_nonfinite = 0
            return True
        self.consecutive_nonfinite += 1
        self.nonfinite_total += 1
        self.log("train/nonfinite_steps_skipped", float(self.nonfinite_total), batch_size=1)
        log.warning("non-finite loss at step %d: step skipped (%d in a row)", self.global_step,
                    self.consecutive_nonfinite)
        if self.consecutive_nonfinite >= max_consecutive:
            raise RuntimeError(
                f"{self.consecutive_nonfinite} consecutive non-finite losses (last at step {self.global_step}); "
                "stopping before any corrupted weights are saved. Lower the learning rate, check the data, "
                "or resume from the last checkpoint."
            )
        return False
