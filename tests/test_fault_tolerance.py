"""Checkpoints are never half-written; SIGTERM / SIGUSR1 / SLURM pre-emption stop with a checkpoint of the current step."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from callbacks import checkpointing
from callbacks.checkpointing import AtomicCheckpointIO, remove_stale_partials
from tests.tiny_run import tiny_run_args

REPO = Path(__file__).resolve().parents[1]


def test_a_write_that_dies_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    def dies_midway(obj, f):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpointing.torch, "save", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left behind


WRITER = textwrap.dedent('''
    import sys, time, torch
    from callbacks import checkpointing
    path = sys.argv[1]
    io = checkpointing.AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, path)
    real = torch.save
    def slow_disk(obj, f):  # the second write stalls halfway, like a slow shared file system
        f.write(b"PK\\x03\\x04 partial")
        f.flush()
        print("writing", flush=True)
        time.sleep(60)
        real(obj, f)
    checkpointing.torch.save = slow_disk
    io.save_checkpoint({"global_step": 2}, path)
''')


def test_sigkill_during_a_checkpoint_write_leaves_a_loadable_file(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert torch.load(path, weights_only=True)["global_step"] == 1  # the old file, whole
    partial = [p.name for p in path.parent.iterdir() if p.name != "last.ckpt"]
    assert len(partial) == 1 and partial[0].startswith(".last.ckpt.tmp-")
    assert remove_stale_partials(path.parent) and sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


class Training:
    """A real `train.py` subprocess whose merged output is collected line by line."""

    stripped_env_prefixes: tuple[str, ...] = ()  # variables of the test's own environment the run must not see

    def __init__(self, args: list[str], extra_env: dict[str, str] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(self.stripped_env_prefixes)}
        env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", **(extra_env or {})})
        # Own session: a run that hangs is killed with all its processes (torchrun's workers too).
        self.proc = subprocess.Popen(self.command(args), cwd=REPO, env=env, start_new_session=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")))
        self._reader.start()

    def command(self, args: list[str]) -> list[str]:
        return [sys.executable, str(REPO / "train.py"), *args]

    def wait_for(self, pattern: str, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while not any(re.search(pattern, line) for line in self.lines):
            assert self.proc.poll() is None and time.time() < deadline, self.output[-3000:]
            time.sleep(0.1)

    def finish(self, timeout: float = 240) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(f"still running after {timeout} s (hung?):\n{self.output[-3000:]}") from None
        self._reader.join()
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)


def _step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


CADENCE = 2  # steps between cadence checkpoints: the first one on disk proves training is under way


def _run_args(tmp_path: Path, **extra: object) -> list[str]:
    # No validation; tests wait for the first cadence checkpoint (progress, whatever the machine's speed) and
    # identify the signal's checkpoint by the step the run reports for it.
    return tiny_run_args(tmp_path, **{"checkpoint.every_n_steps": CADENCE, "checkpoint.monitor": "null",
                                      "trainer.val_check_interval": 100000, "resume": "auto", **extra})


def _resume_and_check(tmp_path: Path, stopped_at: int) -> None:
    resumed = Training(_run_args(tmp_path, **{"trainer.max_steps": stopped_at + 2}))
    assert resumed.finish() == 0, resumed.output[-3000:]
    assert "Restoring states from the checkpoint path" in resumed.output
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == stopped_at + 2
    assert {int(s["step"]) for s in state["optimizer_states"][0]["state"].values()} == {stopped_at + 2}
    metrics = sorted((tmp_path / "run" / "logs").rglob("metrics.csv"))
    with open(metrics[-1]) as f:
        logged = sorted(int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss"))
    assert logged and logged[0] >= stopped_at  # the resumed run did not redo earlier steps


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "whole_group"), [(signal.SIGTERM, False), (signal.SIGUSR1, False),
                                                     (signal.SIGTERM, True)],
                         ids=["SIGTERM", "SIGUSR1", "SIGTERM-to-the-process-group"])
def test_a_signal_mid_training_checkpoints_the_current_step_and_resume_continues(tmp_path, signum, whole_group):
    # The process-group case is how SLURM, `timeout` and `kill -- -PGID` stop a job: the DataLoader
    # worker gets the signal too, and must leave the stopping to the training process.
    workers = {"data.num_workers": 1} if whole_group else {}
    run = Training(_run_args(tmp_path, **{"trainer.max_steps": 100000, **workers}))
    _wait_for_file(tmp_path / "run" / "checkpoints" / "last.ckpt", run)  # training is under way, whatever the speed
    if whole_group:
        os.killpg(run.proc.pid, signum)
    else:
        run.proc.send_signal(signum)
    assert run.finish() == 128 + signal.SIGTERM, run.output[-3000:]

    match = re.search(r"stopped by a signal at step (\d+); saved (\S+)", run.output)
    assert match, run.output[-3000:]
    stopped_at, last = int(match.group(1)), Path(match.group(2))
    assert stopped_at >= 1 and last == tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert _step(last) == stopped_at
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    meta = torch.load(last, map_location="cpu", weights_only=True)["tracklight"]
    assert meta["config"]["model"]["family"] == "cotracker3" and meta["data"]["train_shards"]
    _resume_and_check(tmp_path, stopped_at)


FAKE_SCONTROL = textwrap.dedent('''\
    #!/bin/sh
    # Records the requeue request, then stops the job the way SLURM does: SIGTERM to its task.
    echo "$@" >> "$SCONTROL_LOG"
    kill -TERM "$PPID"
''')


@pytest.mark.slow
def test_slurm_preemption_signal_requeues_and_the_requeued_job_resumes(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL)
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_NNODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "SLURM_NODELIST": "localhost", "PATH": f"{bin_dir}:{os.environ['PATH']}",
             "SCONTROL_LOG": str(tmp_path / "scontrol.log")}
    args = _run_args(tmp_path, **{"trainer.max_steps": 100000, "trainer.devices": "auto",
                                  "trainer.num_nodes": "auto"})
    run = Training(args, slurm)
    run.wait_for(r"start-up:")
    assert "SLURMEnvironment" in run.output
    _wait_for_file(tmp_path / "run" / "checkpoints" / "last.ckpt", run)  # training is under way
    run.proc.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=SIGUSR1@90` delivers
    assert run.finish() == 128 + signal.SIGTERM, run.output[-3000:]

    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    hpc = tmp_path / "run" / "hpc_ckpt_1.ckpt"  # Lightning's requeue checkpoint, in run_dir
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"  # ours, at the step boundary after SIGTERM
    assert _step(last) >= _step(hpc) >= 1
    assert "tracklight" in torch.load(hpc, map_location="cpu", weights_only=True)
    _resume_and_check(tmp_path, _step(last))


# --- 2-process DDP (torchrun, CPU / gloo) ---------------------------------------------------------------------


class TorchrunTraining(Training):
    """`torchrun --nproc_per_node 2 train.py` on CPU; `proc` is the launcher, the workers are its children."""

    # A test run inside a SLURM job or under torchrun must not inherit that launcher's layout.
    stripped_env_prefixes = ("SLURM_", "TORCHELASTIC_")

    def command(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(REPO / "train.py"), *args]

    def worker_pid(self, rank: int) -> int:
        # torchrun starts each worker as its own child process with RANK in its environment.
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    return int(pid)
        raise AssertionError(f"no worker with RANK={rank} under torchrun pid {self.proc.pid}")


def _ddp_args(tmp_path: Path, **extra: object) -> list[str]:
    return tiny_run_args(tmp_path, **{"trainer.accelerator": "cpu", "trainer.devices": "auto",
                                      "trainer.num_nodes": "auto", "checkpoint.every_n_steps": CADENCE,
                                      "checkpoint.monitor": "null", "trainer.val_check_interval": 100000,
                                      "resume": "auto", **extra})


def _wait_for_file(path: Path, run: Training, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert run.proc.poll() is None and time.time() < deadline, run.output[-3000:]
        time.sleep(0.1)


def _stop_ddp_run(tmp_path: Path, signal_target: str, signum: int) -> str:
    """Start a long 2-rank run, signal it once it has made progress, check last.ckpt; return the run's output."""
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    run = TorchrunTraining(_ddp_args(tmp_path, **{"trainer.max_steps": 100000}))
    _wait_for_file(last, run)  # the first cadence checkpoint: both ranks are stepping
    pid = run.proc.pid if signal_target == "launcher" else run.worker_pid(1)
    os.kill(pid, signum)
    code = run.finish(timeout=90)  # a hang (ranks stopping at different steps) fails here
    assert code != 0, run.output[-3000:]  # an unfinished run must not look finished to a scheduler

    saved = re.findall(r"stopped by a signal at step (\d+); saved (\S+)", run.output)
    assert len(saved) == 1, run.output[-3000:]  # rank 0 reports the one checkpoint all ranks agreed on
    stopped_at = int(saved[0][0])
    assert Path(saved[0][1]) == last and stopped_at >= CADENCE
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == stopped_at and state["tracklight"]["world_size"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no half-written temporaries
    _resume_ddp_and_check(tmp_path, stopped_at)
    return run.output


def _resume_ddp_and_check(tmp_path: Path, stopped_at: int) -> None:
    resumed = TorchrunTraining(_ddp_args(tmp_path, **{"trainer.max_steps": stopped_at + 2}))
    assert resumed.finish(timeout=120) == 0, resumed.output[-3000:]
    assert "Restoring states from the checkpoint path" in resumed.output
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == stopped_at + 2
    assert {int(s["step"]) for s in state["optimizer_states"][0]["state"].values()} == {stopped_at + 2}


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_both_ranks_with_one_checkpoint_and_resume_continues(tmp_path):
    output = _stop_ddp_run(tmp_path, "launcher", signal.SIGTERM)
    assert output.count("received signal 15") == 2  # torchrun passed it on to both workers


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, signum):
    # What a pre-empted node in a multi-node job sees: only its own ranks get the signal.
    output = _stop_ddp_run(tmp_path, "rank1", signum)
    assert output.count("received signal 15") == 1  # SIGUSR1 arrives as SIGTERM (no SLURM auto-requeue here)
    # Rank 0 saved last.ckpt behind a barrier that rank 1 had to join: both stopped at the same step.
