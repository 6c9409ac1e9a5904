"""Kill a real training process with SIGKILL and continue it with resume=auto."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.tiny_run import tiny_run_args

REPO = Path(__file__).resolve().parents[1]


def _train(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _global_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


@pytest.mark.slow
def test_sigkill_then_resume_auto_continues_from_the_same_step(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    common = tiny_run_args(tmp_path, **{"checkpoint.every_n_steps": 2, "checkpoint.monitor": "null",
                                        "trainer.val_check_interval": 1000, "resume": "auto"})
    first = _train(common + ["trainer.max_steps=1000"])
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        if ckpt.exists() and _global_step(ckpt) >= 4:
            break
        time.sleep(0.2)
    assert first.poll() is None, first.stdout.read()[-3000:]
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = _global_step(ckpt)  # the file left behind is complete and loadable
    assert killed_at >= 4 and killed_at % 2 == 0

    second = _train(common + [f"trainer.max_steps={killed_at + 3}"])
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out[-3000:]
    assert "Restoring states from the checkpoint path" in out and str(ckpt) in out
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == killed_at + 3
    # Optimiser and scheduler continued rather than restarting from zero.
    steps = {int(s["step"]) for s in state["optimizer_states"][0]["state"].values()}
    assert steps == {killed_at + 3}
    assert state["lr_schedulers"][0]["last_epoch"] == killed_at + 3
    # The resumed run logged only steps after the checkpoint.
    metrics = sorted((tmp_path / "run" / "logs").rglob("metrics.csv"))
    with open(metrics[-1]) as f:
        logged = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert logged and min(logged) >= killed_at
