"""Model families: `model.family` name -> (LightningModule class, model-section config dataclass).

A family registers itself with `@register_family(name, ConfigDataclass)` in its own module
under `lightning_modules/`; `load_families()` imports every module of the package, so adding
a family never means editing a central list. The entry points (train.py, tools/predict.py) hand
the config classes to `configs.loader`, which imports nothing from here.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf


class Family(NamedTuple):
    module: type  # the LightningModule, built from the family's model config alone
    config: type  # the dataclass of the `model` section


FAMILIES: dict[str, Family] = {}

# A family's model config takes what it needs from other sections by interpolation, with the value a
# module built from its model config alone uses (no `data` / `wandb` section there).
QUERY_MODE_FROM_DATA = "${oc.select:data.query_mode,first}"  # TAP-Vid data sets it; training data queries first frames
MEDIA_EVERY_FROM_WANDB = "${oc.select:wandb.log_media_every_n_validations,1}"


def model_config(cfg: Any, config_cls: type) -> DictConfig:
    """A family's `model` section as a typed DictConfig: a composed config's section as it is, else a
    dataclass instance or a dict of keys merged over the family's dataclass (its defaults for the rest)."""
    if isinstance(cfg, DictConfig):
        if "family" not in cfg and "model" in cfg:
            raise TypeError("a family's module is built from its model section (cfg.model), not the root config")
        return cfg
    return OmegaConf.merge(OmegaConf.structured(config_cls), cfg or {})


def register_family(name: str, config_cls: type) -> Callable[[type], type]:
    """Class decorator: make `model.family=name` build this LightningModule from `config_cls`."""

    def decorate(module_cls: type) -> type:
        FAMILIES[name] = Family(module_cls, config_cls)
        return module_cls

    return decorate


def load_families() -> dict[str, Family]:
    import lightning_modules

    for info in pkgutil.iter_modules(lightning_modules.__path__):
        importlib.import_module(f"lightning_modules.{info.name}")
    return FAMILIES


def track_families() -> tuple[str, ...]:
    """The registered point-tracking families (their modules predict tracks for queries)."""
    from lightning_modules.point_tracking import PointTrackingModule

    return tuple(name for name, f in load_families().items() if issubclass(f.module, PointTrackingModule))


class CheckpointConfigError(ValueError):
    """A file that is not a training checkpoint of a wanted family (the message names the file)."""


def saved_config(saved: dict) -> DictConfig:
    """A run's saved config (a checkpoint's), checked against the schema of its model family and data kind."""
    from configs.loader import typed_config
    from datamodules.registry import load_data_kinds

    families, kinds = load_families(), load_data_kinds()
    family, kind = saved["model"].get("family"), saved.get("data", {}).get("kind")
    if family not in families or kind not in kinds:
        raise CheckpointConfigError(f"checkpoint config names model.family={family!r}, data.kind={kind!r}; "
                                    f"known families {sorted(families)}")
    return typed_config(saved, {family: families[family].config}, {kind: kinds[kind].config})


def module_from_checkpoint(path: str | Path, families: tuple[str, ...]) -> tuple[Any, DictConfig]:
    """A family's LightningModule rebuilt from a training ``.ckpt`` (strict, eval mode), and the run's config.

    Weight files the run started from (``init_from``, ``backbone_weights``, the video-depth
    on-the-fly tracker) are not read again: the checkpoint holds the trained weights.
    """
    from models.checkpoint_io import CheckpointReadError, load_checkpoint_file, load_strict

    path = Path(path)
    try:
        ckpt = load_checkpoint_file(path)
    except CheckpointReadError as err:
        raise CheckpointConfigError(str(err)) from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "model" not in hparams or "state_dict" not in ckpt:
        raise CheckpointConfigError(f"{path} is not a training checkpoint of this framework (no saved config); "
                                    "for published weights use --weights")
    cfg = saved_config(hparams)
    family = cfg.model.family
    if family not in families:
        raise CheckpointConfigError(f"{path} holds a {family!r} model; this command needs one of {list(families)}")
    model_cfg = cfg.model.copy()
    for key in ("init_from", "backbone_weights"):
        if key in model_cfg:
            model_cfg[key] = None
    if "tracker" in model_cfg:
        model_cfg.tracker.checkpoint = None
    module = load_families()[family].module(model_cfg)
    load_strict(module, ckpt["state_dict"], what="checkpoint")
    return module.eval(), cfg
