"""Tiny per-family training cases and the checks of tests/test_gpu.py (bf16, fused attention, compile).

Every registered family has at least one case (a test compares the keys with the registry); the
joint tracker has one per variant. A case is config overrides on top of the family's CPU-demo preset
(tools/bench_train_step.py), shrunk further so that building the model and a batch takes well
under a second: tiny widths (head dims stay multiples of 8, as the fused attention kernels want
them) and a few 32x32 (video depth: 56x56) synthetic clips.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import DictConfig
from torch.utils._python_dispatch import TorchDispatchMode

from configs.loader import override_args
from tests.tiny_run import TINY_MODEL
from tools.bench_train_step import PRESETS
from train import load_config

# Relative RMS error ||bf16 - float32|| / ||float32|| allowed for a family's outputs (trackers: the
# motion from the query point, which is what the network predicts). bf16 keeps 8 significant bits, so
# each rounding of an operand or a result is off by up to 2^-9 = 0.2%; along the ~10-30 matmuls,
# convolutions and attentions of a path through these networks the errors add up roughly like a
# random walk, to about 2^-9 * sqrt(30) = 1%. CPU autocast (bf16 matmuls, convolutions and attention,
# as on CUDA) measured 0.2-0.35% (CoTracker3, Chrono, video depth), 0.9-1.1% (TAPTRv2) and 1.1-2.0%
# (the ConvNet colorizer) over seeds 0-2. 5% leaves room for CUDA's kernels and still fails on a bf16
# defect: pixel coordinates held in bf16 (1-2 px steps at 256-512 px against motions of a few
# pixels), an overflow, or an unnormalised correlation (Chrono's argmax jumped by whole cells: 64%).
BF16_RELATIVE_TOLERANCE = 5e-2

TRACKING_DATA = ["data.synthetic.height=32", "data.synthetic.width=32", "data.synthetic.num_frames=8",
                 "data.synthetic.num_tracks=48", "data.clip_len=8", "data.val_clip_len=8", "data.num_queries=8",
                 "data.val_num_queries=8"]
VIDEO_DATA = ["data.synthetic.num_frames=6", "data.synthetic.num_tracks=48", "data.clip_len=4", "data.val_clip_len=6",
              "data.num_tracks=24"]
COMMON = ["data.synthetic.num_train_clips=4", "data.synthetic.num_val_clips=1", "data.batch_size=2",
          "data.num_workers=0", "data.shuffle_buffer=1", "trainer.log_every_n_steps=1",
          "trainer.enable_progress_bar=false"]

PSEUDOLABEL_MODEL = override_args(TINY_MODEL, ["model.arch.model_resolution=[64,64]"])

# case -> (family, overrides shrinking that family's preset)
CASES: dict[str, tuple[str, list[str]]] = {
    "cotracker3_online": ("cotracker3", [*TINY_MODEL, *TRACKING_DATA]),
    "cotracker3_offline": ("cotracker3", [*override_args(TINY_MODEL, ["model.arch.window_len=8"]),
                                          "model.arch.variant=offline", *TRACKING_DATA]),
    # The student and its teacher are the tiny CoTracker3; inputs written by pseudolabel_inputs(). 64x64
    # clips: SIFT finds too few keypoints in 32x32 ones, and such samples are left out of the loss.
    "cotracker3_pseudolabel": ("cotracker3_pseudolabel", [
        *PSEUDOLABEL_MODEL, "data.clip_len=8", "data.val_clip_len=8", "data.num_queries=8", "data.val_num_queries=8"]),
    "chrono": ("chrono", ["model.arch.embed_dim=16", "model.arch.depth=2", "model.arch.num_heads=2",
                          "model.arch.backbone_img_size=32", "model.arch.feature_grid=8", "model.arch.adapter_channels=16",
                          "model.arch.adapter_heads=2", "model.arch.query_chunk_size=4", *TRACKING_DATA]),
    "taptrv2": ("taptrv2", ["model.arch.d_model=16", "model.arch.nheads=2", "model.arch.norm_groups=4",
                            "model.arch.enc_layers=1", "model.arch.dec_layers=2", "model.arch.dim_feedforward=32",
                            "model.arch.backbone_width=4", "model.arch.model_resolution=[32,32]", *TRACKING_DATA]),
    "video_depth": ("video_depth", ["model.arch.img_size=56", "data.synthetic.height=56", "data.synthetic.width=56",
                                    *VIDEO_DATA]),
    "colorization": ("colorization", ["model.convnet.widths=[8,16,16]", "model.convnet.depths=[1,0,1]",
                                      "model.convnet.groups=4", "model.tracktention.inner_dim=16",
                                      "model.tracktention.num_heads=2", "data.synthetic.height=32",
                                      "data.synthetic.width=32", *VIDEO_DATA]),
}


def pseudolabel_inputs(workdir: Path) -> list[str]:
    """Unlabelled 64x64 clips, labelled validation clips and a tiny teacher file under `workdir`; the
    overrides that point the CPU-demo pseudo-label experiment at them."""
    from datamodules.shards import ShardWriter
    from datamodules.synthetic import SyntheticConfig, generate_clip
    from models.cotracker3 import CoTrackerThree

    clips = SyntheticConfig(height=64, width=64, num_frames=8, num_tracks=32, domain="plaid")
    for split, seeds, labelled in (("train", range(4), False), ("val", range(100, 101), True)):
        with ShardWriter(workdir / split, prefix=split, max_count=4) as writer:
            for seed in seeds:
                clip = generate_clip(seed, clips)
                tracks, visible = (clip["tracks"], clip["visible"]) if labelled else (
                    np.zeros((8, 0, 2), np.float32), np.zeros((8, 0), bool))
                writer.write(f"{split}{seed}", clip["frames"], tracks, visible)
    arch = {k.split(".")[-1]: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in PSEUDOLABEL_MODEL) if ".arch." in k}
    teacher = workdir / "teacher_online.pth"
    torch.save(CoTrackerThree(variant="online", **arch).state_dict(), teacher)
    arch_yaml = "{" + ", ".join(f"{k}: {v}" for k, v in arch.items()) + "}"
    return ["experiment=cotracker3_pseudolabel_tiny_synthetic", f"data.train_shards={workdir / 'train'}",
            f"data.val_shards={workdir / 'val'}",
            f"model.teachers=[{{checkpoint: {teacher}, kind: cotracker3_online, weight: 1, arch: {arch_yaml}}}]"]


def case_overrides(case: str, workdir: Path) -> list[str]:
    """train.py overrides for `case`, writing its synthetic clips, input files and run files under `workdir`."""
    family, shrink = CASES[case]
    run = [f"run_dir={workdir / 'run'}"]
    if family == "cotracker3_pseudolabel":  # real-video shards: no synthetic data section
        return [*pseudolabel_inputs(workdir), *shrink, *(a for a in COMMON if not a.startswith("data.synthetic")), *run]
    return [*PRESETS["tiny"][family], *shrink, *COMMON, f"data.synthetic.cache_dir={workdir / 'cache'}", *run]


def case_config(case: str, workdir: Path, extra: list[str] | None = None) -> DictConfig:
    return load_config(case_overrides(case, workdir) + (extra or []))[1]


def relative_rms_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (inf when expected is zero and actual is not)."""
    diff = (actual.detach().double() - expected.detach().double()).norm().item()
    scale = expected.detach().double().norm().item()
    if scale == 0:
        return 0.0 if diff == 0 else math.inf
    return diff / scale


