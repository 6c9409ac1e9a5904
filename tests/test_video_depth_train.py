"""Video depth family end to end: train.py on the tiny synthetic experiment, freezing and staged unfreezing."""

from pathlib import Path

import lightning as L
import pytest
import torch

import train
from callbacks.unfreeze import set_trainable
from configs.loader import override_args
from train import load_config


def tiny_args(tmp: Path, **extra: object) -> list[str]:
    args = [
        "experiment=depth_anything_tiny_synthetic", "model.init_from=null", f"run_dir={tmp / 'run'}", "logger=csv",
        f"data.synthetic.cache_dir={tmp.parent / 'vd_cache'}", "data.synthetic.height=56", "data.synthetic.width=56",
        "data.synthetic.num_frames=6", "data.synthetic.num_tracks=48", "data.synthetic.num_train_clips=16",
        "data.synthetic.num_val_clips=2", "data.clip_len=4", "data.val_clip_len=6", "data.num_tracks=24",
        "data.batch_size=1", "data.num_workers=0", "data.shuffle_buffer=1", "model.arch.img_size=56",
        "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
    ]
    return override_args(args, [f"{k}={v}" for k, v in extra.items()])


def initial_state(args: list[str]) -> dict[str, torch.Tensor]:
    _, cfg = load_config(args)
    L.seed_everything(cfg.seed, workers=True)  # train.run seeds the same way before building the module
    return {k: v.clone() for k, v in train.build_module(cfg).state_dict().items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> bool:
    return any(not torch.equal(before[k], after[k].cpu()) for k in before if k.startswith(prefix))


def test_one_step_moves_only_the_unfrozen_parameters(tmp_path):
    args = tiny_args(tmp_path, **{"trainer.max_steps": 1, "trainer.val_check_interval": 1000})
    before = initial_state(args)
    trainer = train.run(args)
    after = trainer.lightning_module.state_dict()
    assert trainer.global_step == 1
    assert not changed(before, after, "model.image.pretrained.")  # frozen encoder: bit-identical
    assert changed(before, after, "model.image.depth_head.")
    assert changed(before, after, "model.tracktention.")
    assert not trainer.lightning_module.model.image.pretrained.cls_token.requires_grad


def test_train_py_fits_with_validation_and_staged_unfreezing(tmp_path):
    args = tiny_args(tmp_path, **{"trainer.max_steps": 2, "trainer.val_check_interval": 2,
                                  "trainer.limit_val_batches": 1, "checkpoint.every_n_steps": 2,
                                  "model.unfreeze": "[{step: 1, prefixes: [image.pretrained.]}]"})
    before = initial_state(args)
    trainer = train.run(args)
    module = trainer.lightning_module
    assert trainer.global_step == 2
    for key in ("val/abs_rel", "val/delta1", "val/track_tae"):
        assert torch.isfinite(trainer.callback_metrics[key])
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "media").glob("depth_step*.mp4"))
    # Unfrozen at step 1: the encoder became trainable and its second step changed it.
    assert module.model.image.pretrained.cls_token.requires_grad
    assert changed(before, module.state_dict(), "model.image.pretrained.blocks.")


def test_set_trainable_names_a_prefix_that_matches_nothing():
    with pytest.raises(ValueError, match=r"model.freeze: prefix\(es\) \['encoder.'\] match no parameter of Linear"):
        set_trainable(torch.nn.Linear(2, 2), ["encoder."], False)


@pytest.mark.parametrize("with_poses", [False, True])
def test_validation_computes_tae_from_the_batch_cameras(tmp_path, with_poses):
    """Batches carry `intrinsics` (data.require_intrinsics) and `cam_to_world` (data.require_poses): TAE is
    computed from them, and intrinsics alone (a dataset without poses) give the other metrics, no error."""
    _, cfg = load_config(tiny_args(tmp_path))
    module = train.build_module(cfg)
    module.eval()
    t, h, w, n = 4, 56, 56, 8
    depth = 2.0 + torch.rand(1, t, 1, h, w)
    k = torch.tensor([[50.0, 0.0, (w - 1) / 2], [0.0, 50.0, (h - 1) / 2], [0.0, 0.0, 1.0]])
    batch = {"video": torch.rand(1, t, 3, h, w) * 255, "depth": depth, "depth_valid": torch.ones_like(depth, dtype=torch.bool),
             "is_disparity": torch.tensor([False]), "tracks": torch.rand(1, t, n, 2) * (w - 1),
             "visible": torch.ones(1, t, n, dtype=torch.bool), "intrinsics": k.expand(1, t, 3, 3).clone()}
    if with_poses:
        batch["cam_to_world"] = torch.eye(4).expand(1, t, 4, 4).clone()
    module.media = {}  # no media capture
    with torch.no_grad():
        module._evaluate(batch, module.val_metrics)
    out = module.val_metrics.compute()
    assert torch.isfinite(out["abs_rel"])
    assert ("tae" in out) == with_poses and (not with_poses or torch.isfinite(out["tae"]))
