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


class CheckpointReadError(CheckpointMismatchError):
    """A file that does not load as a weights-only torch checkpoint (missing, truncated, damaged, foreign)."""


def load_checkpoint_file(path: str | os.PathLike, mmap: bool = False) -> object:
    """`torch.load(path, weights_only=True)` onto the CPU; CheckpointReadError says in one line what is wrong.

    `mmap=True` maps tensors lazily (cheap for reading metadata of large checkpoints).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointReadError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises several types for truncated, damaged or non-tensor files
        if mmap:  # the mmap path reports any damaged file as "mmap can only be used with files saved with ..."
            return load_checkpoint_file(path, mmap=False)
        lines = str(err).strip().splitlines()
        raise CheckpointReadError(f"{path} is not a readable checkpoint (truncated, damaged, or not a weights-only "
                                  f"torch file): {lines[0] if lines else type(err).__name__}") from None


def read_state_dict(path: str | os.PathLike, wrapper_keys: tuple[str, ...] = _WRAPPER_KEYS) -> dict[str, torch.Tensor]:
    """Read a state_dict from a local file (never from the network), unwrapping common containers."""
    obj = load_checkpoint_file(path)
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


# Longer key lists are printed one line per name prefix (their first two components), still in full.
GROUP_OVER = 12


def describe_mismatch(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str:
    """Every missing, unexpected and wrongly shaped key, human-readable ('' when they match)."""
    expected = module.state_dict()
    return describe_key_mismatch({k: tuple(v.shape) for k, v in expected.items()},
                                 {k: tuple(v.shape) for k, v in state_dict.items()})


def describe_key_mismatch(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]) -> str:
    """`describe_mismatch` on name -> shape maps: the model's (`expected`) and the checkpoint's (`found`)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k}: checkpoint {found[k]} vs model {shape}" for k, shape in expected.items()
              if k in found and tuple(found[k]) != tuple(shape)]
    parts = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            parts.append(f"  {len(items)} {title}:\n{list_keys(items)}")
    return "\n".join(parts)


def list_keys(items: list[str]) -> str:
    """All items, one per line, or (more than GROUP_OVER) one line per key prefix."""
    if len(items) <= GROUP_OVER:
        return "\n".join(f"    {item}" for item in items)
    groups: dict[str, list[str]] = {}
    for item in items:
        name = item.split(":")[0].split(" ")[0]
        parts = name.split(".")
        groups.setdefault(".".join(parts[:2]) if len(parts) > 2 else ".".join(parts[:-1]) or name, []).append(item)
    return "\n".join(f"    {prefix}.* ({len(members)}): {'; '.join(members)}" for prefix, members in groups.items())


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
