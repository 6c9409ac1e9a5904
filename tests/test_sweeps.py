"""W&B sweep files: each one parses, its values type-check, and a drawn trial trains for a step.

The command line is built the way `wandb agent` builds it (wandb's own `create_sweep_command_args`
formats the values: `key=value` with Python's str(), so floats as `0.00031622776601683794` or
`1e-05`, booleans as `True`, lists as `[2, 5, 8, 11]`), then `train.py` runs on it with only a
few non-swept keys appended to make the model tiny and the data local.
"""

from __future__ import annotations

import ast
import math
import pickle
import random
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

import train
from configs.loader import override_args
from datamodules.synthetic import SyntheticConfig, generate_clip
from models.cotracker3 import CoTrackerThree
from tests.conftest import write_clips
from tests.tiny_run import TINY_MODEL
from train import load_config

REPO = Path(__file__).resolve().parents[1]
SWEEP_DIR = REPO / "configs" / "sweep"
SWEEPS = sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))
AGENT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]

SMALL_DATA = ["data.crop_hw=null", "data.val_clip_len=8", "data.num_workers=0", "data.shuffle_buffer=2",
              "data.batch_size=1"]
# Per sweep: overrides that make one step cheap. Never a swept key (checked below).
SHRINK = {
    "cotracker3": [a for a in TINY_MODEL if not a.startswith("model.train_iters")] + SMALL_DATA
    + ["data.val_num_queries=8"],
    "chrono": ["model.arch.embed_dim=48", "model.arch.depth=3", "model.arch.num_heads=3", "model.arch.patch_size=4",
               "model.arch.backbone_img_size=32", "model.arch.feature_grid=8", "model.arch.adapter_channels=16",
               "model.arch.adapter_heads=2", "model.arch.query_chunk_size=64", "data.val_num_queries=8"] + SMALL_DATA,
    "taptrv2": ["model.arch.d_model=32", "model.arch.nheads=4", "model.arch.enc_layers=1", "model.arch.dec_layers=1",
                "model.arch.dim_feedforward=64", "model.arch.backbone_depths=[1,1,1,1]", "model.arch.backbone_width=8",
                "model.arch.norm_groups=8", "model.arch.model_resolution=[32,32]", "data.val_num_queries=8"] + SMALL_DATA,
    "video_depth": ["model.arch.embed_dim=32", "model.arch.num_heads=2", "model.arch.features=16",
                    "model.arch.out_channels=[8,16,32,32]", "model.arch.img_size=28", "model.arch.input_size=28",
                    "model.arch.grad_checkpointing=false", "model.arch.tracktention.num_heads=2",
                    "model.arch.tracktention.inner_dim=32", "model.arch.tracktention.frame_chunk=null"] + SMALL_DATA,
    "colorization": ["data.synthetic.num_train_clips=4", "data.synthetic.num_val_clips=1", "data.synthetic.height=32",
                     "data.synthetic.width=32", "data.synthetic.num_frames=8", "data.synthetic.num_tracks=32",
                     "data.synthetic.clips_per_shard=1"] + SMALL_DATA,
}
# The pseudo-label sweep's teachers are the tiny CoTracker3 (the experiment's are full size), read from
# $COTRACKER3_CKPT_DIR like the student's start (official_weights below).
TINY_ARCH = "{" + ", ".join(a[len("model.arch."):].replace("=", ": ") for a in TINY_MODEL if a.startswith("model.arch.")) + "}"
SHRINK["cotracker3_pseudolabel"] = TINY_MODEL + ["data.crop_hw=null", "data.num_workers=0", "data.shuffle_buffer=2"] + [
    "model.teachers=[" + ", ".join(
        f"{{checkpoint: '${{oc.env:COTRACKER3_CKPT_DIR}}/baseline_{v}.pth', kind: cotracker3_{v}, weight: 1, "
        f"arch: {TINY_ARCH}}}" for v in ("online", "offline")) + "]"]
ONE_STEP = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true", "trainer.max_steps=1",
            "trainer.val_check_interval=1", "trainer.limit_val_batches=1", "trainer.accumulate_grad_batches=1",
            "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "checkpoint.every_n_steps=1"]
