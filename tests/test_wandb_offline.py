"""The default logger is W&B, and it must work with no network and no API key."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_run import tiny_run_args

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_default_wandb_logger_runs_offline_without_api_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HOME=str(tmp_path),  # no ~/.netrc key
               WANDB_DIR=str(tmp_path), WANDB_CACHE_DIR=str(tmp_path / "cache"), WANDB_CONFIG_DIR=str(tmp_path / "cfg"))
    args = [a for a in tiny_run_args(tmp_path, **{"trainer.max_steps": 2, "trainer.val_check_interval": 2,
                                                  "trainer.limit_val_batches": 1}) if a != "logger=csv"]
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *args, "logger=wandb"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert runs, sorted(p.name for p in (tmp_path / "run").rglob("*"))[:50]
    assert list((tmp_path / "run" / "media").glob("*.mp4"))
    assert (tmp_path / "run" / "wandb_run_id.txt").read_text().strip() in runs[0].name
