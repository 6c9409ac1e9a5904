import pytest
from omegaconf import OmegaConf

from configs.loader import ConfigError, load_config


def test_defaults_compose_the_cpu_tracker_on_synthetic_data():
    command, cfg = load_config([])
    assert command == "fit"
    assert cfg.model.family == "cotracker3" and cfg.data.kind == "tracking" and cfg.data.train_shards is None
    assert cfg.run_dir == "runs/default"


def test_experiment_then_overrides_win_in_order():
    command, cfg = load_config(["validate", "experiment=cotracker3_kubric", "data.num_queries=7", "name=x"])
    assert command == "validate" and cfg.experiment == "cotracker3_kubric"
    assert cfg.model.arch.window_len == 16 and cfg.data.clip_len == 64  # from the experiment + its groups
    assert cfg.data.num_queries == 7 and cfg.run_dir == "runs/x"  # argv wins; interpolation resolved


def test_group_selection_on_the_command_line():
    _, cfg = load_config(["model=cotracker3_offline"])
    assert cfg.model.arch.variant == "offline" and cfg.model.arch.window_len == 60


@pytest.mark.parametrize("argv", [["model=cotracker3_offline", "model.lr=0.5"], ["model.lr=0.5", "model=cotracker3_offline"]])
def test_a_group_choice_and_keys_of_that_group_both_apply(argv):
    _, cfg = load_config(argv)
    assert cfg.model.arch.window_len == 60 and cfg.model.lr == 0.5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["trainer.max_step=3"], "closest valid key: 'trainer.max_steps'"),
        (["model.arch.latent_dimm=3"], "closest valid key: 'model.arch.latent_dim'"),
        (["data.num_querie=3"], "closest valid key: 'data.num_queries'"),
        (["trainer.max_steps=abc"], "bad value for config key 'trainer.max_steps'"),
        (["fitt"], "did you mean 'fit'"),
        (["maxsteps"], "unknown command .maxsteps.; expected one of"),
        (["experiment=nope"], "not found"),
        (["model.family=cotracker4"], "did you mean 'cotracker3'"),
        (["validate", "experiment=cotracker3_tapvid_davis"], "required config key 'data.path' is not set"),
    ],
)
def test_bad_configs_fail_at_start_with_a_clear_message(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(argv)


def test_sweep_style_arguments_are_accepted():
    # W&B agents pass `--key=value` with ${args}; ${args_no_hyphens} passes key=value.
    _, cfg = load_config(["--model.lr=0.002", "trainer.max_steps=5"])
    assert cfg.model.lr == 0.002 and cfg.trainer.max_steps == 5
    # The agent formats a null sweep value with Python's str(): `None`.
    _, cfg = load_config(["trainer.limit_val_batches=None"])
    assert cfg.trainer.limit_val_batches is None


def test_every_shipped_experiment_composes():
    from pathlib import Path

    for path in sorted(Path("configs/experiment").glob("*.yaml")):
        extra = ["data.path=/tmp/x"] if "tapvid" in path.stem else []
        _, cfg = load_config([f"experiment={path.stem}", *extra])
        assert OmegaConf.to_container(cfg, resolve=True)
