"""Compose the run configuration: schema <- train.yaml <- presets <- experiment <- command line.

    python train.py [fit|validate|test|predict|print_config] [experiment=NAME] [model=NAME] [data=NAME] key=value ...

The layers merge in that order whatever the order of the arguments: `model=NAME` / `data=NAME`
load `configs/model/NAME.yaml` / `configs/data/NAME.yaml` (a YAML's `defaults: {model: NAME,
data: NAME}` picks them too; the command line wins), `experiment=NAME` is applied on top of the
presets, and every dotted `key=value` on top of everything (so `data=tapvid_davis data.path=X` and
`data.path=X data=tapvid_davis` are the same). The same key given twice on the command
line with different values is an error naming both arguments. An experiment's own `model.*` /
`data.*` keys were written for the presets it pins: when the command line picks another preset
and that preset sets one of those keys to a different value, start-up stops and asks for the key
on the command line (otherwise the experiment would silently change the chosen preset, e.g. its
architecture); keys the chosen preset does not set are applied and logged. A preset of another
model family (or data kind) than the experiment's is refused.

Unknown keys, wrong types and invalid values stop start-up with one line naming the key, what it
expects and the value given (configs/checks.py holds the value rules).

The entry point owns the composition: it passes the `model` / `data` section dataclasses of the
registered families and data kinds (`families`, `data_kinds`: name -> dataclass), so loading a
config imports nothing of the model, data or callback code.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationToMissingValueError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)
from omegaconf.nodes import BooleanNode, EnumNode, FloatNode, IntegerNode, StringNode

from configs.checks import ConfigError, check_values
from configs.schema import RootConfig

__all__ = ["COMMANDS", "CONFIG_DIR", "CommandLine", "ConfigError", "compose", "load_config", "override_args",
           "parse_command_line", "typed_config", "typed_schema"]

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent
COMMANDS = ("fit", "validate", "test", "predict", "print_config")
GROUPS = ("model", "data")
HELP_FLAGS = ("-h", "--help")
PRINT_FLAGS = ("--cfg", "--print_config")  # Hydra's and LightningCLI's spelling of print_config


@dataclass
class CommandLine:
    """A parsed train.py command line: the command, the preset choices and the dotted overrides."""

    command: str = "fit"
    experiment: str | None = None
    presets: dict[str, str] = field(default_factory=dict)  # group -> preset name
    overrides: dict[str, str] = field(default_factory=dict)  # dotted key -> its `key=value` argument

    def sets(self, key: str) -> bool:
        """True when a command-line override sets `key` or a section containing it."""
        return any(key == k or key.startswith(k + ".") for k in self.overrides)


# --------------------------------------------------------------------------- command line


def _split_key_value(arg: str) -> tuple[str, str]:
    """`key=value` -> (key, normalised argument); one-line errors for malformed arguments."""
    # Tolerate --key=value from other launchers; the W&B agent writes a null sweep value as Python's `None`.
    arg = arg.lstrip("-")
    if "=" not in arg:
        raise ConfigError(f"argument {arg!r} is not of the form key=value (see python train.py --help)")
    key, value = arg.split("=", 1)
    if not key:
        raise ConfigError(f"argument {arg!r} has no key before '='; expected key=value, e.g. trainer.max_steps=100")
    if any(not part.strip() for part in key.split(".")):
        raise ConfigError(f"argument {arg!r}: key {key!r} has an empty part between dots; expected e.g. trainer.max_steps")
    if value == "None":
        value = "null"
    return key, f"{key}={value}"


def override_args(args: list[str], overrides: list[str]) -> list[str]:
    """`args` (key=value) with the keys that `overrides` sets taken from `overrides`: for tools and tests
    that extend a command line, since train.py refuses one key given twice with different values."""
    replaced = {_split_key_value(a)[0] for a in overrides}
    return [a for a in args if _split_key_value(a)[0] not in replaced] + list(overrides)


def _parse_value(arg: str) -> Any:
    """The YAML value of one `key=value` argument, unresolved (for comparing two arguments)."""
    return OmegaConf.to_container(OmegaConf.from_dotlist([arg]), resolve=False)


def _command(argv: list[str]) -> tuple[str, list[str]]:
    if argv and "=" not in argv[0] and not argv[0].startswith("-"):
        if argv[0] not in COMMANDS:
            close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown command {argv[0]!r}{hint}; expected one of {', '.join(COMMANDS)} "
                              "or key=value (see python train.py --help)")
        return argv[0], argv[1:]
    return "fit", argv


def parse_command_line(argv: list[str]) -> CommandLine:
    """Split argv into command, presets and overrides; refuse conflicting repeats. `-h` -> command 'help'."""
    if any(a in HELP_FLAGS for a in argv) or argv[:1] == ["help"]:
        return CommandLine(command="help")
    show = any(a in PRINT_FLAGS for a in argv)
    command, rest = _command([a for a in argv if a not in PRINT_FLAGS])
    cli = CommandLine(command="print_config" if show else command)
    chosen: dict[str, str] = {}  # experiment / model / data -> the argument that chose it
    for raw in rest:
        key, arg = _split_key_value(raw)
        if key == "experiment" or key in GROUPS:
            _add_preset(cli, chosen, key, arg)
        else:
            _add_override(cli, key, arg)
    return cli


def _add_preset(cli: CommandLine, chosen: dict[str, str], key: str, arg: str) -> None:
    name = _parse_value(arg)[key]
    if not isinstance(name, (str, int)) or name == "":
        folder = "experiment" if key == "experiment" else key
        raise ConfigError(f"{arg!r}: {key}= takes a preset name from configs/{folder}/ (set single keys as {key}.KEY=VALUE)")
    if key in chosen and chosen[key] != arg:
        raise ConfigError(f"{key} is chosen twice on the command line: {chosen[key]!r} and {arg!r}; give it once")
    chosen[key] = arg
    if key == "experiment":
        cli.experiment = str(name)
    else:
        cli.presets[key] = str(name)


def _add_override(cli: CommandLine, key: str, arg: str) -> None:
    for other, other_arg in cli.overrides.items():
        if other == key and _parse_value(other_arg) != _parse_value(arg):
            raise ConfigError(f"{key} is set twice on the command line with different values: {other_arg!r} and "
                              f"{arg!r}; give it once")
        if key.startswith(other + ".") or other.startswith(key + "."):
            raise ConfigError(f"{other_arg!r} and {arg!r} both set {max(key, other, key=len)}; give one of them")
    cli.overrides.setdefault(key, arg)


# --------------------------------------------------------------------------- YAML layers


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        options = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"config file {path} not found; available in {path.parent}: {options}")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return cfg


def _pop_defaults(cfg: DictConfig, path: Path) -> dict[str, str]:
    defaults = cfg.pop("defaults", None) or {}
    if not isinstance(defaults, DictConfig) or any(k not in GROUPS for k in defaults):
        raise ConfigError(f"{path}: 'defaults' must map some of {GROUPS} to preset names, got {defaults}")
    return {k: str(v) for k, v in defaults.items()}


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of a config or container, unresolved; lists are values."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node} if prefix else {}


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    return str(value).replace("'", "")


DISCRIMINATORS = {"model": "family", "data": "kind"}  # the key that picks a group's schema


def _check_experiment_over_presets(cli: CommandLine, experiment: DictConfig, written_for: dict[str, str],
                                   presets: dict[str, DictConfig], config_dir: Path) -> None:
    """Keys of the experiment vs a preset the command line swapped in (module docstring)."""
    for group, chosen in cli.presets.items():
        if chosen == written_for.get(group) or group not in experiment:
            continue
        key = DISCRIMINATORS[group]
        pinned = written_for.get(group)
        was = _read_yaml(config_dir / group / f"{pinned}.yaml").get(key) if pinned else None
        now = presets[group].get(key)
        if was is not None and now != was and not cli.sets(f"{group}.{key}"):
            raise ConfigError(f"experiment={cli.experiment} sets {group}.* keys for a {group}.{key}={was} "
                              f"{group} ({group}={pinned}), but {group}={chosen} is {group}.{key}={now}; pick a "
                              f"{group} preset of {key} {was}, or an experiment written for {now}")
        theirs, ours = leaves(experiment[group], f"{group}."), leaves(presets[group], f"{group}.")
        clashes = [k for k in theirs if k in ours and theirs[k] != ours[k] and not cli.sets(k)]
        if clashes:
            shown = "; ".join(f"{k}={_show(theirs[k])} there, {_show(ours[k])} in {group}={chosen}" for k in clashes)
            raise ConfigError(
                f"experiment={cli.experiment} was written for {group}={written_for.get(group)} and sets keys that "
                f"{group}={chosen} sets differently ({shown}); choose on the command line, e.g. "
                + " ".join(f"{k}={_show(ours[k])}" for k in clashes))
        applied = [f"{k}={_show(v)}" for k, v in theirs.items() if k not in ours and not cli.sets(k)]
        if applied:
            log.info("experiment=%s applies %s on top of %s=%s", cli.experiment, ", ".join(applied), group, chosen)


def _raw_config(cli: CommandLine, config_dir: Path) -> DictConfig:
    base_path = config_dir / "train.yaml"
    base = _read_yaml(base_path)
    presets = _pop_defaults(base, base_path)
    experiment = None
    if cli.experiment is not None:
        exp_path = config_dir / "experiment" / f"{cli.experiment}.yaml"
        experiment = _read_yaml(exp_path)
        presets.update(_pop_defaults(experiment, exp_path))
    written_for = dict(presets)
    presets.update(cli.presets)
    preset_layers = {g: _read_yaml(config_dir / g / f"{name}.yaml") for g, name in presets.items()}
    if experiment is not None:
        _check_experiment_over_presets(cli, experiment, written_for, preset_layers, config_dir)
    layers = [base, *(OmegaConf.create({g: layer}) for g, layer in preset_layers.items())]
    layers += [experiment] if experiment is not None else []
    raw = OmegaConf.merge(*layers, OmegaConf.from_dotlist(list(cli.overrides.values())))
    raw.experiment = cli.experiment
    return raw


# --------------------------------------------------------------------------- typed merge and errors


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys.extend(_valid_keys(node._get_node(k), full + "."))
    return keys


def _schema_node(schema: DictConfig, key: str) -> tuple[str, Any]:
    """(deepest existing key on the path to `key`, its schema node)."""
    node, found = schema, []
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            break
        node = node._get_node(part)
        found.append(part)
    return ".".join(found), node


def expected_type(node: Any) -> str:
    """What a schema node accepts, in words."""
    if isinstance(node, DictConfig):
        return f"a section of keys ({', '.join(list(node.keys())[:3])}, ...), set one by one as KEY.SUBKEY=VALUE"
    if isinstance(node, ListConfig):
        return "a list, e.g. [a,b]"
    words = {IntegerNode: "an integer", FloatNode: "a number", BooleanNode: "true or false", StringNode: "a string"}
    text = next((w for cls, w in words.items() if isinstance(node, cls)), "a value")
    if isinstance(node, EnumNode):
        text = "one of " + ", ".join(m.name for m in node._metadata.ref_type)
    return text + (" or null" if node._metadata.optional else "")


def _leaf_error(err: OmegaConfBaseException, key: str, raw: DictConfig, schema: DictConfig) -> ConfigError:
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        unknown = getattr(err, "full_key", None) or key
        close = difflib.get_close_matches(unknown, _valid_keys(schema), n=1, cutoff=0.5)
        hint = f"; closest valid key: {close[0]!r}" if close else ""
        return ConfigError(f"unknown config key {unknown!r}{hint}")
    where, node = _schema_node(schema, key)
    given = OmegaConf.to_container(raw, resolve=False)
    for part in where.split("."):
        given = given[part]
    return ConfigError(f"bad value for config key {where!r}: expected {expected_type(node)}, got {_show(given)}")


def _explain(err: OmegaConfBaseException, schema: DictConfig, raw: DictConfig) -> ConfigError:
    """One line for a failed merge: find the first leaf of `raw` the schema refuses and name it."""
    for key, value in leaves(raw).items():
        single = OmegaConf.create()
        OmegaConf.update(single, key, value, force_add=True)
        try:
            OmegaConf.merge(schema, single)
        except OmegaConfBaseException as leaf_err:
            return _leaf_error(leaf_err, key, raw, schema)
    full_key = getattr(err, "full_key", None) or ""
    if isinstance(err, (InterpolationToMissingValueError, MissingMandatoryValue)):
        return ConfigError(f"required config key {full_key!r} is not set (pass {full_key}=...)")
    message = (getattr(err, "msg", None) or str(err)).splitlines()[0]
    return ConfigError(f"config error at {full_key!r}: {message}")


def _mark_unresolvable_as_missing(cfg: DictConfig) -> None:
    """Values that resolve to a missing value (`${oc.env:VAR,???}` without VAR) become `???` themselves."""
    for key in leaves(cfg):
        try:
            OmegaConf.select(cfg, key, throw_on_missing=True)
        except (InterpolationToMissingValueError, MissingMandatoryValue):
            OmegaConf.update(cfg, key, "???")


def _typed_section(raw: DictConfig | Mapping, section: str, key: str, registry: Mapping[str, type]) -> DictConfig:
    chosen = OmegaConf.select(OmegaConf.create(raw) if not isinstance(raw, DictConfig) else raw, f"{section}.{key}",
                              throw_on_resolution_failure=False)
    if chosen is None:
        raise ConfigError(f"{section}.{key} is not set; choose one of {sorted(registry)}")
    if chosen not in registry:
        close = difflib.get_close_matches(str(chosen), list(registry), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown {section}.{key} {chosen!r}{hint}; choose one of {sorted(registry)}")
    return OmegaConf.structured(registry[chosen])


def typed_schema(raw: DictConfig | Mapping, families: Mapping[str, type], data_kinds: Mapping[str, type]
                 ) -> DictConfig:
    """The root schema with the `model` / `data` dataclasses that `raw`'s model.family / data.kind choose."""
    schema = OmegaConf.structured(RootConfig)
    schema.model = _typed_section(raw, "model", "family", families)
    schema.data = _typed_section(raw, "data", "kind", data_kinds)
    OmegaConf.set_struct(schema, True)
    return schema