# Weight files a sweep reads from an environment variable: which sub-module of the family's tiny model to save.
WEIGHTS = {
    "DINOV2_VITS14": lambda module: module.model.dino,
    "RESNET50_IMAGENET": lambda module: module.model.backbone[0].body,
    "DEPTH_ANYTHING_V2_VITS": lambda module: module.model.image,
    "COLORIZER_STAGE1_CKPT": lambda module: module.model.image,
}
# Test clips hold the longest swept clip and twice the most swept tracks (about 80 % of a synthetic
# clip's tracks are eligible queries; a clip with too few is skipped).
LONGEST_SWEPT_CLIP, TEST_CLIP_TRACKS = 64, 2048


def load_sweep(name: str) -> dict:
    return yaml.safe_load((SWEEP_DIR / f"{name}.yaml").read_text())


def swept_keys(sweep: dict) -> set[str]:
    return {k for k, spec in sweep["parameters"].items() if "value" not in spec}


def draw(parameters: dict, rng: random.Random) -> dict[str, dict]:
    """One trial's values in the agent's `command["args"]` form: {key: {"value": v}}."""
    out = {}
    for key, spec in parameters.items():
        dist = spec.get("distribution")
        if "value" in spec:
            value = spec["value"]
        elif "values" in spec:
            value = rng.choice(spec["values"])
        elif dist == "log_uniform_values":
            value = math.exp(rng.uniform(math.log(spec["min"]), math.log(spec["max"])))
        elif dist == "uniform":
            value = rng.uniform(spec["min"], spec["max"])
        elif dist == "int_uniform":
            value = rng.randint(spec["min"], spec["max"])
        else:
            raise AssertionError(f"{key}: distribution {dist!r} is not sampled by this test")
        out[key] = {"value": value}
    return out


def agent_argv(sweep: dict, args: dict[str, dict]) -> list[str]:
    """The agent's command list (wandb_agent.Agent._command_run): macros expanded, values formatted by wandb."""
    macros = create_sweep_command_args({"args": args})
    macros.update(env=["/usr/bin/env"], interpreter=["python"], program=[sweep["program"]])
    argv: list[str] = []
    for item in sweep["command"]:
        argv += macros[item[2:-1]] if item.startswith("${") and item.endswith("}") else [item]
    return argv


def test_there_is_a_sweep_for_every_family():
    from lightning_modules.registry import load_families

    families = {load_config(["experiment=" + load_sweep(s)["parameters"]["experiment"]["value"]])[1].model.family
                for s in SWEEPS}
    assert families == set(load_families())


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_file_is_well_formed_and_every_listed_value_type_checks(name, monkeypatch, tmp_path):
    sweep = load_sweep(name)
    assert sweep["program"] == "train.py" and sweep["command"] == AGENT_COMMAND
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"]["goal"] in ("minimize", "maximize") and sweep["metric"]["name"].startswith("val/")
    assert not {a.split("=")[0] for a in SHRINK[name]} & swept_keys(sweep)
    for var in WEIGHTS:
        monkeypatch.setenv(var, str(tmp_path / "w.pth"))
    monkeypatch.setenv("VIDEO_DEPTH_SHARDS", str(tmp_path))
    base = draw(sweep["parameters"], random.Random(0))
    for key, spec in sweep["parameters"].items():
        assert None not in spec.get("values", []), f"{key}: the agent would pass the string 'None'"
        for value in spec.get("values", []) + [spec[b] for b in ("min", "max") if b in spec]:
            argv = agent_argv(sweep, {**base, key: {"value": value}})
            _, cfg = load_config(argv[3:])
            assert config_value(cfg, key) == value, (key, value)


