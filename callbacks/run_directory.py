"""One run per run directory: start-up checks, the lock against two live runs, and resume=auto's choice.

Rules (README "Fault tolerance and resuming"):
  - a run directory must be writable: checked at start-up, not at the first checkpoint;
  - `fit` without `resume` in a directory that already holds checkpoints is refused: continue that
    run with `resume=auto`, or start a new one under another `name` / `run_dir`. (Not a new
    versioned directory: `resume=auto`, the W&B run id file and sweeps all find a run by its
    directory, and a silently versioned one would leave the user resuming the older run);
  - a live `fit` holds `<run_dir>/run.lock` (written by global rank 0, the process that writes the
    directory); another `fit` of the same directory is refused while the holder lives. A lock is
    stale when its process is gone (same host), when it was left by an earlier allocation of the
    same SLURM job (a requeue), or when its holder has not refreshed it for LOCK_STALE_AFTER_S
    (another host; the holder touches it every LOCK_HEARTBEAT_S);
  - `resume=auto` continues from the most recently written checkpoint of the directory.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from configs.loader import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
LOCK_HEARTBEAT_S = 30.0
LOCK_STALE_AFTER_S = 300.0


def check_writable(run_dir: Path) -> None:
    """Raise ConfigError unless `run_dir` can be created and written."""
    probe = run_dir / f".write-test-{socket.gethostname()}-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"run_dir={str(run_dir)!r} is not writable ({err.strerror or err}); "
                          "choose another run_dir or name") from None


def run_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints of the run in `run_dir`: checkpoints/*.ckpt and SLURM's hpc_ckpt_N.ckpt."""
    return [p for p in [*(run_dir / "checkpoints").glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]


def refuse_fresh_run_over_checkpoints(run_dir: Path) -> None:
    """Raise ConfigError when a fresh fit would write into the directory of an earlier run."""
    found = run_checkpoints(run_dir)
    if found:
        newest = max(found, key=lambda p: p.stat().st_mtime)
        raise ConfigError(f"run_dir={str(run_dir)!r} already holds the checkpoints of an earlier run (newest: {newest}); "
                          "pass resume=auto to continue that run, or name=NEW (or run_dir=NEW) to start another")


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `resume=auto` continues from: the most recently written one of the run, if any.

    last.ckpt is written at the checkpoint cadence, at the end and on a stop signal; a best-k
    checkpoint written at a later validation, or SLURM's hpc_ckpt_N.ckpt, can be newer.
    """
    found = run_checkpoints(run_dir)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _job_id() -> str | None:
    # A requeued SLURM job keeps its id: a lock with our job id was left by the job's earlier allocation.
    return os.environ.get("SLURM_JOB_ID")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """`<run_dir>/run.lock` held by this process until it exits (see the module docstring)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": _job_id(),
                      "started": time.time()}
        self._stop = threading.Event()

    def acquire(self) -> RunLock:
        """Take the lock or raise ConfigError naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                reason = self._stale_reason(holder)
                if reason is None:
                    raise ConfigError(self._in_use_message(holder)) from None
                log.warning("removing the stale lock %s (%s)", self.path, reason)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            atexit.register(self.release)
            threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True).start()
            return self
        raise ConfigError(f"could not take the lock {self.path}: another run is starting in the same run_dir")

    def release(self) -> None:
        self._stop.set()
        if self._read_holder() == self.owner:
            self.path.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(LOCK_HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def _read_holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _stale_reason(self, holder: dict | None) -> str | None:
        if holder is None:
            return "unreadable"
        if holder.get("host") == self.owner["host"]:
            pid = holder.get("pid")
            if pid == self.owner["pid"]:
                return "left by an earlier run in this process"
            return None if isinstance(pid, int) and _process_alive(pid) else f"process {pid} is gone"
        if self.owner["slurm_job_id"] is not None and holder.get("slurm_job_id") == self.owner["slurm_job_id"]:
            return f"left by an earlier allocation of SLURM job {self.owner['slurm_job_id']}"
        try:
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return "gone"
        return f"not refreshed for {age:.0f} s" if age > LOCK_STALE_AFTER_S else None

    def _in_use_message(self, holder: dict | None) -> str:
        who = f"process {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
        return (f"run_dir={str(self.path.parent)!r} is in use by a live run ({who}, lock {self.path}); "
                f"stop it first, or start this one with another name / run_dir")