def typed_config(saved: Mapping, families: Mapping[str, type], data_kinds: Mapping[str, type]) -> DictConfig:
    """A run's saved config (a checkpoint's) merged over the typed schema: keys added since get their defaults."""
    return OmegaConf.merge(typed_schema(saved, families, data_kinds), saved)


def compose(cli: CommandLine, families: Mapping[str, type], data_kinds: Mapping[str, type],
            config_dir: Path = CONFIG_DIR, require_complete: bool = True) -> DictConfig:
    """The resolved, type-checked config of a parsed command line.

    `require_complete=False` (print_config) leaves unset mandatory keys as `???` instead of stopping.
    """
    raw = _raw_config(cli, config_dir)
    if not isinstance(raw.get("model"), DictConfig) or not isinstance(raw.get("data"), DictConfig):
        raise ConfigError("model and data must be sections; choose presets with model=NAME / data=NAME")
    schema = typed_schema(raw, families, data_kinds)
    try:
        cfg = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as err:
        raise _explain(err, schema, raw) from None
    _mark_unresolvable_as_missing(cfg)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise _explain(err, schema, raw) from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing and require_complete:
        raise ConfigError(f"required config key {missing[0]!r} is not set (pass {missing[0]}=...)" if len(missing) == 1
                          else f"required config keys not set: {', '.join(missing)} (pass KEY=... for each)")
    check_values(cfg)
    return cfg


def load_config(argv: list[str], families: Mapping[str, type], data_kinds: Mapping[str, type],
                config_dir: Path = CONFIG_DIR) -> tuple[str, DictConfig]:
    """Return (command, resolved config) for a train.py command line (`families` / `data_kinds`: module docstring)."""
    cli = parse_command_line(argv)
    if cli.command == "help":
        raise ConfigError("--help has no config; print configs.usage.usage_text() instead")
    return cli.command, compose(cli, families, data_kinds, config_dir, require_complete=cli.command != "print_config")