def config_value(cfg: DictConfig, key: str) -> object:
    node = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(node) if isinstance(node, (DictConfig, ListConfig)) else node


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> Path:
    """Shards laid out as $KUBRIC_SHARDS / $VIDEO_DEPTH_SHARDS / $REAL_VIDEO_SHARDS expect, big enough for
    every swept value; a TAP-Vid DAVIS pickle of one clip; tiny "official" CoTracker3 weight files."""
    root = tmp_path_factory.mktemp("sweep_data")
    clips = SyntheticConfig(height=32, width=32, num_frames=LONGEST_SWEPT_CLIP, num_tracks=TEST_CLIP_TRACKS)
    write_clips(root / "train", range(2), per_shard=1, cfg=clips)
    write_clips(root / "val", range(100, 101), per_shard=1, cfg=clips)
    clip = generate_clip(100, SyntheticConfig(height=32, width=32, num_frames=8, num_tracks=16))
    davis = {"clip": {"video": clip["frames"], "points": (clip["tracks"] / 32).transpose(1, 0, 2),
                      "occluded": ~clip["visible"].T}}
    (root / "tapvid_davis.pkl").write_bytes(pickle.dumps(davis))
    arch = {k[len("model.arch."):]: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in TINY_MODEL)
            if k.startswith("model.arch.")}
    for variant in ("online", "offline"):
        torch.save(CoTrackerThree(variant=variant, **arch).state_dict(), root / f"baseline_{variant}.pth")
    return root


def _weights_for(sweep: dict, argv: list[str], tmp_path: Path, monkeypatch) -> None:
    """Write each weight file the sweep reads from the environment, from the same tiny architecture."""
    for key, spec in sweep["parameters"].items():
        value = str(spec.get("value", ""))
        var = value[len("${oc.env:"):-1] if value.startswith("${oc.env:") else None
        if var in WEIGHTS:
            _, cfg = load_config(override_args(argv, [f"{key}=null"]))
            path = tmp_path / f"{var.lower()}.pth"
            torch.save(WEIGHTS[var](train.build_module(cfg)).state_dict(), path)
            monkeypatch.setenv(var, str(path))


@pytest.mark.parametrize("name", SWEEPS)
def test_a_drawn_trial_trains_a_step_from_the_agent_command_line(name, local_data, tmp_path, monkeypatch):
    sweep = load_sweep(name)
    params = draw(sweep["parameters"], random.Random(name))
    argv = agent_argv(sweep, params)
    assert argv[:3] == ["/usr/bin/env", "python", "train.py"]
    monkeypatch.setenv("KUBRIC_SHARDS", str(local_data))
    monkeypatch.setenv("VIDEO_DEPTH_SHARDS", str(local_data))
    monkeypatch.setenv("REAL_VIDEO_SHARDS", str(local_data))
    monkeypatch.setenv("TAPVID_DAVIS", str(local_data / "tapvid_davis.pkl"))
    monkeypatch.setenv("COTRACKER3_CKPT_DIR", str(local_data))
    # What `wandb agent` puts in the environment of each trial.
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep123")
    monkeypatch.setenv("WANDB_RUN_ID", "trial7")
    extra = SHRINK[name] + ONE_STEP + [f"run_dir={tmp_path / 'run'}"]
    if name != "cotracker3_pseudolabel":  # real-video shards: its data kind has no synthetic section
        extra.append(f"data.synthetic.cache_dir={tmp_path / 'cache'}")
    _weights_for(sweep, override_args(argv[3:], extra), tmp_path, monkeypatch)

    trainer = train.run(override_args(argv[3:], extra))

    assert trainer.global_step == 1
    assert sweep["metric"]["name"] in trainer.callback_metrics  # the optimised key is really logged
    cfg = OmegaConf.create(dict(trainer.lightning_module.hparams))  # the run's config, as train.py saved it
    for key in swept_keys(sweep):  # every rank builds from argv, so these are the values in use
        assert config_value(cfg, key) == params[key]["value"], key
    run_dir = tmp_path / "run" / "trial7"  # one directory per trial, named by the agent's run id
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert cfg.name == f"{params['name']['value']}-trial7"


def test_no_code_reads_the_wandb_run_config():
    """Sweep values reach the model only through argv; W&B's run config is written, never read."""
    offenders = []
    for path in REPO.rglob("*.py"):
        if any(part in ("tests", "runs", ".cache") or part.startswith(".") for part in path.relative_to(REPO).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "config":
                owner = node.value
                if (isinstance(owner, ast.Name) and owner.id == "wandb") or (
                        isinstance(owner, ast.Attribute) and owner.attr in ("experiment", "run")):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders
