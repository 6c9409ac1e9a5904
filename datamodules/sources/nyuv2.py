"""NYU Depth v2 labelled set: ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5, read with h5py).

Datasets ``images`` (N, 3, W, H) uint8 and ``depths`` / ``rawDepths`` (N, W, H) float metres (h5py
sees MATLAB's arrays transposed: ``images[i].T`` is H x W x 3). ``depths`` is the filled depth the
DepthCrafter protocol evaluates (``--nyu-depth raw`` takes the raw Kinect depth, 0 = invalid).
Splits: the official 654 test / 795 train images (1-based indices, datamodules/depth_benchmarks.py).
Every image is its own single-frame clip; the Eigen crop is evaluation metadata, not applied here.
h5py is an optional dependency (``pip install tracklight[data]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datamodules.depth_benchmarks import NYU_TEST_INDICES
from datamodules.sources.base import DatasetSource, Frame, SequenceRef, SourceReadError

NUM_LABELLED = 1449
MAT_NAME = "nyu_depth_v2_labeled.mat"


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as err:
        raise ImportError("reading the NYUv2 .mat needs h5py: pip install h5py (or tracklight[data])") from err
    return h5py


class NyuV2Source(DatasetSource):
    name = "nyuv2"
    splits = ("test", "train", "all")
    lossless_frames = True
    default_clip_len = 1

    def __init__(self, root: Path, **options: Any) -> None:
        super().__init__(root, **options)
        self.mat = self.root / MAT_NAME if self.root.is_dir() else self.root
        self.depth_key = {"filled": "depths", "raw": "rawDepths"}[options.get("nyu_depth") or "filled"]
        self._file = None

    @property
    def depth_source(self) -> str:  # type: ignore[override]
        return f"nyuv2 .mat {self.depth_key} float metres" + (", 0 = invalid" if self.depth_key == "rawDepths" else "")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}  # an open HDF5 handle does not cross processes

    def _open(self) -> Any:
        if self._file is None:
            try:
                self._file = _h5py().File(self.mat, "r")
            except OSError as err:
                raise SourceReadError(f"{self.mat}: not a readable MATLAB v7.3 file ({err})") from err
        return self._file

    def sequences(self, split: str) -> list[SequenceRef]:
        if not self.mat.is_file():
            raise FileNotFoundError(f"no {MAT_NAME} at {self.mat}")
        test = set(NYU_TEST_INDICES)
        indices = {"test": sorted(test), "train": [i for i in range(1, NUM_LABELLED + 1) if i not in test],
                   "all": list(range(1, NUM_LABELLED + 1))}[split]
        return [SequenceRef(split, indices, [str(i) for i in indices], fps=1.0)]

    def read_frame(self, sequence: SequenceRef, index: int) -> Frame:
        number = sequence.frames[index]
        data = self._open()
        try:
            image = np.ascontiguousarray(data["images"][number - 1].T)
            depth = np.ascontiguousarray(data[self.depth_key][number - 1].T).astype(np.float32)
        except (KeyError, IndexError, OSError) as err:
            raise SourceReadError(f"{self.mat}: image {number} unreadable ({err})") from err
        return Frame(image=image.astype(np.uint8), depth=depth, valid=np.isfinite(depth) & (depth > 0))

    def meta(self, sequence: SequenceRef) -> dict:
        return {"nyu_depth": "filled" if self.depth_key == "depths" else "raw"}
