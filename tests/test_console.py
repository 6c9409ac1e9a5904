"""What a run prints: the per-family results table, and only the library notices worth reading."""

from __future__ import annotations

import logging
import warnings

import pytest

from callbacks.console import UNINFORMATIVE_WARNINGS, format_results, quiet_uninformative_output
from lightning_modules.colorization import ColorizationModule
from lightning_modules.point_tracking import PointTrackingModule
from lightning_modules.video_depth import VideoDepthModule


def test_tracker_table_is_in_percent_with_the_zero_motion_baseline():
    metrics = {"val/aj": 0.2054, "val/zero_motion_aj": 0.075, "val/delta_avg": 0.317, "val/zero_motion_delta_avg": 0.137,
               "val/oa": 0.782, "val/zero_motion_oa": 0.848, "val/pts_within_1": 0.05}
    lines = format_results(metrics, PointTrackingModule, "validate results").splitlines()
    assert lines[1] == "validate results" and lines[2].split() == ["model", "zero", "motion"]
    assert lines[3].split() == ["AJ", "(%)", "20.5", "7.5"]
    assert lines[4].split() == ["δ_avg", "(%)", "31.7", "13.7"]
    assert lines[5].split() == ["OA", "(%)", "78.2", "84.8"]
    assert lines[6].strip() == "all metrics:" and lines[7].split() == ["val/aj", "0.2054"]
    assert len(lines) == 7 + len(metrics)


def test_each_family_shows_its_own_metrics_and_stage():
    depth = format_results({"test/abs_rel": 0.2136, "test/delta1": 0.711, "test/track_tae": 3.91}, VideoDepthModule,
                           "test results", stage="test").splitlines()
    assert depth[2].split() == ["model"]  # no baseline column: the depth metrics have none
    assert depth[3].split() == ["AbsRel", "↓", "0.2136"] and depth[5].split() == ["track-TAE", "↓", "3.91"]
    assert not any(line.strip().startswith("TAE") for line in depth)  # not logged (no camera poses): not shown
    color = format_results({"val/cdc": 0.0419, "val/cdc_gt": 0.0481, "val/psnr": 21.41, "val/ssim": 0.862,
                            "val/colorfulness": 28.6, "val/colorfulness_gt": 32.4}, ColorizationModule, "t").splitlines()
    assert "ground truth" in color[2] and color[3].split() == ["CDC", "↓", "0.0419", "0.0481"]
    assert color[6].split() == ["colourfulness", "28.6", "32.4"]


def test_a_module_without_headline_metrics_lists_everything():
    lines = format_results({"val/x": 1.5}, object(), "t").splitlines()
    assert lines[1:] == ["t", "  val/x      1.5000"]


@pytest.fixture
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        quiet_uninformative_output()
        yield
    for name in ("lightning.pytorch.utilities.rank_zero",):
        logging.getLogger(name).filters.clear()


@pytest.mark.parametrize("message, category, module", [(m.replace("\\", ""), c, mod.replace("\\", ""))
                                                       for m, c, mod in UNINFORMATIVE_WARNINGS])
def test_uninformative_warnings_are_silenced_only_where_they_come_from(quiet, message, category, module):
    def emit(cat: type[Warning], mod: str) -> list[warnings.WarningMessage]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.warn_explicit(message + " (details)", cat, "x.py", 1, module=mod)
        return seen

    assert emit(category, module) == []
    assert len(emit(category, "tracklight.somewhere_else")) == 1  # same words from elsewhere: shown
    other = DeprecationWarning if category is not DeprecationWarning else RuntimeWarning
    assert len(emit(other, module)) == 1  # another kind of warning from the same module: shown


def test_the_litlogger_advert_is_dropped_and_other_lightning_notices_kept(quiet, caplog):
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        logger.info("`Trainer.fit` stopped: `max_steps=4` reached.")
    assert [r.getMessage() for r in caplog.records] == ["`Trainer.fit` stopped: `max_steps=4` reached."]
