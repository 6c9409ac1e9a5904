"""The real entry point on a tiny run: fit, saved resolved config, validate with a results table."""

import hashlib
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

import train
from tests.tiny_run import tiny_run_args


def file_digests(run_dir: Path) -> dict[str, str]:
    """sha256 of every file of a run directory outside eval/."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and "eval" not in p.relative_to(run_dir).parts}


def test_fit_saves_config_and_checkpoints_then_validate_prints_results(tmp_path, capsys):
    args = tiny_run_args(tmp_path, **{"trainer.max_steps": 4, "trainer.val_check_interval": 2,
                                      "checkpoint.every_n_steps": 2, "trainer.limit_val_batches": 1})
    trainer = train.run(args)
    run_dir = tmp_path / "run"
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.trainer.max_steps == 4 and saved.run_dir == str(run_dir)
    assert trainer.global_step == 4
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and any(name.startswith("step") for name in ckpts)
    assert "val/aj" in trainer.callback_metrics and "val/zero_motion_aj" in trainer.callback_metrics
    assert list((run_dir / "media").glob("tracks_step*.mp4"))
    # The last validation's table, in percent with the zero-motion baseline, after fit.
    out = capsys.readouterr().out
    table = out[out.index("validation (default) at step 4"):]
    aj = float(trainer.callback_metrics["val/aj"])
    assert "zero motion" in table.splitlines()[1]
    assert table.splitlines()[2].split() == ["AJ", "(%)", f"{100 * aj:.1f}",
                                             f"{100 * float(trainer.callback_metrics['val/zero_motion_aj']):.1f}"]
    assert "δ_avg (%)" in table and "OA (%)" in table and "val/pts_within_16" in table

    # Evaluating the run never touches its files: outputs go to eval/<stage>-step<N>/ (N read from the checkpoint).
    before = file_digests(run_dir)
    results = train.run(["validate", *args, f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}"])
    out = capsys.readouterr().out
    assert "validate results" in out and "val/aj" in out and "AJ (%)" in out
    assert 0.0 <= results[0]["val/aj"] <= 1.0
    evaluated = run_dir / "eval" / "validate-step4"
    assert OmegaConf.load(evaluated / "config.yaml").ckpt == str(run_dir / "checkpoints" / "last.ckpt")
    assert [p.name for p in (evaluated / "media").glob("*.mp4")] == ["tracks_step0000004.mp4"]
    assert list((evaluated / "logs").rglob("metrics.csv"))

    out_dir = train.run(["predict", *args, f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}"])
    assert out_dir == run_dir / "eval" / "predict-step4" / "predictions"
    assert file_digests(run_dir) == before
    files = sorted(out_dir.glob("rank0-dl0-batch*.npz"))
    assert len(files) == 2  # two validation clips, batch size 1
    with np.load(files[0]) as pred:
        assert pred["tracks"].shape == (1, 8, 8, 2) and pred["visible"].dtype == bool


def test_nan_loss_steps_are_skipped_and_a_run_of_them_stops_training(tmp_path, monkeypatch):
    import pytest

    from lightning_modules import cotracker3 as tracker

    real = tracker.cotracker3_loss

    def poisoned(*a, **k):
        terms = real(*a, **k)
        terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(tracker, "cotracker3_loss", poisoned)
    args = tiny_run_args(tmp_path, **{"trainer.max_steps": 50, "trainer.val_check_interval": 1000,
                                      "model.max_consecutive_nonfinite": 3, "checkpoint.every_n_steps": 1})
    with pytest.raises(RuntimeError, match="3 consecutive non-finite losses"):
        train.run(args)
    # No optimiser step happened, so no checkpoint with NaN weights exists.
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    if last.exists():
        state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
