"""Generate the embedded synthetic dataset into shards, once, keyed by its settings."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from datamodules.shards import ShardWriter
from datamodules.synthetic import SyntheticConfig, generate_clip

log = logging.getLogger(__name__)


def _as_dict(cfg: object) -> dict:
    return OmegaConf.to_container(cfg) if OmegaConf.is_config(cfg) else asdict(cfg)


def write_synthetic_shards(directory: Path, prefix: str, seeds: range, gen_cfg: SyntheticConfig,
                           clips_per_shard: int) -> None:
    with ShardWriter(directory, prefix=prefix, max_count=clips_per_shard) as writer:
        for seed in seeds:
            clip = generate_clip(seed, gen_cfg)
            writer.write(f"synthetic{seed:07d}", clip["frames"], clip["tracks"], clip["visible"],
                         fps=clip["meta"].get("fps", 24.0), source="synthetic", depth=clip["depth"],
                         depth_valid=clip["depth_valid"], extra_meta={"seed": seed})


def ensure_synthetic_shards(cfg: object) -> tuple[str, str]:
    """Return (train, val) shard directories for `cfg` (a SyntheticDataConfig), generating them if missing.

    Validation clips use seeds disjoint from training. The folder name hashes the settings, so
    changing them regenerates instead of silently reusing stale data; generation writes to a
    temporary folder renamed into place, so an interrupted run never leaves a partial cache.
    """
    settings = _as_dict(cfg)
    cache_dir = Path(settings.pop("cache_dir"))
    if settings.get("domain") == "default":
        del settings["domain"]  # keeps the folder name (hash) of caches written before domains existed
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    root = cache_dir / f"synthetic-{digest}"
    train_dir, val_dir = root / "train", root / "val"
    if not (root / "DONE").exists():
        log.info("generating synthetic dataset into %s (%s)", root, settings)
        tmp = cache_dir / f".tmp-{digest}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        gen_cfg = SyntheticConfig(height=settings["height"], width=settings["width"],
                                  num_frames=settings["num_frames"], num_tracks=settings["num_tracks"],
                                  haze=settings["haze"], frame_noise=settings["frame_noise"],
                                  colour_classes=settings["colour_classes"],
                                  class_signature=settings["class_signature"],
                                  domain=settings.get("domain", "default"))
        seed0, n_train, n_val = settings["seed"], settings["num_train_clips"], settings["num_val_clips"]
        # At least 16 training shards so ranks x workers always get disjoint subsets.
        per_shard = max(1, min(settings["clips_per_shard"], n_train // 16))
        write_synthetic_shards(tmp / "train", "train", range(seed0, seed0 + n_train), gen_cfg, per_shard)
        val_seeds = range(seed0 + n_train, seed0 + n_train + n_val)
        write_synthetic_shards(tmp / "val", "val", val_seeds, gen_cfg, settings["clips_per_shard"])
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2))
        (tmp / "DONE").touch()
        try:
            tmp.rename(root)
        except OSError:  # another process won the race; its cache is equivalent
            shutil.rmtree(tmp, ignore_errors=True)
    return str(train_dir), str(val_dir)
