"""The protocol clip lists and frame ranges of datamodules/depth_benchmarks.py."""

from __future__ import annotations

import pytest

from datamodules.depth_benchmarks import BENCHMARKS, NYU_TEST_INDICES, benchmark_set


def test_depthcrafter_lists() -> None:
    sets = BENCHMARKS["depthcrafter"]
    assert len(sets["sintel"].sequences) == 23 and "temple_3" in sets["sintel"].sequences
    scannet = sets["scannet"]
    assert len(scannet.sequences) == 100 and scannet.sequences[0] == "scene0707_00"
    assert scannet.sequences[-1] == "scene0806_00"
    assert scannet.select(5000) == list(range(0, 270, 3)) and len(scannet.select(5000)) == 90
    assert len(sets["kitti"].sequences) == 13 and sets["kitti"].select(200) == list(range(110))
    assert sets["bonn"].select(400) == list(range(30, 140)) and len(sets["bonn"].sequences) == 5
    assert [s.max_depth for s in (sets["sintel"], scannet, sets["kitti"], sets["bonn"], sets["nyuv2"])] == \
        [70.0, 10.0, 80.0, 10.0, 10.0]


def test_nyu_test_split() -> None:
    assert len(NYU_TEST_INDICES) == 654 and len(set(NYU_TEST_INDICES)) == 654
    assert NYU_TEST_INDICES[:5] == (1, 2, 9, 14, 15) and NYU_TEST_INDICES[-1] == 1449
    assert BENCHMARKS["depthcrafter"]["nyuv2"].single_frames


def test_tae_takes_the_first_20_sorted_scenes_frames_10_to_179() -> None:
    tae = BENCHMARKS["tae"]["scannet"]
    assert tae.sequences == tuple(f"scene{i:04d}_00" for i in range(707, 727))
    assert tae.select(192) == list(range(10, 180))


def test_crop_boxes() -> None:
    assert BENCHMARKS["depthcrafter"]["scannet"].crop_box(480, 640) == (8, 472, 11, 629)
    assert BENCHMARKS["depthcrafter"]["nyuv2"].crop_box(480, 640) == (45, 471, 41, 601)
    assert BENCHMARKS["depthcrafter"]["kitti"].crop_box(375, 1242) == (0, 374, 0, 1242)  # even crop
    assert BENCHMARKS["depthcrafter"]["sintel"].crop_box(436, 1024) == (0, 436, 0, 1024)


def test_unknown_names_are_clear_errors() -> None:
    with pytest.raises(KeyError, match="unknown benchmark 'dc'"):
        benchmark_set("dc", "sintel")
    with pytest.raises(KeyError, match="has no 'nyuv2' clips"):
        benchmark_set("tae", "nyuv2")
