"""Training on a mix of shard sets: clips drawn by weight, per-dataset validation metrics
(datamodules/dataset_mix.py)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import train
from configs.loader import ConfigError
from datamodules.clip_sampling import clip_id
from datamodules.dataset_mix import TrainSetConfig, ValSetConfig, check_sets, draw_by_weight
from datamodules.video import VideoDataConfig, VideoDataModule
from tests.conftest import write_clips
from tests.test_video_depth_train import tiny_args


def within_five_sigma(counts: np.ndarray, weights: list[float]) -> bool:
    """Each count within 5 binomial standard deviations of n * p: a correct sampler fails this with
    probability below 1e-5 per set (normal tail 5.7e-7), and the seeds are fixed anyway."""
    n, p = counts.sum(), np.asarray(weights) / sum(weights)
    return bool((np.abs(counts - n * p) <= 5 * np.sqrt(n * p * (1 - p))).all())


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory) -> dict[str, list[str]]:
    """Two datasets of 32x32 depth clips with their own keys: 4 and 2 shards."""
    root = tmp_path_factory.mktemp("mix")
    return {"big": write_clips(root / "big", range(0, 8), per_shard=2, prefix="big"),
            "small": write_clips(root / "small", range(200, 204), per_shard=2, prefix="small")}


def test_draws_follow_the_weights_whatever_the_set_sizes():
    weights = [3.0, 1.0, 0.5]
    draws = draw_by_weight([itertools.count(), itertools.count(), itertools.count()], weights,
                           np.random.default_rng(0))
    counts = np.bincount([i for i, _ in itertools.islice(draws, 20000)], minlength=3)
    assert within_five_sigma(counts, weights)
    assert not within_five_sigma(counts, [1.0, 1.0, 1.0])  # the test can tell other weights apart


def mix_module(two_sets: dict, weights: tuple[float, float], **extra) -> VideoDataModule:
    cfg = OmegaConf.structured(VideoDataConfig(
        train_sets=[TrainSetConfig("big", str(Path(two_sets["big"][0]).parent), weights[0]),
                    TrainSetConfig("small", str(Path(two_sets["small"][0]).parent), weights[1])],
        clip_len=4, num_tracks=8, batch_size=4, num_workers=0, shuffle_buffer=2, batches_per_epoch=50, **extra))
    dm = VideoDataModule(cfg)
    dm.setup("fit")
    return dm


def set_of_each_clip(dm: VideoDataModule, two_sets: dict) -> list[str]:
    ids = {clip_id(f"clip{seed:05d}"): "big" for seed in range(0, 8)}
    ids.update({clip_id(f"clip{seed:05d}"): "small" for seed in range(200, 204)})
    return [ids[int(i)] for batch in dm.train_dataloader() for i in batch["clip_id"]]


def test_the_training_stream_draws_clips_by_weight_reproducibly(two_sets):
    dm = mix_module(two_sets, (1.0, 3.0))  # the small set (2 shards, 4 clips) is drawn three times as often
    torch.manual_seed(7)
    drawn = set_of_each_clip(dm, two_sets)
    counts = np.array([drawn.count("big"), drawn.count("small")])
    assert counts.sum() == 200 and within_five_sigma(counts, [1.0, 3.0])
    assert not within_five_sigma(counts, [1.0, 1.0])
    torch.manual_seed(7)
    assert set_of_each_clip(dm, two_sets) == drawn  # same seed, same clips
    torch.manual_seed(8)
    assert set_of_each_clip(dm, two_sets) != drawn


def test_each_rank_reads_its_own_shards_of_every_set(two_sets):
    dm = mix_module(two_sets, (1.0, 1.0))
    streams = [dm.make_train_stream(rank, 2, 0) for rank in range(2)]
    for name in ("big", "small"):
        urls = dict((n, u) for n, u, _ in dm.train_sets)[name]
        mine = [set(s.set_shards(name, urls, 0, 1)) for s in streams]
        assert not mine[0] & mine[1] and mine[0] | mine[1] == set(urls)
    with pytest.raises(ValueError, match="training set 'small': 2 shards cannot be split over 2 ranks x 2 workers"):
        streams[0].worker_shards(1, 2)  # rank 0's second worker would get no shard of it


@pytest.mark.parametrize("extra, message", [
    ({"train_shards": "x"}, "set data.train_shards or data.train_sets, not both"),
    ({"val_summary": "nope"}, "data.val_summary='nope': use 'mean' or one of the validation sets"),
])
def test_config_errors(two_sets, extra, message):
    with pytest.raises(ConfigError, match=message):
        mix_module(two_sets, (1.0, 1.0), **extra)


def test_set_checks():
    with pytest.raises(ConfigError, match="weights must be positive and finite"):
        check_sets([TrainSetConfig("a", "x", 0.0)], [], "mean")
    with pytest.raises(ConfigError, match="data.val_sets: names must be unique"):
        check_sets([], [ValSetConfig("a", "x"), ValSetConfig("a", "y")], "mean")


def mix_args(tmp_path: Path, two_sets: dict, **extra) -> list[str]:
    sets = (f"[{{name: big, shards: {Path(two_sets['big'][0]).parent}, weight: 3}}, "
            f"{{name: small, shards: {Path(two_sets['small'][0]).parent}, weight: 1}}]")
    return tiny_args(tmp_path, **{"data.train_sets": sets, "model.arch.input_size": 28, "data.clip_len": 4,
                                  "data.val_clip_len": 4, "data.num_tracks": 8, **extra})


def test_fit_logs_validation_metrics_per_dataset_and_their_mean(tmp_path, two_sets):
    trainer = train.run(mix_args(tmp_path, two_sets, **{"trainer.max_steps": 2, "trainer.val_check_interval": 2,
                                                        "trainer.limit_val_batches": 2}))
    m = trainer.callback_metrics
    for name in ("big", "small"):
        assert torch.isfinite(m[f"val/{name}/abs_rel"]) and torch.isfinite(m[f"val/{name}/delta1"])
    assert m["val/abs_rel"] == pytest.approx(float((m["val/big/abs_rel"] + m["val/small/abs_rel"]) / 2), rel=1e-6)
    assert m["val/big/abs_rel"] != m["val/small/abs_rel"]
    assert (tmp_path / "run" / "checkpoints").is_dir()  # checkpoint.monitor val/abs_rel still resolves


def test_validate_on_named_sets_with_one_set_as_the_summary(tmp_path, two_sets):
    results = train.run(["validate", *mix_args(tmp_path, two_sets, **{"data.val_summary": "small",
                                                                     "trainer.limit_val_batches": 2})])
    assert len(results) == 2  # one dataloader per set
    assert results[0]["val/abs_rel"] == results[0]["val/small/abs_rel"] != results[0]["val/big/abs_rel"]


def test_val_sets_combine_with_a_single_training_set(tmp_path, two_sets):
    big, small = (Path(two_sets[name][0]).parent for name in ("big", "small"))
    args = tiny_args(tmp_path, **{"data.train_shards": big, "model.arch.input_size": 28, "data.clip_len": 4,
                                  "data.val_clip_len": 4, "data.num_tracks": 8, "trainer.limit_val_batches": 1,
                                  "data.val_sets": f"[{{name: x, shards: {small}}}, {{name: y, shards: {big}}}]"})
    results = train.run(["validate", *args])
    assert {"val/x/abs_rel", "val/y/abs_rel", "val/abs_rel"} <= set(results[0])


def test_the_video_mix_preset_requires_the_sets():
    from train import load_config

    base = ["experiment=depth_anything_vits_tracktention", "data=video_mix", "model.init_from=w.pth"]
    with pytest.raises(ConfigError, match=r"required config keys not set: data.train_sets\[0\].name, "
                                          r"data.train_sets\[0\].shards"):
        load_config(base)
    _, cfg = load_config([*base, "data.train_sets=[{name: a, shards: /x, weight: 0.4}, {name: b, shards: /y}]"])
    assert [(s.name, s.weight) for s in cfg.data.train_sets] == [("a", 0.4), ("b", 1.0)]
    assert cfg.data.train_shards is None and cfg.model.encoder_lr_scale == 0.1  # the experiment's model
