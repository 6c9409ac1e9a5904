"""Command-line overrides for a seconds-long real `train.py` run (tiny tracker, tiny synthetic data)."""

from __future__ import annotations

from pathlib import Path

from configs.loader import override_args

TINY_MODEL = [
    "model.arch.window_len=4", "model.arch.latent_dim=8", "model.arch.corr_levels=2", "model.arch.corr_radius=1",
    "model.arch.corr_hidden_dim=16", "model.arch.corr_out_dim=8", "model.arch.hidden_size=16",
    "model.arch.num_heads=2", "model.arch.time_depth=1", "model.arch.space_depth=1",
    "model.arch.num_virtual_tracks=4", "model.arch.posenc_freqs=2", "model.arch.model_resolution=[32,32]",
    "model.train_iters=2", "model.eval_iters=2",
]


def tiny_run_args(tmp: Path, **extra: object) -> list[str]:
    """The tiny run's overrides; `extra` keys replace the defaults here (the command line refuses one key given twice)."""
    args = TINY_MODEL + [
        f"run_dir={tmp / 'run'}", "logger=csv", f"data.synthetic.cache_dir={tmp / 'cache'}",
        "data.synthetic.height=32", "data.synthetic.width=32", "data.synthetic.num_frames=8",
        "data.synthetic.num_tracks=48", "data.synthetic.num_train_clips=32", "data.synthetic.num_val_clips=2",
        "data.clip_len=8", "data.num_queries=8", "data.batch_size=1", "data.num_workers=0",
        "data.shuffle_buffer=2", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
    ]
    return override_args(args, [f"{k}={v}" for k, v in extra.items()])
