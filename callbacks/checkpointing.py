"""Checkpoint files that are never half-written, and last.ckpt at a cadence, at the end and on demand."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

TMP_MARKER = ".tmp-"  # part of the name of a checkpoint still being written


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside it, fsync, then rename it into place.

    Lightning's writer stages the bytes in the system temp dir and *moves* them, which becomes a
    copy into the final path when the temp dir is on another file system (local /tmp vs a shared
    run dir): a kill during that copy leaves a truncated `last.ckpt`. A rename within one
    directory is atomic, so a reader sees the old file or the new one, never a partial one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if "://" in str(path):  # object storage: no rename; fsspec uploads the object in one piece
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)  # make the rename itself survive a power loss


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_partials(directory: Path) -> list[Path]:
    """Delete temporaries left by a process killed while writing a checkpoint (they are never read)."""
    stale = sorted(directory.glob(f".*.ckpt{TMP_MARKER}*")) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def why_not_save(trainer: L.Trainer) -> str | None:
    """Why the current weights must not be written (None when they may be); the same answer on every rank.

    Weights that just gave a non-finite loss (lightning_modules/nonfinite.py) or that hold NaN/Inf
    would poison every run resumed from them: the previous checkpoint is kept instead.
    """
    module = trainer.lightning_module
    in_a_row = getattr(module, "consecutive_nonfinite", 0)  # agreed by all ranks
    if in_a_row:
        return f"the last {in_a_row} step(s) had a non-finite loss"
    params = [p for p in module.parameters() if p.numel()]  # this rank's shards under FSDP
    finite = bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True  # one sync
    if not trainer.strategy.reduce_boolean_decision(finite, all=True):
        return "the weights hold NaN or Inf"
    return None


class TrustedWeightsCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that writes no checkpoint (best-k or last) while `why_not_save` objects."""

    _warned_at: int | None = None

    def _refuses(self, trainer: L.Trainer) -> bool:
        reason = why_not_save(trainer)
        if reason is not None and trainer.is_global_zero and self._warned_at != trainer.global_step:
            self._warned_at = trainer.global_step
            log.warning("step %d: no checkpoint written to %s because %s; the previous one stays",
                        trainer.global_step, self.dirpath, reason)
        return reason is not None

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        if not self._refuses(trainer):
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        if not self._refuses(trainer):
            super()._save_last_checkpoint(trainer, monitor_candidates)


class LastCheckpoint(TrustedWeightsCheckpoint):
    """Keep `last.ckpt` current: every `every_n_train_steps`, at the final step, and when asked.

    Lightning's ModelCheckpoint skips the final save when training stops at max_steps between
    two cadence points, so a finished run would look unfinished to `resume=auto`.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int) -> None:
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=every_n_train_steps)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath is not None:
            for path in remove_stale_partials(Path(self.dirpath)):
                log.warning("removed %s, a checkpoint write that was interrupted", path)

    def save_now(self, trainer: L.Trainer) -> Path | None:
        """Write last.ckpt for the current step unless it is already on disk (every rank calls this);
        its path, or None when the weights may not be saved (`why_not_save`)."""
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if self._last_global_step_saved != trainer.global_step:
            return None
        return Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.fast_dev_run:
            self.save_now(trainer)
