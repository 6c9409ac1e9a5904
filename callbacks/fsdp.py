"""`trainer.strategy=fsdp`: Lightning's FSDP (FSDP1) with gradient clipping by norm, also on CPU.

Used by train.py; CPU processes over gloo make FSDP testable without GPUs (tests/test_fsdp.py).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy


class FSDPNormClipping(FSDPPrecision):
    """FSDPPrecision that clips by the global gradient norm, through the root FSDP module as FSDP requires.

    Lightning's raises "gradient_clip_algorithm='norm' is currently not supported" because it has no handle
    on the root module; TracklightFSDPStrategy hands it one.
    """

    root: torch.nn.Module | None = None

    def clip_grad_by_norm(self, optimizer: torch.optim.Optimizer, clip_val: int | float) -> None:
        self.root.clip_grad_norm_(clip_val)


class TracklightFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy (FSDP1) with gradient clipping, also on CPU processes over gloo.

    torch's FSDP1 runs on a CPU device when it is named explicitly, but Lightning 2.6 (a) refuses
    `type(strategy) is FSDPStrategy` without accelerator=cuda/gpu, (b) passes `device_id=root_device.index`,
    None on CPU, so FSDP raises "FSDP needs a non-CPU accelerator device", and (c) gathers full state dicts
    with offload_to_cpu=True, which on CPU reads freed storage (segfault, or "setStorage: ... out of bounds
    for storage of size 0"). Being a subclass gets past (a); the CPU branches below fix (b) and (c).
    """

    def __init__(self, precision: str, **kwargs: Any) -> None:
        super().__init__(precision_plugin=FSDPNormClipping(precision), **kwargs)

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = super()._setup_model(model) if self.root_device.type != "cpu" else self._wrap_on_cpu(model)
        self.precision_plugin.root = model
        return model

    def _wrap_on_cpu(self, model: torch.nn.Module) -> torch.nn.Module:
        from lightning.pytorch.strategies.fsdp import _setup_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(
            module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy, device_id=self.root_device, **self.kwargs)
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model

    def _cpu_full_state_dict(self) -> Any:
        """Lightning's full-state-dict context (gathered on rank 0), minus the offload that breaks on CPU."""
        from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.state_dict_type(self.model, StateDictType.FULL_STATE_DICT,
                                    FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
                                    FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True))

    def lightning_module_state_dict(self) -> dict[str, Any]:
        if self.root_device.type != "cpu":
            return super().lightning_module_state_dict()
        with self._cpu_full_state_dict():
            return self.model.state_dict()

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if self.root_device.type != "cpu":
            return super().optimizer_state(optimizer)
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import OptimStateKeyType

        optimizer = getattr(optimizer, "_optimizer", optimizer)  # unwrap LightningOptimizer
        with self._cpu_full_state_dict():
            state = FSDP.optim_state_dict(self.model, optimizer)
        # Keyed by parameter id on rank 0, as Lightning's CUDA path saves it.
        if self.global_rank == 0:
            state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
        return state
