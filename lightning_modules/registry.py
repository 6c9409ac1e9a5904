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
