import math

import torch

from lightning_modules.schedules import warmup_cosine


def test_warmup_then_cosine_to_the_floor():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    entry = warmup_cosine(opt, total_steps=100, warmup_pct=0.1, floor=0.05)
    assert entry["interval"] == "step"
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        entry["scheduler"].step()
    assert math.isclose(lrs[0], 2.0 / 10) and math.isclose(lrs[9], 2.0)  # linear warm-up over 10 steps
    assert math.isclose(lrs[10], 2.0)  # cosine starts at the base rate
    assert math.isclose(lrs[55], 2.0 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] > 2.0 * 0.05
