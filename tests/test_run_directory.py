"""One run per run directory: a fresh fit refuses an earlier run's checkpoints, the lock against two live
runs, resume=auto's choice, and a resumed run reading new (reproducible) data."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import train
from callbacks import run_directory
from callbacks.run_directory import LOCK_NAME, RunLock, newest_checkpoint
from configs.loader import ConfigError
from configs.schema import TrackingDataConfig
from datamodules.tracking import TrainClipStream
from tests.tiny_run import tiny_run_args


def _args(tmp_path: Path, **extra: object) -> list[str]:
    return tiny_run_args(tmp_path, **{"checkpoint.monitor": "null", "trainer.val_check_interval": 1000,
                                      "logger": "none", **extra})


def test_a_fresh_run_in_a_used_directory_is_refused_and_resume_auto_continues_it(tmp_path):
    train.run(_args(tmp_path, **{"trainer.max_steps": 2}))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    with pytest.raises(ConfigError, match=r"already holds the checkpoints of an earlier run .*pass resume=auto to "
                                          r"continue that run, or name=NEW"):
        train.run(_args(tmp_path, **{"trainer.max_steps": 3}))
    assert last.read_bytes() == before and sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    trainer = train.run(_args(tmp_path, **{"trainer.max_steps": 3, "resume": "auto"}))
    assert trainer.global_step == 3


def test_resume_auto_takes_the_most_recently_written_checkpoint(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for i, name in enumerate(["last.ckpt", "step0000250-val_aj0.5000.ckpt", "last-v1.ckpt"]):
        (ckpts / name).write_bytes(b"x")
        os.utime(ckpts / name, (1000 + i, 1000 + i))
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"x")
    os.utime(tmp_path / "hpc_ckpt_1.ckpt", (999, 999))
    assert newest_checkpoint(tmp_path) == ckpts / "last-v1.ckpt"
    os.utime(tmp_path / "hpc_ckpt_1.ckpt", (2000, 2000))
    assert newest_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_1.ckpt"
    assert newest_checkpoint(tmp_path / "empty") is None


def _write_lock(run_dir: Path, **owner: object) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": None,
                                "started": time.time(), **owner}))
    return path


@pytest.fixture
def live_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_live_run_holds_its_directory(tmp_path, live_process):
    _write_lock(tmp_path, pid=live_process)
    with pytest.raises(ConfigError, match=rf"is in use by a live run \(process {live_process} on "):
        RunLock(tmp_path).acquire()


def test_a_stale_lock_does_not_block(tmp_path, caplog, monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file = _write_lock(tmp_path, pid=dead.pid)
    lock = RunLock(tmp_path).acquire()
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert f"process {dead.pid} is gone" in caplog.text
    lock.release()
    assert not lock_file.exists()

    # Another host: alive while it refreshes the file, stale once it stops; a requeued SLURM job takes its own.
    _write_lock(tmp_path, host="elsewhere", pid=1, slurm_job_id="77")
    with pytest.raises(ConfigError, match="process 1 on elsewhere"):
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    RunLock(tmp_path).acquire().release()
    monkeypatch.delenv("SLURM_JOB_ID")
    lock_file = _write_lock(tmp_path, host="elsewhere", pid=1)
    old = time.time() - run_directory.LOCK_STALE_AFTER_S - 10
    os.utime(lock_file, (old, old))
    RunLock(tmp_path).acquire().release()


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from callbacks.run_directory import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_fit_of_a_live_run_directory_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run_dir)], env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"run_dir='{run_dir}' is in use by a live run \(process {holder.pid}"):
            train.run(_args(tmp_path, **{"trainer.max_steps": 1}))
    finally:
        holder.kill()
        holder.wait()
    train.run(_args(tmp_path, **{"trainer.max_steps": 1}))  # the holder died: its lock is stale


def _first_clip_ids(urls: list[str], start_step: int) -> list[int]:
    cfg = OmegaConf.structured(TrackingDataConfig(clip_len=8, num_queries=8, batch_size=2, num_workers=0,
                                                  shuffle_buffer=4, batches_per_epoch=3))
    torch.manual_seed(42)  # what seed_everything does at every start, resumed or not
    return [int(i) for batch in TrainClipStream(urls, cfg, 0, 1, start_step) for i in batch["clip_id"]]


def test_a_resumed_stream_reads_new_batches_reproducibly(tiny_shards):
    first = _first_clip_ids(tiny_shards["train"], 0)
    resumed = _first_clip_ids(tiny_shards["train"], 37)
    assert resumed != first  # a pre-empted run does not re-train the same first batches
    assert _first_clip_ids(tiny_shards["train"], 37) == resumed  # the same for a given checkpoint
    assert _first_clip_ids(tiny_shards["train"], 0) == first


def test_a_resumed_run_starts_its_stream_at_the_checkpoint_step(tmp_path, monkeypatch):
    starts = []
    real = TrainClipStream.__init__

    def record(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        real(self, *args, **kwargs)
        starts.append(self.start_step)

    monkeypatch.setattr(TrainClipStream, "__init__", record)
    train.run(_args(tmp_path, **{"trainer.max_steps": 2}))
    train.run(_args(tmp_path, **{"trainer.max_steps": 3, "resume": "auto"}))
    assert starts[-2:] == [0, 2]
