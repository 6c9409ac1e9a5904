"""Every error path and every stop signal ends `train.py` with its exit code within seconds, DataLoader
workers included (they ignore SIGTERM), single process and 2-process torchrun."""

from __future__ import annotations

import io
import os
import re
import signal
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import torch

from tests.conftest import write_clips
from tests.test_fault_tolerance import TorchrunTraining, Training
from tests.tiny_run import tiny_run_args

BOUND_S = 90  # generous: a hang is forever, a loaded CI machine is slow


class MarkedTraining(Training):
    """A Training whose processes (and their DataLoader workers) carry a marker in their environment."""

    def __init__(self, args: list[str]) -> None:
        self.marker = f"TRACKLIGHT_TEST_RUN={uuid.uuid4().hex}"
        self.started = time.monotonic()
        key, value = self.marker.split("=")
        super().__init__(args, {key: value})

    def finish_within_bound(self) -> int:
        code = self.finish(timeout=BOUND_S)
        assert time.monotonic() - self.started < BOUND_S
        survivors = processes_with(self.marker)
        for pid in survivors:  # clean up before failing
            os.kill(pid, signal.SIGKILL)
        assert not survivors, f"processes left behind: {survivors}\n{self.output[-3000:]}"
        return code


class MarkedTorchrun(MarkedTraining, TorchrunTraining):
    pass


def processes_with(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:  # gone, or not ours to read
                pass
    return found


def rewrite_members(url: str, change) -> None:  # noqa: ANN001
    """Rewrite a shard, replacing each member's bytes by change(name, bytes) (None drops the member)."""
    with tarfile.open(url) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(url, "w") as tar:
        for member, data in members:
            data = change(member.name, data)
            if data is not None:
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))


def _args(tmp_path: Path, shards: dict[str, str], **extra: object) -> list[str]:
    return tiny_run_args(tmp_path, **{"data.train_shards": shards["train"], "data.val_shards": shards["val"],
                                      "data.num_workers": 1, "checkpoint.monitor": "null",
                                      "trainer.val_check_interval": 1000, "checkpoint.every_n_steps": 1000,
                                      **extra})


@pytest.fixture
def shards(tmp_path: Path) -> dict[str, str]:
    """8 training clips in 4 shards and 2 validation clips; 32x32 x 12 frames."""
    write_clips(tmp_path / "train", range(8), per_shard=2)
    write_clips(tmp_path / "val", range(100, 102), per_shard=2)
    return {"train": str(tmp_path / "train"), "val": str(tmp_path / "val")}


def _drop_tracks(name: str, data: bytes) -> bytes | None:
    return None if name.endswith(".tracks.npy") else data


@pytest.mark.slow
def test_shards_of_another_schema_stop_with_one_line_and_exit_2(tmp_path, shards):
    for url in sorted(Path(shards["train"]).glob("*.tar")):
        rewrite_members(str(url), _drop_tracks)
    run = MarkedTraining(_args(tmp_path, shards, **{"trainer.max_steps": 20}))
    assert run.finish_within_bound() == 2, run.output[-3000:]
    assert re.search(r"data error: shard \S+ is not in this framework's clip schema.*missing required member", run.output)
    assert "Traceback" not in run.output


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["a sample missing tracks.npy", "a garbage meta.json"])
def test_a_damaged_sample_is_skipped_and_the_run_finishes(tmp_path, shards, damage):
    first = sorted(Path(shards["train"]).glob("*.tar"))[0]
    if damage == "a sample missing tracks.npy":
        rewrite_members(str(first), lambda name, data: None if name == "clip00000.tracks.npy" else data)
    else:
        rewrite_members(str(first), lambda name, data: b"{not json" if name == "clip00000.meta.json" else data)
    run = MarkedTraining(_args(tmp_path, shards, **{"trainer.max_steps": 6, "data.shuffle_buffer": 1}))
    assert run.finish_within_bound() == 0, run.output[-3000:]
    assert re.search(r"skipping (corrupt sample|a sample that violates the shard schema): \S+clips-000000.tar "
                     r"sample clip00000: (missing required member\(s\) \['tracks.npy'\]|member meta.json is not JSON)",
                     run.output), run.output[-3000:]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


@pytest.mark.slow
def test_an_error_raised_in_a_worker_exits_1_without_hanging(tmp_path, shards):
    # Clips of 12 frames cannot give 16-frame samples: the stream gives up after 500 in a row.
    run = MarkedTraining(_args(tmp_path, shards, **{"trainer.max_steps": 20, "data.clip_len": 16}))
    assert run.finish_within_bound() == 1, run.output[-3000:]
    assert "500 clips in a row were too short" in run.output


@pytest.mark.slow
def test_batch_size_zero_is_a_config_error(tmp_path, shards):
    run = MarkedTraining(_args(tmp_path, shards, **{"data.batch_size": 0}))
    assert run.finish_within_bound() == 2, run.output[-3000:]
    assert "config error: data.batch_size=0: must be at least 1" in run.output


def _long_validation_args(tmp_path: Path, **extra: object) -> list[str]:
    # 160 validation clips take seconds to evaluate; last.ckpt of step 2 appears just before validation starts.
    write_clips(tmp_path / "train", range(8), per_shard=2)
    write_clips(tmp_path / "val", range(100, 260), per_shard=40)
    return tiny_run_args(tmp_path, **{"data.train_shards": str(tmp_path / "train"),
                                      "data.val_shards": str(tmp_path / "val"), "data.num_workers": 1,
                                      "checkpoint.monitor": "null", "trainer.val_check_interval": 2,
                                      "checkpoint.every_n_steps": 2, "trainer.max_steps": 100, **extra})


def _signal_during_validation(run: Training, tmp_path: Path) -> None:
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + BOUND_S
    while not last.exists():
        assert run.proc.poll() is None and time.monotonic() < deadline, run.output[-3000:]
        time.sleep(0.05)
    os.killpg(run.proc.pid, signal.SIGTERM)  # like SLURM / `timeout`: the whole group, workers included


@pytest.mark.slow
def test_sigterm_during_validation_saves_and_exits_143(tmp_path):
    run = MarkedTraining(_long_validation_args(tmp_path))
    _signal_during_validation(run, tmp_path)
    assert run.finish_within_bound() == 143, run.output[-3000:]
    assert re.search(r"stopped by a signal at step 2; saved \S+last.ckpt", run.output)
    assert "validation at step 2" not in run.output  # it was stopped during the validation
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def _ddp_args(args: list[str]) -> list[str]:
    return args + ["trainer.accelerator=cpu", "trainer.devices=auto", "trainer.num_nodes=auto"]


@pytest.mark.slow
def test_ddp_a_data_error_on_one_rank_ends_both_ranks_and_their_workers(tmp_path, shards):
    # Shards split by rank: rank 0 reads shards 0 and 2, which are of another schema.
    for url in sorted(Path(shards["train"]).glob("*.tar"))[::2]:
        rewrite_members(str(url), _drop_tracks)
    run = MarkedTorchrun(_ddp_args(_args(tmp_path, shards, **{"trainer.max_steps": 50})))
    assert run.finish_within_bound() != 0, run.output[-3000:]
    assert "data error: shard" in run.output


@pytest.mark.slow
def test_ddp_sigterm_during_validation_ends_both_ranks_with_a_checkpoint(tmp_path):
    run = MarkedTorchrun(_ddp_args(_long_validation_args(tmp_path)))
    _signal_during_validation(run, tmp_path)
    assert run.finish_within_bound() != 0, run.output[-3000:]
    assert re.search(r"stopped by a signal at step \d+; saved \S+last.ckpt", run.output), run.output[-3000:]
