"""Model families: name -> LightningModule class, with their config dataclass in the schema."""

from __future__ import annotations

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
