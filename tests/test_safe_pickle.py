"""The pickle-based inputs (TAP-Vid .pkl, Kubric <seq>.npy) load as data and never run code."""

import io
import os
import pickle

import numpy as np
import pytest

from datamodules.safe_pickle import UnsafePickleError, load_data_pickle, load_object_npy
from datamodules.tapvid import TapVidDataset
from tools.convert_kubric import ConversionError, convert


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_containers_and_arrays_round_trip_in_every_protocol(protocol):
    data = {"v": {"video": np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3), "occluded": np.eye(2, dtype=bool),
                  "frames": np.array([b"\xff\xd8jpeg"], dtype=object), "name": "x"}, "list": [1.5, (2, "y")]}
    out = load_data_pickle(io.BytesIO(pickle.dumps(data, protocol=protocol)))
    assert np.array_equal(out["v"]["video"], data["v"]["video"]) and out["v"]["frames"][0] == b"\xff\xd8jpeg"
    assert out["list"] == [1.5, (2, "y")]


def test_code_in_a_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(UnsafePickleError, match="posix.mkdir|os.mkdir"):
        load_data_pickle(io.BytesIO(pickle.dumps({"video": _RunsCode(marker)})))
    assert not marker.exists()


def test_tapvid_reader_rejects_a_tampered_file(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "tapvid_davis.pkl"
    path.write_bytes(pickle.dumps({"bear": _RunsCode(marker)}))
    with pytest.raises(ValueError, match="not a plain TAP-Vid data pickle"):
        TapVidDataset(path, dataset="davis")
    assert not marker.exists()


def test_kubric_annotation_npy_loads_and_tampered_one_is_refused(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, {"coords": np.ones((3, 4, 2), np.float32), "visibility": np.zeros((3, 4), bool)}, allow_pickle=True)
    assert load_object_npy(good)["coords"].shape == (3, 4, 2)
    marker = tmp_path / "ran"
    seq = tmp_path / "src" / "s"
    (seq / "frames").mkdir(parents=True)
    np.save(seq / "s.npy", np.array([_RunsCode(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ConversionError, match=rf"sequence s: {seq / 's.npy'}: refusing to load (posix|os).mkdir"):
        convert(tmp_path / "src", tmp_path / "out", workers=1)
    assert not marker.exists()
