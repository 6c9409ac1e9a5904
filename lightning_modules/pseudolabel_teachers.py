"""Frozen teacher trackers for pseudo-label training: loading, the weighted draw, support points.

A teacher is any tracker tracklight can load from a file:

| kind | file | network |
|---|---|---|
| ``cotracker3_online`` | official CoTracker3 online ``.pth`` (baseline_online.pth, scaled_online.pth) | CoTracker3 online |
| ``cotracker3_offline`` | official CoTracker3 offline ``.pth`` | CoTracker3 offline |
| ``tracklight`` | a ``.ckpt`` of a tracking family of this framework | whatever the checkpoint holds |

Teachers run frozen, in eval mode, without gradients, under bf16 autocast on CUDA, and are
never part of a module's state_dict (checkpoints hold the student only).

Rules per teacher type, as co-tracker's ``train_on_real_data.py::forward_batch`` applies them
to its teachers (its ``online*``, ``offline_cotracker_three`` and ``tapir`` types):

| teacher | extra queries tracked, then dropped | pseudo visibility | occluded-point loss |
|---|---|---|---|
| CoTracker3 online | 5x5 grid at frame 0 (``--train_grid_size 5``) | sigmoid(vis) > 0.9 | yes |
| CoTracker3 offline | 100 uniform space-time points | sigmoid(vis) > 0.9 | yes |
| Chrono, TAPTRv2 | none | the family's own visible decision | no |

Chrono and TAPTRv2 have no counterpart in the reference; they get its rules for its other
non-CoTracker teacher, TAPIR (whose visibility arrives as a decision, which the reference
thresholds at 0.9 to itself). Each rule can be overridden per teacher. CoTracker3 teachers
are called like the reference calls them (4 refinement iterations, no backward pass for
the online model), through our predictor, which resizes frames to the model's resolution
when the clip differs from it and sets each track to its query point at its query frame.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from models.cotracker3 import CoTrackerThree
from models.cotracker3_predictor import CoTrackerThreePredictor
from models.track_ops import points_on_grid, random_space_time_queries

log = logging.getLogger(__name__)

TEACHER_KINDS = ("cotracker3_online", "cotracker3_offline", "tracklight")
TEACHER_DRAWS = ("shared", "per_rank")


@dataclass
class TeacherConfig:
    """One teacher of `model.teachers`; None fields follow the teacher's type (module docstring)."""

    checkpoint: str = "???"
    kind: str = "cotracker3_online"  # cotracker3_online | cotracker3_offline | tracklight
    weight: float = 1.0  # relative probability of being drawn for a batch
    name: Optional[str] = None  # shown in logs and recorded in pre-extracted shards; default: file stem
    # CoTracker3 architecture overrides for the official kinds (e.g. reduced test models)
    arch: dict[str, Any] = field(default_factory=dict)
    iters: int = 4  # refinement iterations of CoTracker3 teachers (the reference's default call)
    backward_tracking: bool = False  # online CoTracker3: fill frames before each query by a reversed pass
    support_grid: Optional[int] = None  # g: a g x g grid at frame 0; None: 5 for online CoTracker3, else 0
    support_uniform: Optional[int] = None  # uniform space-time points; None: 100 for offline CoTracker3, else 0
    visibility_threshold: float = 0.9  # on sigmoid(vis) of CoTracker3 teachers
    occluded_loss: Optional[bool] = None  # None: True for CoTracker3 teachers, False for Chrono / TAPTRv2


class TeacherError(ValueError):
    """A teacher that cannot be loaded as configured (message names the teacher and file)."""


