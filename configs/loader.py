"""Compose the run configuration: schema <- train.yaml <- groups <- experiment <- argv overrides.

    python train.py [fit|validate|test|predict] [experiment=NAME] [model=NAME] [data=NAME] key=value ...

`model=NAME` / `data=NAME` load `configs/model/NAME.yaml` / `configs/data/NAME.yaml`;
a YAML's `defaults: {model: NAME, data: NAME}` picks them too (argv wins). Unknown keys and
wrong types stop start-up with the closest valid key named.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationToMissingValueError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from configs.schema import DATA_KINDS, MODEL_FAMILIES, RootConfig

CONFIG_DIR = Path(__file__).resolve().parent
COMMANDS = ("fit", "validate", "test", "predict")
GROUPS = ("model", "data")


class ConfigError(ValueError):
    """A configuration problem reported to the user before anything starts."""


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        options = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"config file {path} not found; available in {path.parent}: {options}")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return cfg


def _split_argv(argv: list[str]) -> tuple[str, list[str]]:
    command = "fit"
    if argv and "=" not in argv[0]:
        if argv[0] not in COMMANDS:
            close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown command {argv[0]!r}{hint}; expected one of {COMMANDS} or key=value")
        command, argv = argv[0], argv[1:]
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r} is not of the form key=value")
    # Tolerate --key=value from other launchers; the W&B agent writes a null sweep value as Python's `None`.
    overrides = [a.lstrip("-") for a in argv]
    return command, [a[: -len("None")] + "null" if a.endswith("=None") else a for a in overrides]


def _pop_defaults(cfg: DictConfig) -> dict[str, str]:
    defaults = cfg.pop("defaults", None) or {}
    if not isinstance(defaults, DictConfig) or any(k not in GROUPS for k in defaults):
        raise ConfigError(f"'defaults' must map some of {GROUPS} to preset names, got {defaults}")
    return {k: str(v) for k, v in defaults.items()}


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys.extend(_valid_keys(node._get_node(k), full + "."))
    return keys


def _explain(err: OmegaConfBaseException, schema: DictConfig) -> ConfigError:
    full_key = getattr(err, "full_key", None) or ""
    valid = _valid_keys(schema)
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and full_key:
        close = difflib.get_close_matches(full_key, valid, n=1, cutoff=0.5)
        hint = f"; closest valid key: {close[0]!r}" if close else ""
        return ConfigError(f"unknown config key {full_key!r}{hint}")
    if isinstance(err, (InterpolationToMissingValueError, MissingMandatoryValue)):
        return ConfigError(f"required config key {full_key!r} is not set (pass {full_key}=...)")
    if isinstance(err, ValidationError):
        return ConfigError(f"bad value for config key {full_key!r}: {err.msg if hasattr(err, 'msg') else err}")
    return ConfigError(f"config error at {full_key!r}: {err}")


def _typed_section(raw: DictConfig, section: str, key: str, registry: dict[str, type]) -> DictConfig:
    chosen = OmegaConf.select(raw, f"{section}.{key}")
    if chosen is None:
        raise ConfigError(f"{section}.{key} is not set; choose one of {sorted(registry)}")
    if chosen not in registry:
        close = difflib.get_close_matches(str(chosen), list(registry), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown {section}.{key} {chosen!r}{hint}; choose one of {sorted(registry)}")
    return OmegaConf.structured(registry[chosen])


def load_config(argv: list[str], config_dir: Path = CONFIG_DIR) -> tuple[str, DictConfig]:
    """Return (command, resolved config) for a train.py command line."""
    from datamodules.registry import load_datamodules
    from lightning_modules.registry import load_families

    load_families()
    load_datamodules()
    command, overrides = _split_argv(argv)
    # Group choices (`model=NAME`) are taken out before the dotlist is parsed: parsed together with
    # `model.key=value`, one of the two would silently replace the other.
    picks = [a for a in overrides if a.partition("=")[0] in GROUPS and not a.partition("=")[2].startswith("{")]
    chosen_groups = {a.partition("=")[0]: a.partition("=")[2] for a in picks}
    cli = OmegaConf.from_dotlist([a for a in overrides if a not in picks])
    experiment = cli.pop("experiment", None)

    base = _read_yaml(config_dir / "train.yaml")
    groups = _pop_defaults(base)
    layers = [base]
    if experiment is not None:
        exp_cfg = _read_yaml(config_dir / "experiment" / f"{experiment}.yaml")
        groups.update(_pop_defaults(exp_cfg))
        layers.append(exp_cfg)
    groups.update(chosen_groups)
    group_layers = [OmegaConf.create({g: _read_yaml(config_dir / g / f"{name}.yaml")}) for g, name in groups.items()]
    raw = OmegaConf.merge(*layers[:1], *group_layers, *layers[1:], cli)
    raw.experiment = experiment

    schema = OmegaConf.structured(RootConfig)
    schema.model = _typed_section(raw, "model", "family", MODEL_FAMILIES)
    schema.data = _typed_section(raw, "data", "kind", DATA_KINDS)
    OmegaConf.set_struct(schema, True)
    try:
        cfg = OmegaConf.merge(schema, raw)
        OmegaConf.resolve(cfg)
        missing = sorted(OmegaConf.missing_keys(cfg))
    except OmegaConfBaseException as err:
        raise _explain(err, schema) from None
    if missing:
        raise ConfigError(f"required config keys not set: {missing}")
    return command, cfg
