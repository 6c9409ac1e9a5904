"""The default logger is W&B, and it must work with no network and no API key; evaluating a run
afterwards logs to a W&B run of its own and leaves every file of the training run as it was."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_run import tiny_run_args

REPO = Path(__file__).resolve().parents[1]


def _digests(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and "eval" not in p.relative_to(run_dir).parts}


@pytest.mark.slow
def test_default_wandb_logger_runs_offline_and_evaluation_leaves_the_run_untouched(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HOME=str(tmp_path),  # no ~/.netrc key
               WANDB_DIR=str(tmp_path), WANDB_CACHE_DIR=str(tmp_path / "cache"), WANDB_CONFIG_DIR=str(tmp_path / "cfg"))
    settings = {"trainer.max_steps": 2, "trainer.val_check_interval": 2, "trainer.limit_val_batches": 1, "logger": "wandb"}
    args = tiny_run_args(tmp_path, **settings)

    def train_py(*extra: str) -> str:
        done = subprocess.run([sys.executable, str(REPO / "train.py"), *extra], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-4000:]
        return done.stdout

    out = train_py(*tiny_run_args(tmp_path, **settings, **{"trainer.enable_progress_bar": "true"}))
    run_dir = tmp_path / "run"
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert runs, sorted(p.name for p in run_dir.rglob("*"))[:50]
    assert list((run_dir / "media").glob("*.mp4"))
    train_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    assert train_id in runs[0].name
    # The console: the end-of-fit line starts a line of its own (not the progress bar's), the final
    # table follows, and the notices nobody can act on are gone.
    assert re.search(r"\n`Trainer\.fit` stopped: `max_steps=2` reached\.", out), out[-2000:]
    assert re.search(r"validation \(\S+\) at step 2\n.*zero motion\n  AJ \(%\)", out, re.S), out[-2000:]
    for noise in ("litlogger", "anonymous setting", "LeafSpec", "Your `IterableDataset` has `__len__`"):
        assert noise not in out, noise

    before = _digests(run_dir)
    out = train_py("validate", *args, f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert _digests(run_dir) == before  # config.yaml, media, W&B files: byte for byte
    assert "dirpath has changed" not in out and "AJ (%)" in out
    evaluated = run_dir / "eval" / "validate-step2"
    eval_runs = list((evaluated / "wandb").glob("offline-run-*"))
    assert len(eval_runs) == 1 and train_id not in eval_runs[0].name  # its own W&B run
    # ... linked to the training run through its config (the offline run file holds it as JSON).
    assert f'"training_run_id":"{train_id}"'.encode() in next(eval_runs[0].glob("run-*.wandb")).read_bytes()
    assert [p.name for p in (evaluated / "media").glob("*.mp4")] == ["tracks_step0000002.mp4"]
