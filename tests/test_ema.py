"""EMA callback: update rule, evaluation with the averaged weights, checkpoint round trip and resume."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.utils.data import DataLoader

from callbacks.ema import ExponentialMovingAverage

REPO = Path(__file__).resolve().parents[1]


class TinyModule(L.LightningModule):
    """Linear regression trained by plain SGD; a buffer counts training steps."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(3, 2)
        self.register_buffer("steps_seen", torch.zeros(()))
        self.validation_weights: list[torch.Tensor] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.steps_seen += 1
        return ((self.net(batch) - batch[:, :2].flip(-1)) ** 2).mean()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.validation_weights.append(self.net.weight.detach().clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


class RecordAfterStep(L.Callback):
    """Parameters after every optimiser step (registered before the EMA callback, so it sees them first)."""

    def __init__(self) -> None:
        self.params: list[dict[str, torch.Tensor]] = []
        self.last_step = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step > self.last_step:
            self.params.append({k: v.detach().clone() for k, v in pl_module.named_parameters()})
            self.last_step = trainer.global_step


def batches(n: int) -> DataLoader:
    gen = torch.Generator().manual_seed(1)
    return DataLoader([torch.randn(4, 3, generator=gen) for _ in range(n)], batch_size=None)


def trainer(max_steps: int, callbacks: list[L.Callback], **kw: object) -> L.Trainer:
    return L.Trainer(max_steps=max_steps, callbacks=callbacks, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", **kw)


def test_update_rule_matches_a_hand_computation_with_accumulation() -> None:
    module = TinyModule()
    start = {k: v.detach().clone() for k, v in module.named_parameters()}
    record, ema = RecordAfterStep(), ExponentialMovingAverage(decay=0.75)
    trainer(3, [record, ema], accumulate_grad_batches=2).fit(module, batches(6))
    assert len(record.params) == 3 and ema.updates == 3  # one update per optimiser step, not per batch
    for name, value in start.items():
        expected = value
        for params in record.params:
            expected = 0.75 * expected + 0.25 * params[name]
        assert torch.allclose(ema.averaged[f"{name}"], expected, atol=1e-7, rtol=0), name
        assert not torch.allclose(expected, record.params[-1][name])  # the average lags the weights
    # Buffers are copied, not averaged: 6 training batches seen.
    assert ema.averaged["steps_seen"].item() == 6.0


def test_validation_sees_the_average_and_training_gets_its_weights_back() -> None:
    module = TinyModule()
    ema = ExponentialMovingAverage(decay=0.75)
    trainer(4, [ema], val_check_interval=2, check_val_every_n_epoch=None, limit_val_batches=1).fit(
        module, batches(8), batches(1))
    assert len(module.validation_weights) >= 2
    # The last validation ran at step 4, the end: it saw the average, while the module holds the raw weights.
    assert torch.equal(module.validation_weights[-1], ema.averaged["net.weight"])
    assert not torch.allclose(module.net.weight, ema.averaged["net.weight"])
    # Stand-alone validation / predict swap too and swap back.
    raw = module.net.weight.detach().clone()
    module.validation_weights.clear()
    trainer(1, [ema]).validate(module, batches(1), verbose=False)
    assert torch.equal(module.validation_weights[0], ema.averaged["net.weight"])
    assert torch.equal(module.net.weight, raw)


def same_batches(n: int) -> DataLoader:
    """One batch repeated: a resumed run sees the same data whichever batch it restarts at."""
    return DataLoader([torch.randn(4, 3, generator=torch.Generator().manual_seed(2))] * n, batch_size=None)


def test_checkpoint_round_trip_resumes_exactly(tmp_path) -> None:
    straight_module, straight = TinyModule(), ExponentialMovingAverage(decay=0.75)
    trainer(4, [straight]).fit(straight_module, same_batches(4))

    first_module, first = TinyModule(), ExponentialMovingAverage(decay=0.75)
    first_trainer = trainer(2, [first])
    first_trainer.fit(first_module, same_batches(4))
    path = tmp_path / "step2.ckpt"
    first_trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    state = next(v for k, v in saved["callbacks"].items() if "ExponentialMovingAverage" in k)
    assert state["updates"] == 2 and torch.equal(state["averaged"]["net.weight"], first.averaged["net.weight"])
    # The checkpoint's model weights are the raw ones, not the average.
    assert torch.equal(saved["state_dict"]["net.weight"], first_module.net.weight)

    resumed_module, resumed = TinyModule(), ExponentialMovingAverage(decay=0.75)
    trainer(4, [resumed]).fit(resumed_module, same_batches(4), ckpt_path=path)
    assert resumed.updates == straight.updates == 4
    for name, value in straight.averaged.items():
        assert torch.allclose(resumed.averaged[name], value, atol=1e-7, rtol=0), name
    assert torch.allclose(resumed_module.net.weight, straight_module.net.weight, atol=1e-7, rtol=0)

    # validate with the checkpoint alone: a fresh callback evaluates the stored average.
    eval_module, eval_ema = TinyModule(), ExponentialMovingAverage(decay=0.75)
    trainer(1, [eval_ema]).validate(eval_module, batches(1), ckpt_path=path, verbose=False)
    assert torch.equal(eval_module.validation_weights[0], state["averaged"]["net.weight"])
    assert torch.equal(eval_module.net.weight, saved["state_dict"]["net.weight"])


def test_decay_out_of_range_and_sharded_training_are_refused() -> None:
    with pytest.raises(ValueError, match="decay"):
        ExponentialMovingAverage(decay=1.0)
    with pytest.raises(ValueError, match="fsdp"):
        ExponentialMovingAverage().setup(SimpleNamespace(strategy=FSDPStrategy()), TinyModule(), "fit")


DDP_PROBE = textwrap.dedent('''
    import sys
    import lightning as L
    import torch
    from torch.utils.data import DataLoader
    from callbacks.ema import ExponentialMovingAverage

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Linear(3, 2)
        def training_step(self, batch, batch_idx):
            return ((self.net(batch) - 1.0) ** 2).mean()
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.3)

    class Dump(L.Callback):
        def on_train_end(self, trainer, pl_module):
            torch.save({"ema": ema.averaged, "raw": pl_module.state_dict(), "updates": ema.updates},
                       f"{sys.argv[1]}/rank{trainer.global_rank}.pt")

    ema = ExponentialMovingAverage(decay=0.5)
    data = [torch.randn(4, 3, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ema, Dump()])
    trainer.fit(Probe(), DataLoader(data, batch_size=None))
''')


@pytest.mark.slow
def test_every_ddp_rank_holds_the_same_average(tmp_path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(DDP_PROBE)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["updates"] == ranks[1]["updates"] == 3
    for name, value in ranks[0]["ema"].items():
        assert torch.equal(value, ranks[1]["ema"][name]), name  # different data per rank, same average
    assert not torch.equal(ranks[0]["ema"]["net.weight"], ranks[0]["raw"]["net.weight"])
