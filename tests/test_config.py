import pytest
from omegaconf import OmegaConf

from configs.loader import ConfigError
from train import load_config


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


# --------------------------------------------------------------------------- composition order

import itertools  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from configs.loader import parse_command_line  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The case: an experiment pinning the offline model, the online preset, a checkpoint and data path.
SWAPPED_PRESET = ("experiment=cotracker3_tapvid_davis", "model=cotracker3_online", "model.init_from=P", "data.path=X")
PRESET_THEN_KEYS = ("data=tapvid_davis", "data.path=X", "model=cotracker3_offline", "model.eval_iters=3")


@pytest.mark.parametrize("argv", list(itertools.permutations(SWAPPED_PRESET)), ids=lambda a: "|".join(a))
def test_presets_experiment_and_keys_compose_in_the_documented_order_whatever_their_order(argv):
    _, cfg = load_config(["validate", *argv])
    assert cfg.model.arch.variant == "online" and cfg.model.arch.window_len == 16  # the chosen preset's architecture
    assert cfg.model.init_from == "P" and cfg.data.path == "X"  # the command line's keys, never dropped
    assert cfg.model.eval_support_grid == 5  # the experiment's key the online preset does not set


@pytest.mark.parametrize("argv", list(itertools.permutations(PRESET_THEN_KEYS)), ids=lambda a: "|".join(a))
def test_a_preset_and_its_dotted_keys_compose_whatever_their_order(argv):
    _, cfg = load_config(["validate", *argv])
    assert cfg.data.kind == "tapvid" and cfg.data.path == "X" and cfg.data.dataset == "davis"
    assert cfg.model.arch.variant == "offline" and cfg.model.eval_iters == 3


@pytest.mark.parametrize("first, second", [("trainer.max_steps=3", "trainer.max_steps=4"),
                                           ("model=cotracker3_online", "model=cotracker3_offline"),
                                           ("experiment=cotracker3_kubric", "experiment=chrono_tiny_synthetic"),
                                           ("trainer={max_steps:3}", "trainer.max_steps=3")])
@pytest.mark.parametrize("swap", [False, True], ids=["in-order", "swapped"])
def test_the_same_key_twice_with_different_values_is_an_error_naming_both(first, second, swap):
    argv = [second, first] if swap else [first, second]
    with pytest.raises(ConfigError) as err:
        load_config(argv)
    assert repr(first) in str(err.value) and repr(second) in str(err.value)


