"""Read the two pickle-based formats users already have, without letting them run code.

The official TAP-Vid files (`*.pkl`) and CoTracker's Kubric annotations (`<seq>.npy` holding
a pickled dict) are pickles of dicts, lists, strings, bytes and numpy arrays. A plain
`pickle.load` of such a file can execute arbitrary code; this unpickler only resolves the
handful of numpy constructors those files need and refuses any other global, naming it.
Shards never use pickle at all.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

# Module/name pairs that rebuild numpy arrays, dtypes and scalars (numpy 1 and 2 spellings).
_ALLOWED = {
    (module, name)
    for prefix in ("numpy.core", "numpy._core")
    for module, name in ((f"{prefix}.multiarray", "_reconstruct"), (f"{prefix}.multiarray", "scalar"),
                         (f"{prefix}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
     ("codecs", "encode"), ("_codecs", "encode")}  # protocol-2 pickles spell bytes via codecs.encode


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for a global outside the allow-list (it is not a plain data pickle)."""


class DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(f"refusing to load {module}.{name}: only numpy arrays and builtin "
                                    "containers are allowed in data pickles")
        return getattr(importlib.import_module(module), name)


def load_data_pickle(source: str | Path | BinaryIO) -> Any:
    """Load a pickle of builtin containers and numpy arrays (e.g. a TAP-Vid `.pkl`)."""
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            return DataOnlyUnpickler(f, encoding="latin1").load()
    return DataOnlyUnpickler(source, encoding="latin1").load()


def load_object_npy(path: str | Path) -> Any:
    """Load an object-dtype `.npy` (what `np.save` writes for a dict) and return its single item.

    Every refusal or read error names the file (UnsafePickleError for a global outside the allow-list).
    """
    with open(path, "rb") as f:
        try:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(f)
        except ValueError as err:
            raise ValueError(f"{path}: not a .npy file ({err})") from None
        if not dtype.hasobject:
            raise ValueError(f"{path}: expected an object array (a saved dict), got dtype {dtype}")
        try:
            array = load_data_pickle(f)
        except UnsafePickleError as err:
            raise UnsafePickleError(f"{path}: {err}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
            raise ValueError(f"{path}: damaged pickle data ({type(err).__name__}: {err})") from None
    return array.item() if isinstance(array, np.ndarray) and array.size == 1 else array
