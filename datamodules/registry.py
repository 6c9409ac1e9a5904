"""Data kinds: `data.kind` name -> (config dataclass, DataModule factory).

A DataModule file registers itself with `@register_datamodule(name, ConfigDataclass)` on a
factory `(root_cfg) -> LightningDataModule`; `load_datamodules()` imports every module of the
package, so adding a data kind never means editing a central list.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import lightning as L
from omegaconf import DictConfig

from configs.schema import register_data_kind

Factory = Callable[[DictConfig], L.LightningDataModule]
DATAMODULE_FACTORIES: dict[str, Factory] = {}


def register_datamodule(name: str, config_cls: type) -> Callable[[Factory], Factory]:
    def decorate(factory: Factory) -> Factory:
        DATAMODULE_FACTORIES[name] = factory
        register_data_kind(name, config_cls)
        return factory

    return decorate


def load_datamodules() -> dict[str, Factory]:
    import datamodules

    for info in pkgutil.iter_modules(datamodules.__path__):
        importlib.import_module(f"datamodules.{info.name}")
    return DATAMODULE_FACTORIES
