"""Staged unfreezing: make parameter groups trainable at configured training steps.

The LightningModule puts every parameter into the optimiser from the start (frozen ones simply
have ``requires_grad=False``, so they get no gradient and AdamW skips them); unfreezing is then
only flipping ``requires_grad`` — no optimiser or scheduler surgery, and a resumed run re-applies
every stage whose step has passed.

DDP: parameters frozen when DDP wrapped the model are unknown to its gradient reducer, so after
unfreezing this callback averages their gradients across ranks itself, before each optimiser step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
import torch
import torch.distributed as dist
from torch import nn

from configs.loader import ConfigError

log = logging.getLogger(__name__)


def matching_parameters(module: nn.Module, prefixes: Sequence[str], key: str) -> list[nn.Parameter]:
    """The parameters whose names start with any prefix; ConfigError names `key` when a prefix matches none."""
    named = list(module.named_parameters())
    unmatched = [prefix for prefix in prefixes if not any(name.startswith(prefix) for name, _ in named)]
    if unmatched:
        tops = sorted({name.split(".")[0] + "." for name, _ in named})
        raise ConfigError(f"{key}: prefix(es) {unmatched} match no parameter of {type(module).__name__} "
                          f"(its parameter names start with {tops})")
    return [p for name, p in named if any(name.startswith(x) for x in prefixes)]


def set_trainable(module: nn.Module, prefixes: Sequence[str], trainable: bool,
                  key: str = "model.freeze") -> list[nn.Parameter]:
    """Set requires_grad on the parameters whose names start with any prefix; every prefix must match."""
    changed = matching_parameters(module, prefixes, key)
    for p in changed:
        p.requires_grad_(trainable)
    return changed


class StagedUnfreeze(L.Callback):
    """``schedule``: (step, prefixes) pairs; at global step >= step the prefixes become trainable.

    Prefixes are names inside ``pl_module.<attribute>`` (default ``model``), the same names
    as the module's ``freeze`` list.
    """

    def __init__(self, schedule: Sequence[tuple[int, Sequence[str]]], attribute: str = "model") -> None:
        self.schedule = sorted((int(step), list(prefixes)) for step, prefixes in schedule)
        self.attribute = attribute
        self.applied: set[int] = set()
        self.late: list[nn.Parameter] = []  # unfrozen after DDP wrapped the model

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module = getattr(pl_module, self.attribute)
        for index, (step, prefixes) in enumerate(self.schedule):
            if index in self.applied or trainer.global_step < step:
                continue
            params = set_trainable(module, prefixes, True, key="model.unfreeze")
            self.late.extend(params)
            self.applied.add(index)
            log.info("step %d: unfroze %s (%d tensors)", trainer.global_step, prefixes, len(params))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module)  # resumed runs: stages already passed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object,
                             batch_idx: int) -> None:
        self._apply(trainer, pl_module)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if trainer.world_size < 2 or not dist.is_available() or not dist.is_initialized():
            return
        for p in self.late:
            if p.grad is None:  # keep every rank in the same sequence of collectives
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= trainer.world_size


def staged_unfreeze_callbacks(stages: Sequence[object], module: nn.Module) -> list[L.Callback]:
    """[StagedUnfreeze] for config stages (objects with `step` and `prefixes`), or [] when there are none.

    Every stage's prefixes are checked against `module` now, at start-up, not at their step.
    """
    for stage in stages:
        matching_parameters(module, list(stage.prefixes), f"model.unfreeze (step {stage.step})")
    return [StagedUnfreeze([(s.step, list(s.prefixes)) for s in stages])] if stages else []