class Teacher:
    """A loaded, frozen teacher with its resolved rules."""

    def __init__(self, cfg: TeacherConfig, tracker: torch.nn.Module) -> None:
        self.cfg = cfg
        self.name = cfg.name or Path(cfg.checkpoint).stem
        self.tracker = tracker.eval().requires_grad_(False)
        self.cotracker = isinstance(tracker, CoTrackerThreePredictor)
        online = self.cotracker and tracker.model.config.variant == "online"
        self.support_grid = cfg.support_grid if cfg.support_grid is not None else (5 if online else 0)
        offline = self.cotracker and not online
        self.support_uniform = cfg.support_uniform if cfg.support_uniform is not None else (100 if offline else 0)
        self.occluded_loss = cfg.occluded_loss if cfg.occluded_loss is not None else self.cotracker
        self.type = ("cotracker3_online" if online else "cotracker3_offline") if self.cotracker \
            else type(tracker).__name__

    def to(self, device: torch.device | str) -> Teacher:
        self.tracker.to(device)
        return self

    def support_queries(self, batch: int, num_frames: int, hw: tuple[int, int],
                        generator: torch.Generator | None, device: torch.device) -> Tensor:
        """(B, S, 3) extra queries (grid at frame 0, then uniform points), tracked and then dropped."""
        parts = []
        if self.support_grid:
            grid = points_on_grid(self.support_grid, hw, device=device).expand(batch, -1, -1)
            parts.append(torch.cat([torch.zeros_like(grid[..., :1]), grid], dim=-1))
        if self.support_uniform:
            parts.append(random_space_time_queries(batch, num_frames, hw, self.support_uniform, generator, device))
        return torch.cat(parts, dim=1) if parts else torch.zeros(batch, 0, 3, device=device)

    @torch.no_grad()
    def track(self, video: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
        """tracks (B, T, N, 2) in the video's dtype and pseudo visibility (B, T, N) bool for `queries` (B, N, 3)."""
        bf16 = video.is_cuda and torch.cuda.is_bf16_supported()
        with torch.autocast(video.device.type, dtype=torch.bfloat16, enabled=bf16):
            if self.cotracker:
                out = self.tracker(video, queries, backward_tracking=self.cfg.backward_tracking)
                tracks, visible = out.tracks, out.vis > self.cfg.visibility_threshold
            else:
                tracks, visible = self.tracker.predict_tracks(video, queries)
        return tracks.to(video.dtype), visible.bool()


def load_teacher(cfg: TeacherConfig) -> Teacher:
    """Load one teacher strictly from its file; errors name the teacher's kind and file."""
    if cfg.kind not in TEACHER_KINDS:
        raise TeacherError(f"teacher {cfg.checkpoint}: kind must be one of {TEACHER_KINDS}, got {cfg.kind!r}")
    if not cfg.weight > 0 or not math.isfinite(cfg.weight):
        raise TeacherError(f"teacher {cfg.checkpoint}: weight must be a positive number, got {cfg.weight}")
    if not Path(cfg.checkpoint).is_file():
        raise TeacherError(f"teacher checkpoint not found: {cfg.checkpoint} (kind {cfg.kind})")
    if cfg.kind == "tracklight":
        from lightning_modules.registry import module_from_checkpoint, track_families

        module, _ = module_from_checkpoint(cfg.checkpoint, track_families())
        model = getattr(module, "model", None)
        tracker = CoTrackerThreePredictor(model, iters=cfg.iters, support_grid_size=0) \
            if isinstance(model, CoTrackerThree) else module
    else:
        if cfg.arch.get("variant", cfg.kind.split("_")[1]) != cfg.kind.split("_")[1]:
            raise TeacherError(f"teacher {cfg.checkpoint}: arch.variant contradicts kind {cfg.kind!r}")
        model = CoTrackerThree.from_config({**cfg.arch, "variant": cfg.kind.split("_")[1]})
        model.load_official(cfg.checkpoint)
        tracker = CoTrackerThreePredictor(model, iters=cfg.iters, support_grid_size=0)
    teacher = Teacher(cfg, tracker)
    log.info("teacher %s (%s, weight %g): support grid %d, support uniform %d, occluded loss %s", teacher.name,
             teacher.type, cfg.weight, teacher.support_grid, teacher.support_uniform, teacher.occluded_loss)
    return teacher


class TeacherSet:
    """The configured teachers and the weighted draw of one per batch."""

    def __init__(self, teachers: list[Teacher]) -> None:
        if not teachers:
            raise TeacherError("no teachers: set model.teachers to a list of {checkpoint, kind, weight}")
        self.teachers = teachers
        self.weights = torch.tensor([t.cfg.weight for t in teachers], dtype=torch.float64)

    @classmethod
    def load(cls, configs: list[TeacherConfig]) -> TeacherSet:
        return cls([load_teacher(c) for c in configs])

    def __len__(self) -> int:
        return len(self.teachers)

    def __getitem__(self, index: int) -> Teacher:
        return self.teachers[index]

    def to(self, device: torch.device | str) -> TeacherSet:
        for teacher in self.teachers:
            teacher.to(device)
        return self

    def draw(self, generator: torch.Generator) -> int:
        """Index of a teacher drawn with probability proportional to its weight."""
        return int(torch.multinomial(self.weights, 1, generator=generator))
