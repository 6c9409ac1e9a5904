"""NaN guard: NaN labels are skipped data (augmentation on), skipped steps are logged as skipped, and no
checkpoint holds weights that produced a non-finite loss. Validation reports how many clips it evaluated."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import train
from callbacks.checkpointing import why_not_save
from datamodules.shards import ShardWriter, encode_clip
from datamodules.synthetic import generate_clip
from tests.conftest import TINY
from tests.tiny_run import tiny_run_args


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(sorted((run_dir / "logs").rglob("metrics.csv"))[-1]) as f:
        return list(csv.DictReader(f))


def test_non_finite_steps_are_logged_as_skipped_and_never_checkpointed(tmp_path, monkeypatch, caplog):
    from lightning_modules import cotracker3 as tracker

    real, calls = tracker.cotracker3_loss, []

    def poisoned(*args, **kwargs):  # noqa: ANN002, ANN003
        terms = real(*args, **kwargs)
        calls.append(1)
        if len(calls) in (3, 4):  # steps 2 and 3 (0-based) are non-finite
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(tracker, "cotracker3_loss", poisoned)
    args = tiny_run_args(tmp_path, **{"trainer.max_steps": 4, "trainer.val_check_interval": 1000,
                                      "checkpoint.monitor": "null", "checkpoint.every_n_steps": 1})
    with caplog.at_level(logging.WARNING):
        train.run(args)
    rows = {int(r["step"]): r for r in _metrics(tmp_path / "run") if r.get("train/lr")}
    assert math.isfinite(float(rows[1]["train/loss"])) and math.isfinite(float(rows[1]["train/grad_norm"]))
    for step in (2, 3):  # not the previous step's values carried over
        assert math.isnan(float(rows[step]["train/loss"])) and math.isnan(float(rows[step]["train/grad_norm"]))
        assert float(rows[step]["train/nonfinite_steps_skipped"]) == step - 1
    # The periodic saves at steps 3 and 4 and the final one fell inside the run of non-finite steps.
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2
    assert "step 4: no checkpoint written" in caplog.text


def test_weights_holding_nan_are_never_saved():
    module = torch.nn.Linear(2, 2)
    trainer = SimpleNamespace(lightning_module=module,
                              strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision))
    assert why_not_save(trainer) is None
    module.consecutive_nonfinite = 2
    assert why_not_save(trainer) == "the last 2 step(s) had a non-finite loss"
    module.consecutive_nonfinite = 0
    with torch.no_grad():
        module.weight[0, 0] = float("inf")
    assert why_not_save(trainer) == "the weights hold NaN or Inf"


def _shards_with_nan_tracks(root: Path) -> None:
    with ShardWriter(root, max_count=2) as writer:
        for seed in range(8):
            clip = generate_clip(seed, TINY)
            tracks = clip["tracks"].copy()
            if seed % 2 == 0:
                tracks[:, : TINY.num_tracks // 2] = np.nan  # half the points of every other clip have NaN labels
            writer.write_sample(encode_clip(f"clip{seed}", clip["frames"], tracks, clip["visible"]))


def test_nan_labels_with_augmentation_on_are_counted_skips_not_a_crash(tmp_path):
    _shards_with_nan_tracks(tmp_path / "shards")
    args = tiny_run_args(tmp_path, **{"data.train_shards": str(tmp_path / "shards"), "trainer.max_steps": 4,
                                      "trainer.val_check_interval": 1000, "checkpoint.monitor": "null",
                                      "data.augment.enabled": True})
    assert train.run(args).global_step == 4
    skipped = [float(r["data/corrupt_skipped"]) for r in _metrics(tmp_path / "run") if r.get("data/corrupt_skipped")]
    assert skipped and skipped[-1] >= 1


def test_validation_reports_the_clips_it_evaluated(tmp_path, caplog):
    with ShardWriter(tmp_path / "val", max_count=3) as writer:
        for seed in range(3):
            clip = generate_clip(100 + seed, TINY)
            sample = encode_clip(f"v{seed}", clip["frames"], clip["tracks"], clip["visible"])
            if seed == 1:
                sample["002.jpg"] = b"\xff\xd8 damaged"
            writer.write_sample(sample)
    args = tiny_run_args(tmp_path, **{"data.val_shards": str(tmp_path / "val"), "logger": "none"})
    with caplog.at_level(logging.INFO):
        (results,) = train.run(["validate", *args, "data.train_shards=" + str(tmp_path / "val")])
    assert results["val/clips_evaluated"] == 2 and results["val/clips_skipped"] == 1
    assert "validation at step 0: 2 clips evaluated, 1 skipped (1 corrupt, 0 with too few tracks)" in caplog.text
