"""Data kinds: `data.kind` name -> (DataModule factory, data-section config dataclass).

A DataModule file registers itself with `@register_datamodule(name, ConfigDataclass)` on a
factory `(root_cfg) -> LightningDataModule` (it reads `data` and the run's `seed`); `load_data_kinds()` imports every module of the
package, so adding a data kind never means editing a central list. The entry points hand the
config classes to `configs.loader`, which imports nothing from here.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import NamedTuple

import lightning as L
from omegaconf import DictConfig

Factory = Callable[[DictConfig], L.LightningDataModule]


class DataKind(NamedTuple):
    factory: Factory  # builds the DataModule from the root config
    config: type  # the dataclass of the `data` section


DATA_KINDS: dict[str, DataKind] = {}


def register_datamodule(name: str, config_cls: type) -> Callable[[Factory], Factory]:
    def decorate(factory: Factory) -> Factory:
        DATA_KINDS[name] = DataKind(factory, config_cls)
        return factory

    return decorate


def load_data_kinds() -> dict[str, DataKind]:
    import datamodules

    for info in pkgutil.iter_modules(datamodules.__path__):
        importlib.import_module(f"datamodules.{info.name}")
    return DATA_KINDS
