"""Model families: name -> LightningModule class, with their config dataclass in the schema.

A family registers itself with `@register_family(name, ConfigDataclass)` in its own module
under `lightning_modules/`; `load_families()` imports every module of the package, so adding
a family never means editing a central list.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from configs.schema import register_model_family

FAMILY_MODULES: dict[str, type] = {}


def register_family(name: str, config_cls: type) -> Callable[[type], type]:
    """Class decorator: make `model.family=name` build this LightningModule from `config_cls`."""

    def decorate(module_cls: type) -> type:
        FAMILY_MODULES[name] = module_cls
        register_model_family(name, config_cls)
        return module_cls

    return decorate


def load_families() -> dict[str, type]:
    import lightning_modules

    for info in pkgutil.iter_modules(lightning_modules.__path__):
        importlib.import_module(f"lightning_modules.{info.name}")
    return FAMILY_MODULES
