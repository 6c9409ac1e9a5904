"""Query points for prediction: `t,x,y` strings, text files (one `t x y` / `t,x,y` per line, `#`
comments) and `.npy` arrays of shape (N, 3). Frames are integers >= 0; x, y are pixels of the
video (pixel centres at integers)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


class QueryError(ValueError):
    """Malformed queries; the message says which line or value."""


def parse_query(text: str) -> tuple[float, float, float]:
    """'t,x,y' (commas and/or spaces) -> (t, x, y)."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    if len(parts) != 3:
        raise QueryError(f"query {text!r}: expected three numbers t,x,y")
    try:
        t, x, y = (float(p) for p in parts)
    except ValueError:
        raise QueryError(f"query {text!r}: t, x and y must be numbers") from None
    return t, x, y


def read_query_file(path: str | Path) -> np.ndarray:
    """(N, 3) float32 queries from a `.npy` file or a text file."""
    path = Path(path)
    if not path.is_file():
        raise QueryError(f"{path}: no such query file")
    if path.suffix == ".npy":
        try:
            queries = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise QueryError(f"{path}: not a readable .npy array ({err})") from err
        if queries.ndim != 2 or queries.shape[1] != 3:
            raise QueryError(f"{path}: expected an array of shape (N, 3) as (t, x, y), got {queries.shape}")
        return check_queries(queries.astype(np.float32), str(path))
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            try:
                rows.append(parse_query(line))
            except QueryError as err:
                raise QueryError(f"{path}, line {number}: {err}") from None
    return check_queries(np.asarray(rows, dtype=np.float32).reshape(-1, 3), str(path))


def check_queries(queries: np.ndarray, source: str, hw: tuple[int, int] | None = None) -> np.ndarray:
    """Refuse empty sets, non-finite values, negative or fractional frames and (given hw) points off the frame."""
    if len(queries) == 0:
        raise QueryError(f"{source}: no queries")
    if not np.isfinite(queries).all():
        raise QueryError(f"{source}: queries must be finite numbers")
    t = queries[:, 0]
    if (t < 0).any() or (t != np.round(t)).any():
        raise QueryError(f"{source}: query frames must be integers >= 0, got {t[(t < 0) | (t != np.round(t))][:5]}")
    if hw is not None:
        H, W = hw
        x, y = queries[:, 1], queries[:, 2]
        outside = (x < -0.5) | (x > W - 0.5) | (y < -0.5) | (y > H - 0.5)
        if outside.any():
            raise QueryError(f"{source}: {int(outside.sum())} queries lie outside the {W}x{H} frame, "
                             f"e.g. (t, x, y) = {tuple(queries[outside][0].tolist())}")
    return queries