def test_the_same_key_twice_with_the_same_value_is_fine():
    _, cfg = load_config(["trainer.max_steps=3", "--trainer.max_steps=3", "model=cotracker3_online",
                          "model=cotracker3_online"])
    assert cfg.trainer.max_steps == 3 and cfg.model.arch.window_len == 16


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """The shipped configs plus an experiment that pins the offline model and sets architecture keys."""
    root = tmp_path / "configs"
    shutil.copytree(REPO / "configs", root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (root / "experiment" / "pins_offline.yaml").write_text(
        "defaults:\n  model: cotracker3_offline\nmodel:\n  arch:\n    window_len: 60\n  eval_support_grid: 5\n")
    return root


@pytest.mark.parametrize("order", [0, 1], ids=["experiment-first", "preset-first"])
def test_an_experiment_cannot_silently_change_the_architecture_of_a_swapped_in_preset(config_dir, order):
    argv = ["experiment=pins_offline", "model=cotracker3_online"][:: 1 - 2 * order]
    with pytest.raises(ConfigError, match=r"model\.arch\.window_len=60 there, 16 in model=cotracker3_online\); "
                                          r"choose on the command line, e\.g\. model\.arch\.window_len=16"):
        load_config(argv, config_dir)
    # Given on the command line, the key is the user's choice: the online model is built as asked.
    _, cfg = load_config(argv + ["model.arch.window_len=16"], config_dir)
    assert cfg.model.arch.variant == "online" and cfg.model.arch.window_len == 16 and cfg.model.eval_support_grid == 5
    # The preset the experiment was written for takes its keys as before.
    _, cfg = load_config(["experiment=pins_offline"], config_dir)
    assert cfg.model.arch.variant == "offline" and cfg.model.arch.window_len == 60


def test_keys_an_experiment_applies_over_a_swapped_in_preset_are_logged(caplog):
    with caplog.at_level("INFO", logger="configs.loader"):
        load_config(["validate", *SWAPPED_PRESET])
    assert "experiment=cotracker3_tapvid_davis applies model.eval_support_grid=5 on top of model=cotracker3_online" \
        in caplog.text


def test_commands_flags_and_help_are_recognised():
    assert parse_command_line(["validate", "-h"]).command == "help"
    assert parse_command_line(["--help"]).command == parse_command_line(["help"]).command == "help"
    assert parse_command_line(["print_config", "a.b=1"]).command == "print_config"
    assert parse_command_line(["validate", "--cfg", "a.b=1"]).command == "print_config"
    cli = parse_command_line(["test", "model=x", "experiment=y", "a.b=1", "--c=None"])
    assert (cli.command, cli.experiment, cli.presets, cli.overrides) == ("test", "y", {"model": "x"},
                                                                          {"a.b": "a.b=1", "c": "c=null"})


# --------------------------------------------------------------------------- bad values, one line each


@pytest.mark.parametrize(
    "arg, message",
    [
        ("trainer.max_steps=abc", "bad value for config key 'trainer.max_steps': expected an integer, got 'abc'"),
        ("trainer.max_steps=-5", "bad value for config key 'trainer.max_steps': expected a positive integer, got -5"),
        ("trainer.devices=abc", "'trainer.devices': expected a positive integer, a list of device ids (e.g. [0,1]) "
                                "or auto, got 'abc'"),
        ("trainer.devices=0", "'trainer.devices': expected a positive integer, a list of device ids (e.g. [0,1]) "
                              "or auto, got 0"),
        ("trainer.precision=64x", "'trainer.precision': expected one of auto, "),
        ("trainer.strategy=bogus", "'trainer.strategy': expected one of auto, ddp, "),
        ("trainer.strategy=dpp", "(did you mean 'ddp'?), got 'dpp'"),
        ("trainer.val_check_interval=0", "'trainer.val_check_interval': expected a positive integer"),
        ("trainer.gradient_clip_val=x", "'trainer.gradient_clip_val': expected a number or null, got 'x'"),
        ("trainer.deterministic=maybe", "'trainer.deterministic': expected true or false, got 'maybe'"),
        ("data.crop_hw=5", "'data.crop_hw': expected a list, e.g. [a,b], got 5"),
        ("trainer=3", "'trainer': expected a section of keys (accelerator, devices, num_nodes, ...)"),
        ("checkpoint.mode=maximum", "'checkpoint.mode': expected one of min, max (did you mean 'max'?), got 'maximum'"),
        ("trainer..x=1", "argument 'trainer..x=1': key 'trainer..x' has an empty part between dots"),
        ("=3", "argument '=3' has no key before '='"),
        ("model=null", "model= takes a preset name from configs/model/"),
    ],
)
def test_a_bad_value_gets_one_line_naming_key_expectation_and_value(arg, message):
    with pytest.raises(ConfigError) as err:
        load_config([arg])
    text = str(err.value)
    assert message in text and "\n" not in text
    assert not any(word in text for word in ("full_key", "reference_type", "object_type"))


def test_good_values_of_the_checked_keys_pass():
    _, cfg = load_config(["trainer.devices=[0,1]", "trainer.num_nodes=auto", "trainer.precision=bf16-mixed",
                          "trainer.strategy=fsdp", "trainer.accelerator=cpu", "checkpoint.save_top_k=-1"])
    assert list(cfg.trainer.devices) == [0, 1] and cfg.trainer.precision == "bf16-mixed"


def test_cli_errors_exit_2_with_one_line_and_help_exits_0():
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled"}
    bad = subprocess.run([sys.executable, str(REPO / "train.py"), "trainer.val_check_interval=0"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=240)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("config error: bad value for config key "
                                                          "'trainer.val_check_interval'")
    shown = subprocess.run([sys.executable, str(REPO / "train.py"), "-h"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=240)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: python train.py")


# --------------------------------------------------------------------------- --help and print_config


def test_help_lists_what_exists_from_the_config_folders_and_registries(capsys):
    import train
    section_classes = train.section_classes()

    assert train.run(["--help"]) is None
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "print_config", "--cfg"):
        assert command in out
    for folder in ("model", "data", "experiment"):
        for path in (REPO / "configs" / folder).glob("*.yaml"):
            assert path.stem in out, path
    for name, cls in [*section_classes["families"].items(), *section_classes["data_kinds"].items()]:
        assert name in out and cls.__name__ in out
    assert "composition" in out and "configs/schema.py" in out


@pytest.mark.parametrize("argv", [["print_config", "trainer.max_steps=7"], ["validate", "--cfg", "trainer.max_steps=7"]])
def test_print_config_prints_the_resolved_yaml_and_builds_nothing(argv, capsys, monkeypatch):
    import train

    def refuse(*_a, **_k):
        raise AssertionError("print_config must not build anything")

    for builder in ("build_module", "build_datamodule", "build_trainer", "save_resolved_config"):
        monkeypatch.setattr(train, builder, refuse)
    train.run(argv)
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.trainer.max_steps == 7 and printed.run_dir == "runs/default"  # interpolations resolved
    assert printed.model.family == "cotracker3" and printed.data.kind == "tracking"


def test_print_config_shows_unset_keys_instead_of_stopping(capsys):
    import train

    train.run(["print_config", "experiment=cotracker3_tapvid_davis"])
    printed = OmegaConf.create(capsys.readouterr().out)
    assert OmegaConf.is_missing(printed.data, "path") and printed.run_dir == "runs/cotracker3_tapvid_davis"


def test_override_args_replaces_keys_for_tools_that_extend_a_command_line():
    from configs.loader import override_args

    args = override_args(["trainer.max_steps=3", "model=cotracker3_online", "--seed=1"], ["trainer.max_steps=5", "seed=2"])
    assert args == ["model=cotracker3_online", "trainer.max_steps=5", "seed=2"]
    assert load_config(args)[1].trainer.max_steps == 5


def test_an_experiment_for_one_family_refuses_a_preset_of_another():
    with pytest.raises(ConfigError, match=r"experiment=cotracker3_tapvid_davis sets model\.\* keys for a "
                                          r"model\.family=cotracker3 model \(model=cotracker3_offline\), but "
                                          r"model=chrono_vits is model\.family=chrono"):
        load_config(["validate", "experiment=cotracker3_tapvid_davis", "model=chrono_vits", "data.path=X"])


# --------------------------------------------------------------------------- who owns composition

LIGHT_CHECK = """
import sys
import configs.loader
ours = ("lightning_modules", "datamodules", "models", "callbacks", "metrics")
assert not [m for m in sys.modules if m.split(".")[0] in ours], "configs.loader imported the tree"
import train
for experiment in sorted(p.stem for p in configs.loader.CONFIG_DIR.glob("experiment/*.yaml")):
    train.load_config(["print_config", "experiment=" + experiment])
heavy = sorted(m for m in ("av", "wandb") if m in sys.modules)
assert not heavy, f"composing a config imported {heavy}"
print("light")
"""


def test_loading_a_config_imports_neither_pyav_nor_wandb():
    """The loader imports nothing of the tree; composing every experiment through the registries
    (as train.py does) imports no PyAV and no W&B."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", LIGHT_CHECK], cwd=repo, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and done.stdout.strip() == "light", done.stderr[-2000:]


def test_the_loader_composes_with_the_section_classes_it_is_given():
    from configs.loader import load_config as compose_with
    from datamodules.tracking import TrackingDataConfig
    from lightning_modules.cotracker3 import CoTracker3ModelConfig

    _, cfg = compose_with([], families={"cotracker3": CoTracker3ModelConfig}, data_kinds={"tracking": TrackingDataConfig})
    assert cfg.model.family == "cotracker3" and cfg.data.kind == "tracking"
    with pytest.raises(ConfigError, match=r"unknown model\.family 'chrono'.*choose one of \['cotracker3'\]"):
        compose_with(["experiment=chrono_tiny_synthetic"], families={"cotracker3": CoTracker3ModelConfig},
                     data_kinds={"tracking": TrackingDataConfig})
