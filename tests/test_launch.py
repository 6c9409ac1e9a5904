"""The same train.py under torchrun and srun: layout from the launcher, SLURM requeue, FSDP option."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import FSDPStrategy

import train
from callbacks.fsdp import FSDPNormClipping, TracklightFSDPStrategy
from configs.loader import ConfigError
from tests.tiny_run import tiny_run_args
from train import load_config

REPO = Path(__file__).resolve().parents[1]
TORCHRUN_ENV = {"TORCHELASTIC_RUN_ID": "test", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "RANK": "0",
                "LOCAL_RANK": "0", "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
SRUN_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
            "SLURM_NNODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
            "SLURM_NODELIST": "localhost"}


def _cfg(*overrides: str):
    return load_config(list(overrides))[1]


def test_torchrun_layout_fills_auto_and_rejects_a_mismatch(monkeypatch):
    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    assert train.resolve_layout(_cfg("trainer.devices=auto", "trainer.num_nodes=auto")) == (2, 2)
    assert train.resolve_layout(_cfg("trainer.devices=2", "trainer.num_nodes=2")) == (2, 2)
    with pytest.raises(ConfigError, match=r"torchrun started 2 process\(es\) per node on 2 node\(s\).*"
                                          r"pass trainer.devices=2 trainer.num_nodes=2"):
        train.resolve_layout(_cfg("trainer.devices=1"))


def test_without_a_launcher_auto_nodes_is_one(monkeypatch):
    for key in [*TORCHRUN_ENV, *SRUN_ENV]:
        monkeypatch.delenv(key, raising=False)
    assert train.resolve_layout(_cfg("trainer.devices=auto", "trainer.num_nodes=auto")) == ("auto", 1)


def test_srun_gets_lightnings_slurm_environment_with_requeue_on_sigusr1(monkeypatch, tmp_path):
    for key, value in SRUN_ENV.items():
        monkeypatch.setenv(key, value)
    cfg = _cfg(*tiny_run_args(tmp_path, **{"trainer.devices": "auto", "trainer.num_nodes": "auto",
                                           "logger": "none"}))
    assert train.resolve_layout(cfg) == (1, 1)
    trainer = train.build_trainer(cfg)
    env = trainer._accelerator_connector.cluster_environment  # what Lightning's signal handling consults
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal == signal.SIGUSR1
    cfg.trainer.slurm_auto_requeue = False
    assert not train.build_plugins(cfg)[1].auto_requeue


def test_sbatch_script_parses_and_asks_for_the_requeue_signal():
    script = REPO / "tools" / "slurm" / "train.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "#SBATCH --signal=SIGUSR1@90" in text and "#SBATCH --requeue" in text
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    assert "python train.py" in srun and "resume=auto" in srun and "trainer.num_nodes=auto" in srun


def test_fsdp_wraps_each_transformer_block_and_is_allowed_on_cpu(tmp_path):
    from models.dinov2 import Block
    from models.tracktention import Tracktention

    cfg = _cfg("experiment=depth_anything_tiny_synthetic", "model.init_from=null")
    strategy = train.fsdp_strategy(cfg)
    assert isinstance(strategy, FSDPStrategy) and strategy._state_dict_type == "full"
    policy = strategy.kwargs["auto_wrap_policy"]
    assert {Block, Tracktention} <= set(policy._module_classes)
    model = train.build_module(cfg).model
    wrapped = [m for m in model.modules() if isinstance(m, tuple(policy._module_classes))]
    assert len(wrapped) == cfg.model.arch.depth + len(model.tracktention.layers)
    # CPU is allowed (tests/test_fsdp.py trains on it), and clipping goes through the root FSDP module.
    strategy = train.resolve_strategy(_cfg("trainer.strategy=fsdp", "trainer.accelerator=cpu"), 1, 1)
    assert isinstance(strategy, TracklightFSDPStrategy)
    assert isinstance(strategy.precision_plugin, FSDPNormClipping)
    with pytest.raises(ConfigError, match="cannot import 'models.dinov2.NoSuchBlock'"):
        train.fsdp_strategy(_cfg("trainer.fsdp.wrap=[models.dinov2.NoSuchBlock]"))


@pytest.mark.slow
def test_two_process_torchrun_run_on_cpu(tmp_path):
    args = tiny_run_args(tmp_path, **{"trainer.accelerator": "cpu", "trainer.devices": "auto",
                                      "trainer.num_nodes": "auto", "trainer.max_steps": 3, "data.batch_size": 2,
                                      "trainer.val_check_interval": 1000, "checkpoint.monitor": "null"})
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    for key in ("TORCHELASTIC_RUN_ID", *SRUN_ENV):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "train.py"), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert re.search(r"world size 2 = 2 device\(s\) x 1 node\(s\) \(DDPStrategy, TorchElasticEnvironment", out)
    assert "global batch 4 = data.batch_size 2 x 2 device(s) x 1 node(s) x accumulate_grad_batches 1" in out
    assert re.search(r"over 2 rank\(s\) x 1 worker\(s\)", out) and "not scaled" in out
    assert out.count("start-up:") == 1  # rank 0 only
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 3 and state["tracklight"]["world_size"] == 2