def randomise_zero_parameters(model: torch.nn.Module, seed: int = 0) -> int:
    """Give every all-zero floating parameter N(0, 0.02^2) values; returns how many there were.

    Zero-initialised output layers (Tracktention's projections, the colorizer's ab head) would
    otherwise make a family's output independent of what runs before them, and so hide it from a
    comparison."""
    generator = torch.Generator().manual_seed(seed)
    zero = [p for p in model.parameters() if p.is_floating_point() and not p.any()]
    with torch.no_grad():
        for p in zero:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return len(zero)


def predictions(module: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The family's evaluation outputs as float32: trackers' motion (tracks minus the query point: the
    part the network predicts), else what forward returns."""
    from lightning_modules.point_tracking import PointTrackingModule

    if isinstance(module, PointTrackingModule):
        tracks, _ = module.predict_tracks(batch["video"], batch["queries"])  # visibility is a thresholded flag
        return {"motion": tracks.float() - batch["queries"][:, None, :, 1:].float()}
    out = module(batch)
    outputs = out if isinstance(out, tuple) else (out,)
    return {f"output{i}": t.float() for i, t in enumerate(outputs)}


def training_loss(module: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training_step loss without a Trainer (its logging is a no-op then)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        loss = module.training_step(batch, 0)
    if loss is None:
        raise AssertionError(f"non-finite training loss: {module.last_loss_terms}")
    return loss


class AttentionKernels(TorchDispatchMode):
    """Counts the fused scaled-dot-product-attention kernels that run (forward and backward), by aten op.

    F.scaled_dot_product_attention picks its backend below autograd, so a dispatch mode sees the chosen
    kernel: `_scaled_dot_product_{flash,efficient,cudnn}_attention[_backward]` on CUDA,
    `_scaled_dot_product_flash_attention_for_cpu[_backward]` on CPUs. The unfused MATH backend leaves no
    op of its own (it decomposes into matmuls and a softmax), so it counts nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if name.startswith("_scaled_dot_product"):
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def fused(self) -> int:
        return sum(self.calls.values())
