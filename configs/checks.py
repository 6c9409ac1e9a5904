"""Value rules the typed schema cannot express (ranges, choices), checked on the resolved config
at start-up, before anything is built: one line naming the key, what it accepts and the value given.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, NamedTuple, get_args

from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.strategies import StrategyRegistry
from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration problem reported to the user before anything starts."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any) -> bool:
    return _is_int(value) and value >= 1


def _devices(value: Any) -> bool:
    if value == "auto" or positive_int(value):
        return True
    ids = list(value) if isinstance(value, ListConfig) else None
    return bool(ids) and all(_is_int(i) and i >= 0 for i in ids) and len(set(ids)) == len(ids)


class Rule(NamedTuple):
    accepts: Callable[[Any], bool]
    expected: str  # in words
    choices: Callable[[], list[str]] | None = None  # for choice keys: the accepted values


def precisions() -> list[str]:
    """`trainer.precision` values: auto (ours) and what Lightning's Trainer accepts."""
    return ["auto", *get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS)]


def strategies() -> list[str]:
    """`trainer.strategy` values: auto (ours) and Lightning's registered strategies."""
    return ["auto", *StrategyRegistry.available_strategies()]


def accelerators() -> list[str]:
    return ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]


def choice(choices: Callable[[], list[str]]) -> Rule:
    return Rule(lambda value: str(value) in choices(), "", choices)


POSITIVE = Rule(positive_int, "a positive integer")

# Lightning would fail on these only once training runs (or, for val_check_interval=0, divide by
# zero after the first step).
RULES: dict[str, Rule] = {
    "trainer.devices": Rule(_devices, "a positive integer, a list of device ids (e.g. [0,1]) or auto"),
    "trainer.num_nodes": Rule(lambda v: v == "auto" or positive_int(v), "a positive integer or auto"),
    "trainer.accelerator": choice(accelerators),
    "trainer.precision": choice(precisions),
    "trainer.strategy": choice(strategies),
    "trainer.max_steps": POSITIVE,
    "trainer.val_check_interval": Rule(positive_int, "a positive integer (training batches between validations)"),
    "trainer.log_every_n_steps": POSITIVE,
    "trainer.accumulate_grad_batches": POSITIVE,
    "trainer.limit_val_batches": Rule(lambda v: v is None or v > 0, "a positive number (fraction <= 1.0 or batch count) or null"),
    "trainer.gradient_clip_val": Rule(lambda v: v is None or v >= 0, "a non-negative number or null"),
    "checkpoint.every_n_steps": POSITIVE,
    "checkpoint.mode": choice(lambda: ["min", "max"]),
    "checkpoint.save_top_k": Rule(lambda v: v >= -1, "an integer >= -1 (-1 keeps every checkpoint)"),
    "logger": choice(lambda: ["wandb", "csv", "tensorboard", "none"]),
}


def _expected(rule: Rule, value: Any) -> str:
    if rule.choices is None:
        return rule.expected
    options = rule.choices()
    close = difflib.get_close_matches(str(value), options, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    # Lightning registers each DDP start method again with _find_unused_parameters_{true,false}.
    shown = [o for o in options if "_find_unused_parameters_" not in o]
    more = " (and their _find_unused_parameters_true/false variants)" if len(shown) < len(options) else ""
    return f"one of {', '.join(shown)}{more}{hint}"


def _shown(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value).replace("'", "")


def check_values(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value in RULES that is out of range; unset (???) keys are skipped."""
    for key, rule in RULES.items():
        parent_key, _, name = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if OmegaConf.is_missing(parent, name):
            continue
        value = parent[name]
        if not rule.accepts(value):
            raise ConfigError(f"bad value for config key {key!r}: expected {_expected(rule, value)}, got {_shown(value)}")
