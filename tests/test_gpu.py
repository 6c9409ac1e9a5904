"""Every family on CUDA (issue 19): bf16 training, bf16 vs float32, fused attention, torch.compile.

The `gpu` tests skip without CUDA; tools/gpu_check.py runs them on a GPU machine
(`python -m pytest -m gpu tests/test_gpu.py`). The CPU tests here check their helpers and run the
same bf16-vs-float32 comparison under CPU autocast, which runs matmuls, convolutions and attention
in bf16 as CUDA autocast does.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import train
from lightning_modules.registry import load_families
from tests.gpu_cases import (
    BF16_RELATIVE_TOLERANCE,
    CASES,
    AttentionKernels,
    case_config,
    case_overrides,
    predictions,
    randomise_zero_parameters,
    relative_rms_error,
    training_loss,
)
from tools.bench_train_step import training_batch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
# The family whose compiled training step is checked: convolutions, normalisation and Tracktention's
# attention, and the quickest of the families to compile (tools/gpu_check.py keeps the GPU run short).
COMPILE_CASE = "colorization"


@pytest.fixture
def true_float32():
    """float32 matmuls and convolutions without TF32, so the reference of a comparison is float32 indeed."""
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32 = saved[1]


def to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def case_module_and_batch(case: str, workdir: Path, device: str) -> tuple[L.LightningModule, dict]:
    """The case's module (zero-initialised layers given random values) and one batch of its own data."""
    cfg = case_config(case, workdir)
    L.seed_everything(0, verbose=False)
    module = train.build_module(cfg)
    randomise_zero_parameters(module.model)
    batch = training_batch(cfg)
    if cfg.model.family == "cotracker3_pseudolabel":  # targets from its teacher, once, on the CPU
        module.setup("fit")
        batch = {"video": batch["video"], **module.pseudo_labels(batch["video"], 0)}
    return module.to(device), to_device(batch, device)


def bf16_errors(case: str, workdir: Path, device: str) -> dict[str, float]:
    """Relative RMS error of each output under bf16 autocast against float32, same weights and batch."""
    module, batch = case_module_and_batch(case, workdir, device)
    module.eval()
    with torch.no_grad():
        reference = predictions(module, batch)
        with torch.autocast(device, dtype=torch.bfloat16):
            low = predictions(module, batch)
    return {key: relative_rms_error(low[key], reference[key]) for key in reference}


# ---------------------------------------------------------------------------------------- CPU
def test_every_registered_family_has_a_case():
    assert {family for family, _ in CASES.values()} == set(load_families())


def test_relative_rms_error_is_the_normalised_difference():
    expected = torch.tensor([3.0, 4.0])
    assert relative_rms_error(expected + torch.tensor([0.3, -0.4]), expected) == pytest.approx(0.1)
    assert relative_rms_error(expected, expected) == 0.0
    assert relative_rms_error(torch.ones(2), torch.zeros(2)) == math.inf


def test_randomise_zero_parameters_touches_only_all_zero_parameters():
    layer = torch.nn.Linear(3, 2)
    zero = torch.nn.Linear(2, 2)
    torch.nn.init.zeros_(zero.weight)
    torch.nn.init.zeros_(zero.bias)
    model = torch.nn.Sequential(layer, zero)
    before = layer.weight.clone()
    assert randomise_zero_parameters(model) == 2
    assert torch.equal(layer.weight, before)
    assert zero.weight.abs().min() > 0 and zero.weight.abs().max() < 0.2


def test_attention_kernels_names_the_backend_that_ran():
    q = torch.randn(1, 2, 8, 8)
    with AttentionKernels() as default:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    with sdpa_kernel([SDPBackend.MATH]), AttentionKernels() as math_only:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert default.fused == 1, default.calls
    assert math_only.fused == 0, math_only.calls


@pytest.mark.parametrize("case", sorted(CASES))
def test_bf16_autocast_on_cpu_agrees_with_float32(case, tmp_path):
    errors = bf16_errors(case, tmp_path, "cpu")
    assert all(e <= BF16_RELATIVE_TOLERANCE for e in errors.values()), errors
    assert any(e > 0 for e in errors.values()), f"{case}: no output changed in bf16; autocast did not reach it"


# ---------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_bf16_training_steps_on_cuda(case, tmp_path):
    """train.py's own path (data module, device augmentation, callbacks, CSV logger with MFU) for two
    optimiser steps in bf16-mixed, then one validation batch."""
    overrides = case_overrides(case, tmp_path) + [
        "logger=csv", "trainer.accelerator=gpu", "trainer.precision=bf16-mixed", "trainer.max_steps=2",
        "trainer.val_check_interval=2", "trainer.limit_val_batches=1"]
    trainer = train.run(overrides)
    module = trainer.lightning_module
    # Lightning moves the module back to the CPU when fit ends: the step's own loss tells where it ran.
    assert module.last_loss_terms["loss"].device.type == "cuda" and str(trainer.precision) == "bf16-mixed"
    assert trainer.global_step == 2 and module.nonfinite_total == 0
    loss = module.last_loss_terms["loss"]
    assert torch.isfinite(loss) and loss > 0, module.last_loss_terms  # 0: nothing in the batch was learned from
    key = module.cfg.checkpoint.monitor
    assert torch.isfinite(trainer.callback_metrics[key]), (key, trainer.callback_metrics[key])


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("case", sorted(CASES))
def test_bf16_forward_on_cuda_agrees_with_float32(case, tmp_path, true_float32):
    errors = bf16_errors(case, tmp_path, "cuda")
    assert all(e <= BF16_RELATIVE_TOLERANCE for e in errors.values()), errors
    assert any(e > 0 for e in errors.values()), f"{case}: no output changed in bf16; autocast did not reach it"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("case", sorted(CASES))
def test_attention_runs_on_fused_kernels_on_cuda(case, tmp_path):
    """A bf16 training step (forward and backward) with the unfused MATH backend ruled out: SDPA raises
    if no fused kernel takes a call, so every attention call ran fused; and some did run."""
    module, batch = case_module_and_batch(case, tmp_path, "cuda")
    module.train()
    with sdpa_kernel(FUSED), AttentionKernels() as kernels, torch.autocast("cuda", dtype=torch.bfloat16):
        loss = training_loss(module, batch)
        loss.backward()
    assert kernels.fused > 0, kernels.calls


@pytest.mark.gpu
@needs_cuda
def test_compiled_training_steps_on_cuda(tmp_path):
    """`trainer.compile=true`: train.py compiles the network and runs two bf16 steps through it."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    overrides = case_overrides(COMPILE_CASE, tmp_path) + [
        "logger=none", "trainer.accelerator=gpu", "trainer.precision=bf16-mixed", "trainer.max_steps=2",
        "trainer.limit_val_batches=0", "trainer.compile=true"]
    trainer = train.run(overrides)
    module = trainer.lightning_module
    assert module.model._compiled_call_impl is not None
    assert counters["stats"]["unique_graphs"] > 0, dict(counters["stats"])
    assert trainer.global_step == 2 and module.nonfinite_total == 0
    assert torch.isfinite(module.last_loss_terms["loss"]), module.last_loss_terms
