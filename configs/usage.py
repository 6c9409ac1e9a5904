"""`python train.py --help`: usage, composition order, and what exists, read from the config
folders and the family / data-kind registries (nothing here lists them by hand)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from omegaconf import OmegaConf

from configs.loader import COMMANDS, CONFIG_DIR, GROUPS

COMMAND_HELP = {
    "fit": "train (the default); resume=auto|PATH continues a run",
    "validate": "evaluate ckpt=PATH (or model.init_from=PATH) on the validation data; outputs and\n"
                + " " * 16 + "logs go to <run_dir>/eval/validate-step<N>/ (the training run's files stay as they are)",
    "test": "the same on the test data (<run_dir>/eval/test-step<N>/)",
    "predict": "write the model's outputs for the validation data as .npz files (<run_dir>/eval/predict-step<N>/)",
    "print_config": "print the composed config (YAML) and exit; --cfg does the same with any command",
}


def _source_file(cls: type) -> str:
    return cls.__module__.replace(".", "/") + ".py"


def _presets(folder: Path, key: str | None = None) -> list[str]:
    """Preset names in `folder`, each with the value of its `key` (e.g. the model family) if it sets one."""
    out = []
    for path in sorted(folder.glob("*.yaml")):
        value = OmegaConf.load(path).get(key) if key else None
        out.append(f"{path.stem} ({value})" if value else path.stem)
    return out


def _experiments(folder: Path) -> list[str]:
    out = []
    for path in sorted(folder.glob("*.yaml")):
        pins = OmegaConf.load(path).get("defaults") or {}
        chosen = ", ".join(f"{g}={pins[g]}" for g in GROUPS if g in pins)
        out.append(f"{path.stem} ({chosen})" if chosen else path.stem)
    return out


def _wrap(items: list[str], indent: str = "    ", width: int = 100) -> str:
    lines, line = [], indent
    for item in items:
        piece = item + ", "
        if len(line) + len(piece) > width and line.strip():
            lines.append(line.rstrip())
            line = indent
        line += piece
    lines.append(line.rstrip().rstrip(","))
    return "\n".join(lines)


def usage_text(families: Mapping[str, type], data_kinds: Mapping[str, type], config_dir: Path = CONFIG_DIR) -> str:
    """train.py's --help; `families` / `data_kinds`: name -> section dataclass, as configs.loader takes them."""
    commands = "\n".join(f"  {c:<13} {COMMAND_HELP.get(c, '')}" for c in COMMANDS)
    width = max(13, *map(len, families), *map(len, data_kinds))
    families = "\n".join(f"  {name:<{width}} model.* keys: {cls.__name__} in {_source_file(cls)}"
                         for name, cls in sorted(families.items()))
    kinds = "\n".join(f"  {name:<{width}} data.* keys: {cls.__name__} in {_source_file(cls)}"
                      for name, cls in sorted(data_kinds.items()))
    return f"""usage: python train.py [COMMAND] [experiment=NAME] [model=NAME] [data=NAME] [KEY=VALUE ...]
       python train.py -h | --help | help

commands:
{commands}

composition (later layers win, whatever the order of the arguments):
  1. the typed schema: configs/schema.py (run, trainer.*, checkpoint.*, wandb.*) and the dataclass
     of the chosen model family and data kind (below): every key, its type and default
  2. configs/train.yaml
  3. presets: model=NAME loads configs/model/NAME.yaml, data=NAME configs/data/NAME.yaml
     (an experiment chooses its own unless the command line does)
  4. experiment=NAME: configs/experiment/NAME.yaml; if you swap one of its presets and that preset
     sets a key the experiment also sets, differently, start-up asks you to give the key explicitly
  5. KEY=VALUE arguments (dotted keys, e.g. trainer.max_steps=500 model.lr=1e-4); the same key
     twice with different values is an error
  `python train.py print_config [ARGS]` shows the result: every key with its value.

model families (model.family):
{families}

data kinds (data.kind):
{kinds}

model presets (model=NAME, family in brackets):
{_wrap(_presets(config_dir / "model", "family"))}

data presets (data=NAME, kind in brackets):
{_wrap(_presets(config_dir / "data", "kind"))}

experiments (experiment=NAME, the presets they choose in brackets):
{_wrap(_experiments(config_dir / "experiment"))}

examples:
  python train.py                                    # the tiny tracker on synthetic data (CPU is fine)
  python train.py experiment=cotracker3_kubric trainer.devices=8 data.train_shards=/data/kubric/train
  python train.py validate ckpt=runs/NAME/checkpoints/last.ckpt name=NAME
  python train.py print_config experiment=chrono_vits_kubric
README.md explains every command; unknown keys and bad values stop start-up with the closest valid key."""
