"""Shared fixtures: tiny synthetic shards made once per session; W&B never touches the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
# Tests use tiny tensors: extra intra-op threads only add contention on small CI machines.
torch.set_num_threads(1)
os.environ.setdefault("WANDB_SILENT", "true")

from datamodules.shards import ShardWriter  # noqa: E402
from datamodules.synthetic import SyntheticConfig, generate_clip  # noqa: E402

TINY = SyntheticConfig(height=32, width=32, num_frames=12, num_tracks=64)


def tracking_batch(num_frames: int, num_queries: int = 16) -> dict[str, torch.Tensor]:
    """One 32x32 synthetic clip as a tracking batch, queries at frame 0 on points visible there."""
    clip = generate_clip(3, SyntheticConfig(height=32, width=32, num_frames=num_frames, num_tracks=64))
    video = torch.as_tensor(clip["frames"]).permute(0, 3, 1, 2).float()[None]
    tracks = torch.as_tensor(clip["tracks"]).float()[None]
    visible = torch.as_tensor(clip["visible"])[None]
    keep = visible[0, 0].nonzero().flatten()[:num_queries]
    tracks, visible = tracks[:, :, keep], visible[:, :, keep]
    queries = torch.cat([torch.zeros(1, len(keep), 1), tracks[:, 0]], -1)
    return {"video": video, "tracks": tracks, "visible": visible, "valid": torch.ones_like(visible),
            "queries": queries}


def write_clips(directory: Path, seeds: range, per_shard: int, cfg: SyntheticConfig = TINY, prefix: str = "clips") -> list[str]:
    with ShardWriter(directory, prefix=prefix, max_count=per_shard) as writer:
        for seed in seeds:
            clip = generate_clip(seed, cfg)
            writer.write(f"clip{seed:05d}", clip["frames"], clip["tracks"], clip["visible"],
                         source="synthetic", depth=clip["depth"], depth_valid=clip["depth_valid"])
    return sorted(str(p) for p in directory.glob("*.tar"))


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """16 training clips in 8 shards and 4 validation clips, 32x32 x 12 frames."""
    root = tmp_path_factory.mktemp("tiny_shards")
    return {
        "train": write_clips(root / "train", range(16), per_shard=2),
        "val": write_clips(root / "val", range(100, 104), per_shard=4),
        "root": [str(root)],
    }
