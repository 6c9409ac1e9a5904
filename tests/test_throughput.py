"""callbacks/throughput.py: rates, FLOPs, MFU, learning rate and the pre-clipping gradient norm."""

import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from callbacks.throughput import (
    MetricsProgressBar,
    ThroughputMonitor,
    batch_counts,
    count_flops,
    peak_flops,
    precision_kind,
    total_grad_norm,
)

B, T, N = 2, 3, 5


class Clips(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {"video": torch.rand(T, 3, 4, 4, generator=g) * 255, "queries": torch.rand(N, 3, generator=g)}


class TinyTracker(L.LightningModule):
    """Linear 'tracker': enough to run real optimiser steps with clipping."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(3 * 4 * 4, 2)
        self.expected_norms: list[float] = []

    def training_step(self, batch, batch_idx):
        pred = self.net(batch["video"].flatten(2) / 255)
        loss = (pred - 3.0).pow(2).mean() * 100 + batch["queries"].sum() * 0
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_after_backward(self) -> None:  # before Lightning clips: the norm the callback must report
        grads = [p.grad.flatten() for p in self.parameters()]
        self.expected_norms.append(float(torch.cat(grads).norm()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def read_metrics(log_dir) -> list[dict[str, str]]:
    with open(log_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def column(rows, key):
    return [float(r[key]) for r in rows if r.get(key)]


def test_tiny_fit_logs_positive_rates_lr_and_preclip_grad_norm(tmp_path):
    module = TinyTracker()
    logger = CSVLogger(tmp_path, name="logs")
    trainer = L.Trainer(accelerator="cpu", max_steps=6, logger=logger, log_every_n_steps=1,
                        enable_progress_bar=False, enable_checkpointing=False, gradient_clip_val=1e-3,
                        callbacks=[ThroughputMonitor(window=3, count_flops_at=0)])
    trainer.fit(module, DataLoader(Clips(), batch_size=B))
    rows = read_metrics(tmp_path / "logs" / "version_0")
    samples, frames, points = (column(rows, f"perf/{k}_per_s") for k in ("samples", "frames", "points"))
    assert len(samples) >= 4 and min(samples) > 0
    # every batch holds B clips of T frames and N queries: the rates keep those ratios
    for s, f, p in zip(samples, frames, points):
        assert f == pytest.approx(s * T) and p == pytest.approx(s * T * N)
    assert min(column(rows, "perf/tflops_per_s")) > 0  # FLOPs counted on batch 0
    assert not column(rows, "perf/mfu")  # no peak for a CPU
    assert column(rows, "train/lr") == pytest.approx([0.01] * 6)
    # The logged norm is the one before clipping (clip limit 1e-3, norms are far larger).
    logged = column(rows, "train/grad_norm")
    assert logged == pytest.approx(module.expected_norms, rel=1e-5)
    assert min(logged) > 1e-2


def test_total_grad_norm_matches_clip_grad_norm():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    model(torch.randn(4, 7)).square().sum().backward()
    model[2].bias.grad = None  # parameters without gradients are skipped, as in clip_grad_norm_
    ours = total_grad_norm(model.parameters())
    reference = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e-6)
    assert float(ours) == pytest.approx(float(reference), rel=1e-6)
    assert total_grad_norm(torch.nn.Linear(2, 2).parameters()) is None


def test_flop_counter_counts_a_linear_layer_by_hand():
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    # forward: a (4 x 16) @ (16 x 8) matmul = 2 * 4 * 16 * 8 FLOPs (the bias add is not counted)
    assert count_flops(lambda: layer(x)) == 2 * 4 * 16 * 8
    # backward: grad wrt input and grad wrt weight, one matmul of the same size each
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 4 * 16 * 8


def test_mfu_peak_is_none_on_cpu_and_precision_kinds():
    assert peak_flops(torch.device("cpu"), "bf16") is None
    assert precision_kind("bf16-mixed") == "bf16" and precision_kind("16-mixed") == "bf16"
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert precision_kind("32-true") == "fp32"
        torch.set_float32_matmul_precision("high")
        assert precision_kind("32-true") == "tf32"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_batch_counts():
    batch = {"video": torch.zeros(2, 6, 3, 4, 4), "queries": torch.zeros(2, 10, 3)}
    assert batch_counts(batch) == (2, 12, 120)
    assert batch_counts({"video": torch.zeros(3, 5, 3, 4, 4)}) == (3, 15, 0)
    assert batch_counts({"image": torch.zeros(4, 3, 8, 8)}) == (4, 0, 0)


def test_progress_bar_shows_chosen_metrics_under_short_names(monkeypatch):
    class FakeTrainer:
        callback_metrics = {"val/aj": torch.tensor(0.42), "perf/samples_per_s": torch.tensor(12.5)}

    monkeypatch.setattr(TQDMProgressBar, "get_metrics", lambda self, trainer, module: {"v_num": 0, "loss": "1.0"})
    bar = MetricsProgressBar(keys=["val/aj", "perf/samples_per_s", "val/missing", None])
    assert bar.get_metrics(FakeTrainer(), None) == {"loss": "1.0", "aj": "0.42", "samples_per_s": "12.5"}
