"""Rank 0 says how the run is laid out before the first step: world, global batch, lr, data split."""

from __future__ import annotations

import logging

import lightning as L
from omegaconf import DictConfig

from callbacks.signals import cluster_environment

log = logging.getLogger("tracklight")


def _span(counts: list[int]) -> str:
    return str(counts[0]) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"


def data_split_lines(datamodule: L.LightningDataModule, world_size: int, num_workers: int) -> list[str]:
    """How the training shards are divided over ranks x dataloader workers (streaming data modules).

    Every rank computes this (cheap) so that a split leaving some reader without a shard fails on all
    ranks at start-up with the stream's own message.
    """
    if not hasattr(datamodule, "make_train_stream"):
        return []
    workers = max(num_workers, 1)
    streams = [datamodule.make_train_stream(rank, world_size, 0) for rank in range(world_size)]
    per_worker = [len(s.worker_shards(w, workers)) for s in streams for w in range(workers)]
    per_rank = [sum(per_worker[r * workers:(r + 1) * workers]) for r in range(world_size)]
    cfg = streams[0].cfg
    return [
        f"data: {len(datamodule.train_urls)} training shards over {world_size} rank(s) x {workers} worker(s): "
        f"{_span(per_rank)} per rank, {_span(per_worker)} per worker, no shard read by two readers",
        f"      an epoch is data.batches_per_epoch={cfg.batches_per_epoch} batches of {cfg.batch_size} clips on "
        f"every rank ({cfg.batches_per_epoch * cfg.batch_size} clips per rank)",
    ]


def startup_lines(trainer: L.Trainer, cfg: DictConfig) -> list[str]:
    env = cluster_environment(trainer)
    batch = cfg.data.get("batch_size")
    accumulate = trainer.accumulate_grad_batches
    lines = [
        f"world size {trainer.world_size} = {trainer.num_devices} device(s) x {trainer.num_nodes} node(s) "
        f"({type(trainer.strategy).__name__}, {type(env).__name__}, "
        f"{trainer.accelerator.__class__.__name__}, precision {trainer.precision})",
    ]
    if batch is not None:
        lines.append(f"global batch {batch * trainer.world_size * accumulate} = data.batch_size {batch} x "
                     f"{trainer.num_devices} device(s) x {trainer.num_nodes} node(s) x "
                     f"accumulate_grad_batches {accumulate}")
    lr = cfg.model.get("lr")
    lines.append(f"learning rate model.lr={lr} as configured, not scaled with the global batch" if lr is not None
                 else "learning rate: set by the family's optimiser, not scaled with the global batch")
    if trainer.datamodule is not None:
        lines += data_split_lines(trainer.datamodule, trainer.world_size, cfg.data.get("num_workers", 0))
    return lines


class StartupReport(L.Callback):
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        lines = startup_lines(trainer, self.cfg)
        if trainer.is_global_zero:
            log.info("start-up:\n  %s", "\n  ".join(lines))
