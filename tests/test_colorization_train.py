"""Colorization family: overfitting one batch, and real train.py runs of both synthetic stages."""

from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

import train
from datamodules.synthetic import SyntheticConfig, render_clip
from lightning_modules.colorization import arch_config
from lightning_modules.colorization_loss import colorfulness_loss, sample_at_points, track_temporal_loss
from train import load_config

TINY_MODEL = {"model.convnet.widths": "[8,16,16]", "model.convnet.depths": "[1,0,1]", "model.convnet.groups": 4,
              "model.tracktention.inner_dim": 16, "model.tracktention.num_heads": 2}


def tiny_args(tmp: Path, experiment: str, **extra: object) -> list[str]:
    args = [
        f"experiment={experiment}", f"run_dir={tmp / experiment}", "logger=csv",
        f"data.synthetic.cache_dir={tmp / 'cache'}", "data.synthetic.height=32", "data.synthetic.width=32",
        "data.synthetic.num_frames=6", "data.synthetic.num_tracks=32", "data.synthetic.num_train_clips=16",
        "data.synthetic.num_val_clips=2", "data.clip_len=4", "data.val_clip_len=6", "data.num_tracks=16",
        "data.batch_size=1", "data.num_workers=0", "data.shuffle_buffer=1", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
    ]
    return args + [f"{k}={v}" for k, v in {**TINY_MODEL, **extra}.items()]


def synthetic_batch() -> dict[str, torch.Tensor]:
    clip = render_clip(3, SyntheticConfig(height=32, width=32, num_frames=6, num_tracks=16))
    return {"video": torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float()[None],
            "tracks": torch.from_numpy(clip.tracks)[None], "visible": torch.from_numpy(clip.visible)[None],
            "clip_id": torch.tensor([3])}


def test_overfits_one_batch(tmp_path):
    _, cfg = load_config(tiny_args(tmp_path, "colorization_tiny_synthetic", **{"model.init_from": "null",
                                                                                "model.freeze": "[]"}))
    L.seed_everything(0)
    module = train.build_module(cfg)
    batch = synthetic_batch()
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = module.loss_terms(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    out = module.predict_step(batch, 0)
    assert out["rgb"].dtype == torch.uint8 and out["rgb"].shape == (1, 6, 3, 32, 32)
    assert out["ab"].shape == (1, 6, 2, 32, 32) and out["clip_id"].tolist() == [3]


def test_colourfulness_term_is_optional_and_finite(tmp_path):
    _, cfg = load_config(tiny_args(tmp_path, "colorization_tiny_synthetic_stage1", **{"model.loss.colorfulness": 0.5}))
    terms = train.build_module(cfg).loss_terms(synthetic_batch())
    assert set(terms) == {"l1", "colorfulness", "loss"}
    assert torch.isclose(terms["loss"], terms["l1"] + 0.5 * terms["colorfulness"])
    # DDColor's value: constant (200, 100, 50) / 255 -> 1 - 0.3 * sqrt(rg^2 + yb^2) with rg = yb = 100 / 255
    rgb = torch.tensor([200.0, 100.0, 50.0]).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert colorfulness_loss(rgb).item() == pytest.approx(1 - 0.3 * 2**0.5 * 100 / 255, abs=1e-5)
    grey = torch.full((1, 3, 4, 4), 128.0, requires_grad=True)  # flat grey: finite gradient
    colorfulness_loss(grey).backward()
    assert torch.isfinite(grey.grad).all()


@pytest.mark.slow
def test_train_py_stage1_then_tracktention_stage2(tmp_path):
    stage1 = tiny_args(tmp_path, "colorization_tiny_synthetic_stage1", **{
        "trainer.max_steps": 2, "trainer.val_check_interval": 2, "checkpoint.every_n_steps": 2})
    trainer = train.run(stage1)
    assert trainer.global_step == 2
    for key in ("val/psnr", "val/ssim", "val/cdc", "val/cdc_gt", "val/colorfulness", "val/colorfulness_gt"):
        assert torch.isfinite(trainer.callback_metrics[key]), key
    ckpt = tmp_path / "colorization_tiny_synthetic_stage1" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    assert list((tmp_path / "colorization_tiny_synthetic_stage1" / "media").glob("colorization_step*.mp4"))
    image_state = {k: v.clone() for k, v in trainer.lightning_module.model.image.state_dict().items()}

    stage2 = tiny_args(tmp_path, "colorization_tiny_synthetic", **{
        "model.init_from": ckpt, "trainer.max_steps": 2, "trainer.val_check_interval": 2,
        "checkpoint.every_n_steps": 2})
    trainer = train.run(stage2)
    module = trainer.lightning_module
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["val/cdc"])
    for k, v in module.model.image.state_dict().items():  # loaded from stage 1, then frozen
        assert torch.equal(v, image_state[k]), k
    assert any(p.abs().sum() > 0 for n, p in module.model.tracktention.named_parameters() if "out_proj.weight" in n)


def test_backbone_section_is_checked_against_its_schema():
    cfg = OmegaConf.create({"arch": "ddcolor", "ddcolor": {"encoder": "convnext-t", "num_querys": 4}})
    with pytest.raises(ValueError, match="num_querys"):
        arch_config(cfg)
    cfg = OmegaConf.create({"arch": "ddcolor", "ddcolor": {"encoder": "convnext-t", "input_size": None}})
    assert arch_config(cfg).encoder == "convnext-t"


def test_fitting_a_frozen_colorizer_without_weights_is_refused(tmp_path):
    args = tiny_args(tmp_path, "colorization_tiny_synthetic", **{"model.init_from": "null", "trainer.max_steps": 1})
    with pytest.raises(ValueError, match="frozen .* has no weights"):
        train.run(args)


def test_track_temporal_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(1, 3, 2, 5, 6, generator=g) * 20
    tracks = torch.tensor([[[1.0, 2.0], [4.0, 0.0]], [[2.0, 2.0], [4.0, 1.0]], [[3.0, 3.0], [5.0, 1.0]]])[None]
    visible = torch.tensor([[True, True], [True, False], [True, True]])[None]
    # A colour error that is the same in every frame is temporally consistent: no penalty.
    assert track_temporal_loss(target + torch.tensor([3.0, -7.0]).view(1, 1, 2, 1, 1), target, tracks,
                               visible).item() == pytest.approx(0.0, abs=1e-5)
    pred = target.clone()
    pred[0, 1, :, 2, 2] += torch.tensor([4.0, -2.0])  # track 0 at frame 1 (x=2, y=2): usable in pairs 0-1 and 1-2
    pred[0, 2, :, 1, 5] += 100.0  # track 1 at frame 2: its pair 1-2 has an invisible end, ignored
    # pairs: (0-1, track 0) |4|,|-2| -> 3; (1-2, track 0) 3; (0-1, track 1) invisible at 1; (1-2, track 1) idem
    assert track_temporal_loss(pred, target, tracks, visible).item() == pytest.approx(3.0, abs=1e-4)
    # Bilinear sampling halfway between two pixels averages them.
    maps = torch.arange(6.0).view(1, 1, 1, 6)
    assert sample_at_points(maps, torch.tensor([[[2.5, 0.0]]])).item() == pytest.approx(2.5)
