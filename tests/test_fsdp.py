"""`trainer.strategy=fsdp` on CPU (2 gloo processes): real sharding, full checkpoints, same numbers as DDP."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.fabric.plugins.environments import LightningEnvironment
from torch.distributed.fsdp import FullyShardedDataParallel

import train
from tests.tiny_run import tiny_run_args
from train import load_config

REPO = Path(__file__).resolve().parents[1]
CPU_RUN = {"trainer.accelerator": "cpu", "trainer.devices": "auto", "trainer.num_nodes": "auto",
           "trainer.val_check_interval": 1000, "checkpoint.monitor": "null", "data.batch_size": 2,
           "trainer.gradient_clip_val": 0.5}  # below the tiny model's gradient norms: clipping really acts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shard_on_rank(rank: int, port: int, tmp: Path, results: dict) -> None:
    """One gloo rank: wrap the tiny tracker exactly as the strategy does in fit; report sizes and the state dict."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        cfg = load_config(tiny_run_args(tmp, **{"trainer.strategy": "fsdp", **CPU_RUN}))[1]
        module = train.build_module(cfg)
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        full_numel = sum(p.numel() for p in module.parameters())
        strategy = train.fsdp_strategy(cfg)
        strategy.parallel_devices = [torch.device("cpu")] * 2
        strategy.cluster_environment = LightningEnvironment()  # local rank from LOCAL_RANK
        blocks = tuple(strategy.kwargs["auto_wrap_policy"]._module_classes)
        num_blocks = sum(isinstance(m, blocks) for m in module.modules())
        strategy.model = strategy._setup_model(module)
        results[rank] = {
            "local_numel": sum(p.numel() for p in strategy.model.parameters()), "full_numel": full_numel,
            "units": sum(isinstance(m, FullyShardedDataParallel) for m in strategy.model.modules()),
            "blocks": num_blocks, "expected": expected,
            "state": {k: tuple(v.shape) for k, v in strategy.lightning_module_state_dict().items()}}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_shards_parameters_and_gathers_a_full_state_dict(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_shard_on_rank, args=(_free_port(), tmp_path, results), nprocs=2)
    r0, r1 = results[0], results[1]
    assert r0["blocks"] >= 2 and r0["units"] == r0["blocks"] + 1  # one FSDP unit per wrapped block, plus the root
    # The ranks split the parameters between them: together exactly the model, each about half of it.
    assert r0["local_numel"] + r1["local_numel"] == r0["full_numel"]
    assert abs(r0["local_numel"] - r1["local_numel"]) <= 0.02 * r0["full_numel"]
    # Rank 0 gathers the full, unsharded state dict, keyed and shaped as the plain module's; rank 1 gets none.
    assert r0["state"] == r0["expected"] and r1["state"] == {}


def _torchrun_train(tmp: Path, **overrides: object) -> tuple[str, dict]:
    """train.py under 2-process CPU torchrun; (output, last.ckpt)."""
    args = tiny_run_args(tmp, **{**CPU_RUN, **overrides})
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    for key in [k for k in env if k.startswith(("SLURM_", "TORCHELASTIC_"))]:
        env.pop(key)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "train.py"), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    return out, torch.load(tmp / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _logged(tmp: Path, key: str) -> list[float]:
    rows = csv.DictReader((tmp / "run" / "logs" / "version_0" / "metrics.csv").open())
    return [float(row[key]) for row in rows if row.get(key)]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_fsdp_trains_on_cpu_like_ddp_saves_full_checkpoints_and_resumes(tmp_path):
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    out, fsdp_ckpt = _torchrun_train(fsdp, **{"trainer.strategy": "fsdp", "trainer.max_steps": 2})
    assert "(TracklightFSDPStrategy, TorchElasticEnvironment, CPUAccelerator" in out
    _, ddp_ckpt = _torchrun_train(ddp, **{"trainer.max_steps": 2})
    assert fsdp_ckpt["global_step"] == ddp_ckpt["global_step"] == 2
    # The FSDP checkpoint is a plain full state dict: same keys and shapes as the unwrapped module's, so it
    # loads anywhere a DDP checkpoint does; and the same seeds and batches gave the same losses and weights
    # (so FSDP's sharded gradients, their global-norm clipping and the Adam step match DDP's).
    cfg = load_config(tiny_run_args(fsdp))[1]
    L.seed_everything(cfg.seed)  # as train.py does: `plain` holds the runs' initial weights
    plain = train.build_module(cfg).state_dict()
    assert {k: v.shape for k, v in fsdp_ckpt["state_dict"].items()} == {k: v.shape for k, v in plain.items()}
    assert not all(torch.equal(fsdp_ckpt["state_dict"][k], v) for k, v in plain.items())  # it trained
    assert _logged(fsdp, "train/loss") == pytest.approx(_logged(ddp, "train/loss"), rel=1e-5)
    assert len(_logged(fsdp, "train/loss")) == 2
    # The logged gradient norm is the global one over the shards, as DDP's over its all-reduced gradients.
    assert _logged(fsdp, "train/grad_norm") == pytest.approx(_logged(ddp, "train/grad_norm"), rel=1e-4)
    _assert_same_weights(fsdp_ckpt["state_dict"], ddp_ckpt["state_dict"])
    # Resume one more step each: equal weights afterwards mean FSDP restored weights and Adam state correctly.
    _, fsdp_ckpt = _torchrun_train(fsdp, **{"trainer.strategy": "fsdp", "trainer.max_steps": 3, "resume": "auto"})
    _, ddp_ckpt = _torchrun_train(ddp, **{"trainer.max_steps": 3, "resume": "auto"})
    assert fsdp_ckpt["global_step"] == ddp_ckpt["global_step"] == 3
    _assert_same_weights(fsdp_ckpt["state_dict"], ddp_ckpt["state_dict"])
