"""What a checkpoint was made from (config, code version, data shards), and the resume check built on it.

Resuming continues the same training, so a checkpoint is refused when
  - `model.family` differs,
  - the model's parameters do not line up with the checkpoint's (a name is missing or extra, or a
    shape differs): a different architecture, or
  - `model.freeze` differs (the optimiser state holds exactly the trainable parameters).
Everything else may change: trainer.* (max_steps, devices, num_nodes, ...), data.* (shard
locations, workers, batch size), checkpoint.*, logging. Changed keys are listed as a warning;
optimiser and scheduler state still come from the checkpoint, so e.g. a new `model.lr` does not
change a restored schedule. To load only weights into a new architecture use `model.init_from`.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from models.checkpoint_io import CheckpointReadError, describe_key_mismatch, load_checkpoint_file

log = logging.getLogger(__name__)

METADATA_KEY = "tracklight"
REPO = Path(__file__).resolve().parents[1]


class IncompatibleCheckpointError(ValueError):
    """A checkpoint that the current configuration cannot continue."""


def code_version(repo: Path = REPO) -> dict[str, Any]:
    """{"git_commit": hash or None, "git_dirty": bool or None} of the code being run."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


class RunMetadata(L.Callback):
    """Adds `checkpoint["tracklight"]`: the resolved config, the code version and the data shards."""

    def __init__(self, cfg: DictConfig) -> None:
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.code = code_version()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        dm = trainer.datamodule
        checkpoint[METADATA_KEY] = {
            "config": self.config,
            "code": self.code,
            "data": {"train_shards": list(getattr(dm, "train_urls", [])), "val_shards": list(getattr(dm, "val_urls", []))},
            "world_size": trainer.world_size,
        }


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def recorded_config(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The run config stored in a checkpoint: ours, else the module's saved hyper-parameters (older files)."""
    if METADATA_KEY in checkpoint:
        return checkpoint[METADATA_KEY]["config"]
    hparams = checkpoint.get("hyper_parameters")
    return hparams if isinstance(hparams, dict) and "model" in hparams else None


def _parameter_mismatches(state: dict[str, torch.Tensor], module: L.LightningModule) -> str:
    return describe_key_mismatch({k: tuple(v.shape) for k, v in module.state_dict().items()},
                                 {k: tuple(v.shape) for k, v in state.items()})


def read_checkpoint(path: str | Path, key: str) -> dict[str, Any]:
    """The checkpoint at `path` (tensors memory-mapped) if it is a training checkpoint; else
    IncompatibleCheckpointError naming the config `key` and the file, in one line."""
    try:
        checkpoint = load_checkpoint_file(path, mmap=True)
    except CheckpointReadError as err:
        raise IncompatibleCheckpointError(f"{key}={str(path)!r}: {err}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise IncompatibleCheckpointError(
            f"{key}={str(path)!r} is not a training checkpoint (.ckpt) of this framework (no 'state_dict'); "
            "published weights load with model.init_from")
    return checkpoint


def check_checkpoint_matches_model(module: L.LightningModule, path: str | Path, key: str = "ckpt") -> None:
    """Raise IncompatibleCheckpointError listing every mismatched parameter unless `path` fits `module`."""
    mismatches = _parameter_mismatches(read_checkpoint(path, key)["state_dict"], module)
    if mismatches:
        raise IncompatibleCheckpointError(f"{key}={str(path)!r} does not match this model "
                                          f"({type(module).__name__} from the current config):\n{mismatches}")


def check_resume_compatible(cfg: DictConfig, module: L.LightningModule, path: str | Path) -> None:
    """Raise IncompatibleCheckpointError if `path` cannot continue this run; warn about changed keys."""
    checkpoint = read_checkpoint(path, "resume")
    now = _flatten(OmegaConf.to_container(cfg, resolve=True))
    recorded = recorded_config(checkpoint)
    then = _flatten(recorded) if recorded is not None else {}
    if recorded is None:
        log.warning("%s records no config: only its parameters are checked against this model", path)

    reasons = []
    if "model.family" in then and then["model.family"] != now.get("model.family"):
        reasons.append(f"model.family: {then['model.family']!r} in the checkpoint vs {now.get('model.family')!r} now")
    if recorded is not None and then.get("model.freeze") != now.get("model.freeze"):
        reasons.append(f"model.freeze: {then.get('model.freeze')} in the checkpoint vs {now.get('model.freeze')} now")
    mismatches = "" if reasons else _parameter_mismatches(checkpoint["state_dict"], module)
    if mismatches:
        model_diff = [f"{k}: {then.get(k)!r} -> {now.get(k)!r}" for k in sorted(then.keys() | now.keys())
                      if k.startswith("model.") and then.get(k) != now.get(k)] if recorded is not None else []
        reasons.append("the model's parameters do not match the checkpoint's"
                       + (f" (changed model keys: {', '.join(model_diff)})" if model_diff else ""))
    if reasons:
        raise IncompatibleCheckpointError(
            f"cannot resume from {path}: " + "; ".join(reasons)
            + ". Resuming needs the same model.family, architecture and model.freeze; start a new run_dir "
            "(and load weights with model.init_from where the family supports it) to change them"
            + (f"\n{mismatches}" if mismatches else ""))

    changed = [f"{k}: {then[k]!r} -> {now[k]!r}" for k in sorted(then.keys() & now.keys()) if then[k] != now[k]]
    if changed:
        log.warning("resuming from %s with changed settings (optimiser and scheduler state come from the "
                    "checkpoint): %s", path, "; ".join(changed))
    code, running = checkpoint.get(METADATA_KEY, {}).get("code"), code_version()
    if code and code != running:
        log.warning("%s was written by code %s (dirty: %s); this is %s (dirty: %s)", path, code["git_commit"],
                    code["git_dirty"], running["git_commit"], running["git_dirty"])
