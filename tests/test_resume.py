"""resume=auto after SIGKILL, and which configuration changes a resumed run accepts or refuses."""

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from callbacks.run_metadata import IncompatibleCheckpointError
from tests.tiny_run import TINY_MODEL, tiny_run_args

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


# --------------------------------------------------------------------------- resume compatibility


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory) -> Path:
    import train

    tmp = tmp_path_factory.mktemp("resume_compat")
    train.run(tiny_run_args(tmp, **{"trainer.max_steps": 2, "checkpoint.monitor": "null",
                                    "trainer.val_check_interval": 1000, "logger": "none"}))
    return tmp


def _resume(tmp: Path, *changes: str):
    import train

    args = tiny_run_args(tmp, **{"checkpoint.monitor": "null", "trainer.val_check_interval": 1000,
                                 "logger": "none", "resume": "auto", **dict(c.split("=", 1) for c in changes)})
    return train.run(args)


def test_checkpoint_records_config_code_version_and_shards(two_step_run):
    meta = torch.load(two_step_run / "run" / "checkpoints" / "last.ckpt", weights_only=True)["tracklight"]
    assert meta["config"]["trainer"]["max_steps"] == 2 and meta["config"]["model"]["family"] == "cotracker3"
    assert set(meta["code"]) == {"git_commit", "git_dirty"}
    assert meta["code"]["git_commit"] is None or len(meta["code"]["git_commit"]) == 40
    assert meta["data"]["train_shards"] and all(s.endswith(".tar") for s in meta["data"]["train_shards"])
    assert meta["world_size"] == 1


@pytest.mark.parametrize("change, named", [
    ("model.arch.hidden_size=32", "model.arch.hidden_size: 16 -> 32"),
    ("model.freeze=[fnet.]", "model.freeze"),
])
def test_resume_refuses_another_architecture_or_trainable_set(two_step_run, change, named):
    with pytest.raises(IncompatibleCheckpointError, match=re.escape(named)):
        _resume(two_step_run, change)


def test_resume_refuses_another_family(two_step_run):
    import train

    args = [a for a in tiny_run_args(two_step_run, **{"resume": "auto", "logger": "none"}) if a not in TINY_MODEL]
    with pytest.raises(IncompatibleCheckpointError, match="model.family: 'cotracker3' in the checkpoint vs 'chrono'"):
        train.run(args + ["model=chrono_tiny"])


def test_resume_main_reports_incompatibility_as_a_config_error(two_step_run, monkeypatch, capsys):
    import train

    args = tiny_run_args(two_step_run, **{"resume": "auto", "logger": "none", "model.arch.hidden_size": 32})
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    assert exit_info.value.code == 2 and "config error: cannot resume from" in capsys.readouterr().err


def test_resume_accepts_new_steps_data_and_logging_settings(two_step_run, caplog):
    trainer = _resume(two_step_run, "trainer.max_steps=3", "data.shuffle_buffer=3", "model.lr=0.002",
                      "trainer.log_every_n_steps=2")
    assert trainer.global_step == 3
    warning = next(r.getMessage() for r in caplog.records if "with changed settings" in r.getMessage())
    assert "model.lr: 0.001 -> 0.002" in warning and "trainer.max_steps: 2 -> 3" in warning
