"""Strict loading of official checkpoint files with messages that name every bad key."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

# Container keys under which training scripts nest the bare state_dict.
_WRAPPER_KEYS = ("state_dict", "model", "module", "ema_state_dict")


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose keys or shapes do not match the module it is loaded into."""


def read_state_dict(path: str | os.PathLike, wrapper_keys: tuple[str, ...] = _WRAPPER_KEYS) -> dict[str, torch.Tensor]:
    """Read a state_dict from a local file (never from the network), unwrapping common containers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt / non-tensor pickles
        raise CheckpointMismatchError(f"could not read {path} as a weights-only torch checkpoint: {err}") from err
    for key in wrapper_keys:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatchError(f"{path} does not hold a state_dict of tensors")
    return dict(obj)


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keep only keys under `prefix`, with the prefix removed (e.g. 'module.' from DDP checkpoints)."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def describe_mismatch(module: nn.Module, state_dict: Mapping[str, torch.Tensor], limit: int = 40) -> str:
    """Human-readable list of missing, unexpected and wrongly shaped keys ('' when they match)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    parts = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            shown = "\n    ".join(items[:limit])
            more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
            parts.append(f"  {len(items)} {title}:\n    {shown}{more}")
    return "\n".join(parts)


def load_strict(
    module: nn.Module,
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    adapt: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None,
    what: str = "checkpoint",
) -> None:
    """Load `source` into `module` strictly; `adapt` may remap keys or resize buffers first.

    Raises CheckpointMismatchError naming every missing, unexpected or mis-shaped key.
    """
    state_dict = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    if adapt is not None:
        state_dict = adapt(state_dict, module)
    problems = describe_mismatch(module, state_dict)
    if problems:
        name = source if isinstance(source, (str, os.PathLike)) else "state_dict"
        raise CheckpointMismatchError(
            f"{what} {name} does not match {type(module).__name__}:\n{problems}"
        )
    module.load_state_dict(state_dict, strict=True)
