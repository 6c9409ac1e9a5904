"""Errors a user can act on: one line naming the key or file, exit code 2, no traceback (train.py, converters)."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from configs.loader import override_args
from lightning_modules.cotracker3 import CoTracker3Module
from tests.tiny_run import TINY_MODEL, tiny_run_args
from tools import convert_kubric
from train import load_config


def _main(args: list[str], monkeypatch, capsys) -> str:  # noqa: ANN001
    """train.main() on `args`: asserts exit code 2 and returns stderr."""
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    return err


def _one_line(err: str, prefix: str = "config error: ") -> str:
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, err
    return lines[0]


def _args(tmp_path: Path, **extra: object) -> list[str]:
    return tiny_run_args(tmp_path, **{"trainer.max_steps": 1, "checkpoint.monitor": "null", "logger": "none", **extra})


def test_shard_paths_that_match_nothing_name_the_key(tmp_path, monkeypatch, capsys):
    err = _main(_args(tmp_path, **{"data.train_shards": str(tmp_path / "nowhere-{000..003}.tar")}), monkeypatch, capsys)
    assert f"data.train_shards='{tmp_path}/nowhere-{{000..003}}.tar' matches no shard files" in _one_line(err)


def test_val_shards_without_train_shards_is_refused_for_fit(tmp_path, monkeypatch, capsys):
    err = _main(_args(tmp_path, **{"data.val_shards": str(tmp_path)}), monkeypatch, capsys)
    assert "data.val_shards is set but data.train_shards is not" in _one_line(err)


def test_a_freeze_prefix_that_matches_nothing(tmp_path, monkeypatch, capsys):
    err = _main(_args(tmp_path, **{"model.freeze": "[fnet.,nope.]"}), monkeypatch, capsys)
    assert "model.freeze: prefix(es) ['nope.'] match no parameter of CoTrackerThree" in _one_line(err)


def test_an_unwritable_run_dir_is_found_at_start_up(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    err = _main(_args(tmp_path, run_dir=str(blocker / "run")), monkeypatch, capsys)
    assert f"run_dir='{blocker}/run' is not writable" in _one_line(err)


@pytest.fixture
def truncated(tmp_path: Path) -> Path:
    path = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "global_step": 3}, path)
    path.write_bytes(path.read_bytes()[:300])
    return path


@pytest.mark.parametrize("key", ["resume", "ckpt", "model.init_from"])
def test_a_truncated_checkpoint_is_named_with_its_key(tmp_path, truncated, monkeypatch, capsys, key):
    command = ["validate"] if key == "ckpt" else []
    err = _main([*command, *_args(tmp_path, **{key: str(truncated)})], monkeypatch, capsys)
    line = _one_line(err)
    assert f"{truncated} is not a readable checkpoint (truncated, damaged, or not a weights-only torch file)" in line
    assert (f"{key}='{truncated}'" in line) if key != "model.init_from" else "model weights:" in line
    assert "mmap" not in line


def test_a_wrong_checkpoint_lists_every_mismatched_key(tmp_path, monkeypatch, capsys):
    _, cfg = load_config(override_args(TINY_MODEL, ["model.arch.hidden_size=32", "model.arch.num_virtual_tracks=8"]))
    other = CoTracker3Module(cfg.model)
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": other.state_dict(), "global_step": 0}, path)
    err = _main(["validate", *_args(tmp_path, ckpt=str(path))], monkeypatch, capsys)
    mine = CoTracker3Module(load_config(TINY_MODEL)[1].model).state_dict()
    differing = [k for k, v in other.state_dict().items() if k not in mine or mine[k].shape != v.shape]
    assert len(differing) > 40  # more than the old listing showed
    assert f"ckpt='{path}' does not match this model" in err
    assert all(key in err for key in differing), [key for key in differing if key not in err]
    assert "more" not in err  # nothing elided


def test_tapvid_pickle_that_would_run_code_is_one_line(tmp_path, monkeypatch, capsys):
    class RunsCode:
        def __reduce__(self):  # noqa: ANN204
            return (os.mkdir, (str(tmp_path / "ran"),))

    path = tmp_path / "tapvid_davis.pkl"
    path.write_bytes(pickle.dumps({"bear": RunsCode()}))
    err = _main(["validate", "experiment=cotracker3_tapvid_davis", *TINY_MODEL, f"run_dir={tmp_path / 'run'}",
                 "logger=none", f"data.path={path}"], monkeypatch, capsys)
    line = _one_line(err, "data error: ")
    assert f"{path} is not a plain TAP-Vid data pickle: refusing to load" in line and "mkdir" in line
    assert not (tmp_path / "ran").exists()


def _kubric_sequence(root: Path, name: str, annotation: object) -> None:
    seq = root / name
    (seq / "frames").mkdir(parents=True)
    from PIL import Image

    for t in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(seq / "frames" / f"{t:03d}.png")
    np.save(seq / f"{name}.npy", np.array([annotation], dtype=object), allow_pickle=True)


def test_kubric_refused_pickle_names_its_npy_with_workers_and_leaves_nothing(tmp_path, capsys):
    class RunsCode:
        def __reduce__(self):  # noqa: ANN204
            return (os.mkdir, (str(tmp_path / "ran"),))

    src = tmp_path / "src"
    good = {"coords": np.ones((4, 3, 2), np.float32), "visibility": np.zeros((4, 3), bool)}
    for i in range(4):
        _kubric_sequence(src, f"seq{i}", good)
    _kubric_sequence(src, "seq4", {"coords": RunsCode()})
    out = tmp_path / "out"
    code = convert_kubric.main([str(src), str(out), "--val-count", "1", "--workers", "2", "--clips-per-shard", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "RemoteTraceback" not in err
    assert f"error: sequence seq4: {src / 'seq4' / 'seq4.npy'}: refusing to load" in _one_line(err, "error: ")
    assert list(out.iterdir()) == []  # no partial shards (val/ had been written completely)
    assert not (tmp_path / "ran").exists()
