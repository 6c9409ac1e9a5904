"""Learning-rate schedules shared by families."""

from __future__ import annotations

import math
from typing import Any

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_pct: float,
                  floor: float = 0.05) -> dict[str, Any]:
    """Linear warm-up over `warmup_pct` of `total_steps`, then cosine decay to `floor` x the base
    rates; returned as Lightning's per-step `lr_scheduler` entry."""
    total = max(1, int(total_steps))
    warmup = max(1, int(warmup_pct * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}
