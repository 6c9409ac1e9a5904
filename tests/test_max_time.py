"""`trainer.max_time` stops training on the clock and validates at the stop; a malformed value is a config error."""

from __future__ import annotations

import pytest

import train
from configs.loader import ConfigError
from tests.tiny_run import tiny_run_args
from train import load_config


def test_malformed_max_time_is_a_config_error(tmp_path):
    _, cfg = load_config(tiny_run_args(tmp_path) + ["trainer.max_time=4h"])
    with pytest.raises(ConfigError, match=r"trainer.max_time='4h': expected DD:HH:MM:SS"):
        train.build_trainer(cfg)


def test_max_time_stops_training_and_validates_at_the_stop(tmp_path):
    trainer = train.run(tiny_run_args(tmp_path) + ["trainer.max_time=00:00:00:01", "trainer.max_steps=10000",
                                                   "trainer.val_check_interval=10000"])
    assert 0 < trainer.global_step < 10000
    assert "val/aj" in trainer.callback_metrics  # the only validation is the one at the stop
