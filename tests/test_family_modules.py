"""Every family's LightningModule builds from its own model config alone; the keys it takes from other
sections (query mode, media cadence, depth range, ...) follow them in a composed config."""

from pathlib import Path

import lightning as L
import pytest
from omegaconf import OmegaConf

from lightning_modules.registry import load_families
from train import load_config

MODEL_PRESETS = Path(__file__).resolve().parents[1] / "configs" / "model"


def smallest_preset(family: str) -> dict:
    """The family's `*_tiny` preset if it has one, else its first preset (keys only, no composition)."""
    presets = sorted(MODEL_PRESETS.glob("*.yaml"), key=lambda p: (not p.stem.endswith("_tiny"), p.stem))
    for path in presets:
        keys = OmegaConf.to_container(OmegaConf.load(path))
        if keys.get("family") == family:
            return keys
    raise AssertionError(f"no configs/model preset of family {family!r}")


@pytest.mark.parametrize("family", sorted(load_families()))
def test_a_family_module_builds_from_its_model_config_alone(family):
    registered = load_families()[family]
    module = registered.module(smallest_preset(family))
    assert isinstance(module, L.LightningModule) and isinstance(module.cfg, type(OmegaConf.create()))
    assert module.cfg.family == family and "data" not in module.cfg and "wandb" not in module.cfg
    assert OmegaConf.get_type(module.cfg) is registered.config
    # What comes from other sections takes its stand-alone value.
    standalone = {"query_mode": "first", "media_every_n_validations": 1, "max_depth": 80.0}
    for key, value in standalone.items():
        if key in module.cfg:
            assert module.cfg[key] == value, key
    callbacks = module.configure_callbacks()
    assert callbacks and all(isinstance(c, L.Callback) for c in callbacks)


def test_a_root_config_is_refused_with_the_section_to_pass():
    _, cfg = load_config([])
    with pytest.raises(TypeError, match=r"model section \(cfg\.model\), not the root config"):
        load_families()["cotracker3"].module(cfg)


def test_keys_from_other_sections_follow_them_in_a_composed_config():
    _, cfg = load_config(["validate", "experiment=cotracker3_tapvid_davis", "data.path=X", "data.query_mode=strided",
                          "wandb.log_media_every_n_validations=3"])
    assert cfg.model.query_mode == "strided" and cfg.model.media_every_n_validations == 3
    _, cfg = load_config(["experiment=depth_anything_tiny_synthetic", "data.max_depth=20"])
    assert cfg.model.max_depth == 20.0
    _, cfg = load_config(["experiment=cotracker3_pseudolabel_tiny_synthetic", "seed=7", "data.num_queries=9"])
    assert (cfg.model.seed, cfg.model.num_queries, cfg.model.data_kind) == (7, 9, "unlabelled_videos")
