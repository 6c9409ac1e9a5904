"""Training speed and optimisation health: throughput, model FLOPs utilisation, learning rate,
gradient norm, and a progress bar that shows the metrics people watch.

Logged (every training batch, `perf/` rates over the last `window` batches, global over ranks):

- `perf/samples_per_s`, `perf/frames_per_s` (samples x clip frames), `perf/points_per_s`
  (samples x queries x frames, batches with `queries` only), `perf/step_time_s`;
- `perf/tflops_per_s` and `perf/mfu`: the FLOPs of one training batch (forward, backward and
  optimiser step as executed, activation recomputation included) are counted once with
  `torch.utils.flop_counter.FlopCounterMode`; MFU divides the achieved rate by the device's
  peak dense rate for the run's precision (`PEAK_TFLOPS`), so it is logged on known GPUs only;
- `train/lr` (first parameter group; `train/lr_pg{i}` for the others) and `train/grad_norm`, the
  total 2-norm of the gradients before clipping (what `clip_grad_norm_` compares with its limit).

DDP: nothing here communicates; each rank measures its own steps, rates are scaled by the
world size (ranks run in lockstep), and gradients are already all-reduced when the norm is taken.
FSDP: each rank holds a shard of the gradients, so the norm comes from FSDP's own (collective)
norm computation.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.strategies import FSDPStrategy
from torch.utils.flop_counter import FlopCounterMode

# Peak dense tensor-core TFLOP/s per GPU (vendor datasheets, without sparsity), by precision.
# Matched against torch.cuda.get_device_name() in order: the first key contained in the name wins.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "A10": {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "V100": {"bf16": 125.0, "tf32": 15.7, "fp32": 15.7},  # no bf16: its fp16 tensor-core peak
}


def precision_kind(trainer_precision: str) -> str:
    """'bf16' for 16-bit runs, else 'tf32' when float32 matmuls may use TF32, else 'fp32'."""
    if trainer_precision.startswith(("bf16", "16")):
        return "bf16"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of one device at `precision` (see precision_kind); None on CPUs and unknown GPUs."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks[precision] * 1e12
    return None


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs executed by `fn()` (matmuls, convolutions, attention: what FlopCounterMode counts)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def total_grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor | None:
    """2-norm of all gradients together (None when no parameter has one), as clip_grad_norm_ computes it."""
    norms = [torch.linalg.vector_norm(p.grad.detach(), 2.0).float() for p in parameters if p.grad is not None]
    if not norms:
        return None
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]), 2.0)


def batch_counts(batch: Any) -> tuple[int, int, int]:
    """(samples, frames, query points x frames) in one batch of this framework's dict layout."""
    if not isinstance(batch, dict):
        return 0, 0, 0
    video = batch.get("video")
    if not isinstance(video, torch.Tensor):
        first = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
        return (int(first.shape[0]) if first is not None and first.dim() else 0), 0, 0
    samples = int(video.shape[0])
    frames = samples * int(video.shape[1]) if video.dim() == 5 else samples
    queries = batch.get("queries")
    points = frames * int(queries.shape[1]) if isinstance(queries, torch.Tensor) and queries.dim() == 3 else 0
    return samples, frames, points


class ThroughputMonitor(L.Callback):
    """See the module docstring. `window`: batches per rate; `count_flops_at`: the batch index
    (from the start of fit) whose FLOPs are counted, None to skip counting."""

    def __init__(self, window: int = 20, count_flops_at: int | None = 1) -> None:
        self.window = max(2, window)
        self.count_flops_at = count_flops_at
        self.marks: deque[tuple[float, int, int, int]] = deque(maxlen=self.window + 1)
        self.flops_per_batch: int | None = None
        self.batches_seen = 0
        self._counter: FlopCounterMode | None = None

    # ---------------------------------------------------------------- timing and FLOPs
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.marks.clear()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not self.marks:
            self.marks.append((time.perf_counter(), 0, 0, 0))  # the first batch's start
        if self.flops_per_batch is None and self.batches_seen == self.count_flops_at:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.batches_seen += 1
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops_per_batch = self._counter.get_total_flops()
            self._counter = None
            self.marks.clear()  # the counted batch ran slower: keep it out of the rates
            self.marks.append((time.perf_counter(), 0, 0, 0))
            return
        samples, frames, points = batch_counts(batch)
        self.marks.append((time.perf_counter(), samples, frames, points))
        if len(self.marks) >= 2:
            self._log_rates(trainer, pl_module, batch)

    def _log_rates(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
        marks = list(self.marks)
        elapsed = marks[-1][0] - marks[0][0]
        if elapsed <= 0:
            return
        batches = len(marks) - 1
        world = trainer.world_size
        samples, frames, points = (sum(m[i] for m in marks[1:]) for i in (1, 2, 3))
        values = {"perf/step_time_s": elapsed / batches, "perf/samples_per_s": world * samples / elapsed}
        if frames:
            values["perf/frames_per_s"] = world * frames / elapsed
        if points:
            values["perf/points_per_s"] = world * points / elapsed
        if self.flops_per_batch:
            per_device = self.flops_per_batch * batches / elapsed
            values["perf/tflops_per_s"] = per_device / 1e12
            peak = peak_flops(pl_module.device, precision_kind(str(trainer.precision)))
            if peak:
                values["perf/mfu"] = per_device / peak
        size = batch_counts(batch)[0] or 1
        for key, value in values.items():
            pl_module.log(key, float(value), on_step=True, on_epoch=False, batch_size=size)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.marks.clear()  # validation time is not training throughput

    # ---------------------------------------------------------------- lr and gradient norm
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this after backward (and AMP unscaling) and before gradient clipping.
        if isinstance(trainer.strategy, FSDPStrategy):
            # An infinite limit makes FSDP's clip a no-op (scale 1) that returns the global norm over shards.
            norm = trainer.strategy.model.clip_grad_norm_(float("inf"))
        else:
            norm = total_grad_norm(p for group in optimizer.param_groups for p in group["params"])
        # No gradient at all (a skipped non-finite step): NaN, not the previous step's value carried over.
        pl_module.log("train/grad_norm", float("nan") if norm is None else norm, on_step=True, on_epoch=False,
                      batch_size=1)
        for i, group in enumerate(optimizer.param_groups):
            key = "train/lr" if i == 0 else f"train/lr_pg{i}"
            pl_module.log(key, float(group["lr"]), on_step=True, on_epoch=False, batch_size=1)


def fit_is_ending(trainer: L.Trainer) -> bool:
    """At the end of a training epoch: whether the fit loop stops now (the conditions Lightning's FitLoop.done checks)."""

    def reached(count: int, limit: int | None) -> bool:
        return limit is not None and limit != -1 and count >= limit

    return (reached(trainer.global_step, trainer.max_steps) or trainer.should_stop
            or reached(trainer.fit_loop.epoch_progress.current.processed, trainer.max_epochs))


class MetricsProgressBar(TQDMProgressBar):
    """The TQDM bar with `keys` (e.g. the monitored validation metric, samples/s) shown under
    short names next to what modules log with `prog_bar=True`, once they have a value."""

    def __init__(self, keys: Iterable[str] = ("perf/samples_per_s",), refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.keys = [k for k in keys if k]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # Lightning prints "`Trainer.fit` stopped: ..." right after this hook and closes the bar only
        # later (on_train_end): end the bar's line now, or the message runs onto it.
        if fit_is_ending(trainer):
            self.train_progress_bar.close()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        for key in self.keys:
            value = trainer.callback_metrics.get(key)
            if value is not None:
                metrics[key.split("/")[-1]] = f"{float(value):.4g}"
        return metrics
