"""Cut fixed-shape training samples (clip_len frames, num_queries tracks) out of stored clips."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from datamodules.shards import Clip


def clip_id(key: str) -> int:
    """Stable 63-bit id of a clip key, carried in batches to trace samples (e.g. a NaN loss)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


class TooFewTracks(Exception):
    """No window of the clip has enough eligible tracks; the caller skips and counts it."""


def sample_queries(
    visible: np.ndarray, num_queries: int, random_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """CoTracker-style track choice on a (T, N) visibility window.

    Eligible tracks are visible at the first or the middle frame. A `random_fraction` of the
    chosen tracks is queried at a random visible frame, the rest at their first visible frame.
    Returns (track indices (num_queries,), query frames (num_queries,)).
    """
    num_frames = visible.shape[0]
    eligible = np.flatnonzero(visible[0] | visible[num_frames // 2])
    if len(eligible) < num_queries:
        raise TooFewTracks(f"{len(eligible)} eligible tracks < {num_queries}")
    chosen = rng.choice(eligible, size=num_queries, replace=False)
    vis = visible[:, chosen]
    query_frames = vis.argmax(axis=0)  # first visible frame
    use_random = rng.random(num_queries) < random_fraction
    for j in np.flatnonzero(use_random):
        query_frames[j] = rng.choice(np.flatnonzero(vis[:, j]))
    return chosen, query_frames


def cut_training_sample(
    clip: Clip,
    clip_len: int,
    num_queries: int,
    random_fraction: float,
    rng: np.random.Generator,
    max_tries: int = 8,
) -> dict[str, torch.Tensor]:
    """A random window of `clip_len` frames with `num_queries` tracks, as tensors without batch dim."""
    if clip.num_frames < clip_len:
        raise TooFewTracks(f"clip {clip.key} has {clip.num_frames} frames < clip_len {clip_len}")
    for _ in range(max_tries):
        start = int(rng.integers(0, clip.num_frames - clip_len + 1))
        window = slice(start, start + clip_len)
        try:
            chosen, query_frames = sample_queries(clip.visible[window], num_queries, random_fraction, rng)
        except TooFewTracks:
            continue
        return _to_sample(clip, range(start, start + clip_len), chosen, query_frames)
    raise TooFewTracks(f"clip {clip.key}: no {clip_len}-frame window with {num_queries} eligible tracks")


def cut_eval_sample(clip: Clip, clip_len: int, num_queries: int, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic validation sample: the first `clip_len` frames, first-visible queries."""
    rng = np.random.default_rng(seed)
    clip_len = min(clip_len, clip.num_frames)
    visible = clip.visible[:clip_len]
    eligible = np.flatnonzero(visible.any(axis=0))
    chosen = np.sort(rng.choice(eligible, size=min(num_queries, len(eligible)), replace=False))
    if len(chosen) < num_queries:
        raise TooFewTracks(f"clip {clip.key}: {len(chosen)} ever-visible tracks < {num_queries}")
    return _to_sample(clip, range(clip_len), chosen, visible[:, chosen].argmax(axis=0))


def _to_sample(clip: Clip, frames: range, chosen: np.ndarray, query_frames: np.ndarray) -> dict[str, torch.Tensor]:
    tracks = clip.tracks[frames.start:frames.stop, chosen]
    visible = clip.visible[frames.start:frames.stop, chosen]
    video = clip.decode_frames(frames)
    xy = tracks[query_frames, np.arange(len(chosen))]
    queries = np.concatenate([query_frames[:, None].astype(np.float32), xy], axis=1)
    sample = {
        # uint8 across the DataLoader (4x less IPC); the DataModule makes it float32 on the device.
        "video": video.permute(0, 3, 1, 2),
        "queries": torch.from_numpy(queries),
        "tracks": torch.from_numpy(np.ascontiguousarray(tracks)),
        "visible": torch.from_numpy(np.ascontiguousarray(visible)),
        "valid": torch.ones(visible.shape, dtype=torch.bool),
        "clip_id": torch.tensor(clip_id(clip.key)),
    }
    if clip.depth is not None:
        sample["depth"] = torch.from_numpy(clip.depth[frames.start:frames.stop]).unsqueeze(1)
        sample["depth_valid"] = torch.from_numpy(clip.depth_valid[frames.start:frames.stop]).unsqueeze(1)
    return sample
