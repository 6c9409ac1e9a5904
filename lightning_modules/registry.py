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
from typing import NamedTuple


class Family(NamedTuple):
    module: type  # the LightningModule, built from the family's model config alone
    config: type  # the dataclass of the `model` section


FAMILIES: dict[str, Family] = {}


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
