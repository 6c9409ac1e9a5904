"""Chrono: identity at initialisation, local attention band, local soft-argmax, loss, training."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import train
from lightning_modules.chrono import ChronoModule
from lightning_modules.chrono_loss import ChronoLossConfig, chrono_loss
from models.checkpoint_io import CheckpointMismatchError
from models.chrono import (
    Chrono,
    ChronoConfig,
    ChronoOutput,
    LocalTemporalAttention,
    local_band_mask,
    local_soft_argmax,
)
from models.dinov2 import imagenet_normalize
from tests.conftest import tracking_batch
from tests.tiny_run import TINY_MODEL, tiny_run_args
from train import load_config

# 64x64 input (8x8 tokens of patch 8); 3 blocks -> 2 adapters.
TINY = dict(backbone="vits14", embed_dim=32, depth=3, num_heads=2, patch_size=8, backbone_img_size=64,
            feature_grid=8, adapter_channels=16, adapter_heads=4)


def tiny_chrono(freeze_backbone: bool = True, **overrides: object) -> Chrono:
    torch.manual_seed(0)
    return Chrono(ChronoConfig(**{**TINY, **overrides}), freeze_backbone=freeze_backbone)


def random_video(b: int = 1, t: int = 5, hw: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, t, 3, hw, hw, generator=torch.Generator().manual_seed(seed)) * 255


def test_features_equal_frozen_dinov2_at_initialisation() -> None:
    model = tiny_chrono().eval()
    video = random_video()
    with torch.no_grad():
        ours = model.features(video)
        frames = F.interpolate(imagenet_normalize(video).flatten(0, 1), size=(64, 64), mode="bilinear",
                               align_corners=False)
        plain = model.dino.get_intermediate_layers(frames, n=1)[0].reshape(1, 5, 8, 8, -1)
        plain = plain / torch.sqrt(torch.clamp_min((plain * plain).sum(-1, keepdim=True), 1e-6))
    assert len(model.adapter) == 2
    assert torch.equal(ours, plain)
    # The adapters are really in the path: a non-zero last conv changes the features.
    with torch.no_grad():
        model.adapter[0].conv2.weight.normal_(0, 0.1)
        assert not torch.allclose(model.features(video), plain, atol=1e-4)


def test_published_adapter_parameter_counts() -> None:
    with torch.device("meta"):
        small = Chrono(ChronoConfig(backbone="vits14"))
        base = Chrono(ChronoConfig(backbone="vitb14"))
    # chrono.md: 1,476,480 / 2,362,368 per adapter, x 11, plus Linear(3, 2).
    assert len(small.adapter) == len(base.adapter) == 11
    assert small.adapter_parameter_count() == 11 * 1_476_480 + 8
    assert base.adapter_parameter_count() == 11 * 2_362_368 + 8


def test_query_chunking_does_not_change_the_result() -> None:
    model = tiny_chrono(query_chunk_size=3).eval()
    video = random_video(t=4)
    gen = torch.Generator().manual_seed(1)
    queries = torch.cat([torch.randint(0, 4, (1, 10, 1), generator=gen).float(),
                         torch.rand(1, 10, 2, generator=gen) * 31], -1)
    with torch.no_grad():
        chunked = model(video, queries)
        model.config.query_chunk_size = 64
        whole = model(video, queries)
    assert torch.allclose(chunked.tracks, whole.tracks, atol=1e-5)
    # The logits, not the thresholded flags: a logit within rounding of the threshold may flip either way.
    assert torch.allclose(chunked.occlusion_logits, whole.occlusion_logits, atol=1e-5)
    assert torch.allclose(chunked.expected_dist_logits, whole.expected_dist_logits, atol=1e-5)


def test_local_band_mask_window_13_truncates_at_clip_ends() -> None:
    mask = local_band_mask(16, 13)
    assert mask.tolist()[0] == [True] * 7 + [False] * 9  # first frame: itself + 6 later frames
    assert mask[8].nonzero().flatten().tolist() == list(range(2, 15))  # full 13-frame window
    assert mask[15].nonzero().flatten().tolist() == list(range(9, 16))  # last frame: 7 keys
    assert torch.equal(mask, mask.T)


def test_local_attention_sees_only_its_window() -> None:
    torch.manual_seed(0)
    attn = LocalTemporalAttention(16, num_heads=4, window=13)
    x = torch.randn(3, 16, 16)
    moved = x.clone()
    moved[:, 15] += 5.0  # change only the last frame
    with torch.no_grad():
        diff = (attn(moved) - attn(x)).abs().amax(dim=(0, 2))
    assert torch.all(diff[:9] == 0)  # frames 0..8 are more than 6 frames away
    assert torch.all(diff[9:] > 0)


def test_local_soft_argmax_ignores_a_distant_second_peak() -> None:
    probs = torch.zeros(10, 10)  # [y, x]
    probs[3, 2] = 0.40  # peak, centre (2.5, 3.5)
    probs[3, 3] = 0.20  # distance 1: inside
    probs[7, 2] = 0.10  # distance 4: inside
    probs[3, 7] = 0.05  # distance exactly 5: outside (strict)
    probs[8, 8] = 0.25  # the distant second peak
    xy = local_soft_argmax(probs.double(), radius=5.0)
    # x = (0.4 * 2.5 + 0.2 * 3.5 + 0.1 * 2.5) / 0.7, y = (0.4 * 3.5 + 0.2 * 3.5 + 0.1 * 7.5) / 0.7
    assert xy.tolist() == pytest.approx([1.95 / 0.7, 2.85 / 0.7], abs=1e-12)


def test_forward_maps_the_peak_cell_to_pixels_and_keeps_the_query_frame() -> None:
    # One-hot features: cell k of the frame-0 grid matches cell k shifted by (+3, +1) at frame 1.
    model = tiny_chrono(feature_grid=16)
    g, t, size = 16, 2, 64
    feats = torch.zeros(1, t, g, g, g * g)
    idx = torch.arange(g * g).view(g, g)
    feats[0, 0] = F.one_hot(idx, g * g).float()
    feats[0, 1] = F.one_hot(torch.roll(idx, shifts=(1, 3), dims=(0, 1)), g * g).float()
    model.features = lambda video: feats  # type: ignore[method-assign]
    # Query at the centre of cell (x=6, y=7) on frame 0: pixel (6.5 * 4 - 0.5, 7.5 * 4 - 0.5).
    queries = torch.tensor([[[0.0, 25.5, 29.5]]])
    out = model(torch.zeros(1, t, 3, size, size), queries)
    assert out.tracks.shape == (1, t, 1, 2)
    assert out.tracks[0, 0, 0].tolist() == [25.5, 29.5]
    # The disk around the peak is symmetric, so the soft-argmax sits on the matched cell (9, 8).
    assert out.tracks[0, 1, 0].tolist() == pytest.approx([9.5 * 4 - 0.5, 8.5 * 4 - 0.5], abs=1e-4)
    assert out.occlusion_logits.shape == out.expected_dist_logits.shape == (1, t, 1)


def test_loss_on_a_hand_case() -> None:
    # 64x64 video -> errors are scaled x4 into the 256 frame.
    gt = torch.zeros(1, 1, 5, 2)
    pred = gt.clone()
    pred[0, 0, 0] = torch.tensor([0.5, 0.0])  # 2 px at 256: Huber d^2 / 2 = 2
    pred[0, 0, 1] = torch.tensor([0.0, 3.0])  # 12 px: 4 * (12 - 2) = 40, and > 6 px
    pred[0, 0, 2] = torch.tensor([10.0, 0.0])  # occluded: no position / expected-dist term
    visible = torch.tensor([[[True, True, False, True, True]]])
    valid = torch.tensor([[[True, True, True, True, False]]])  # last entry not annotated
    out = ChronoOutput(pred, torch.zeros(1, 1, 5), torch.zeros(1, 1, 5))
    batch = {"video": torch.zeros(1, 1, 3, 64, 64), "tracks": gt, "visible": visible, "valid": valid}
    terms = chrono_loss(out, batch, ChronoLossConfig())
    ln2 = math.log(2.0)
    assert terms["position"].item() == pytest.approx(0.05 * (2.0 + 40.0) / 4, rel=1e-6)
    assert terms["occlusion"].item() == pytest.approx(ln2, rel=1e-6)
    assert terms["expected_dist"].item() == pytest.approx(3 * ln2 / 4, rel=1e-6)
    total = terms["position"] + terms["occlusion"] + terms["expected_dist"]
    assert terms["loss"].item() == pytest.approx(2 * total.item(), rel=1e-6)
    # The expected-distance target is "far" (> 6 px) only for the second entry.
    expd = torch.zeros(1, 1, 5)
    expd[0, 0, 1] = 30.0  # confident "far" -> ~0 loss; the others stay at ln 2
    terms = chrono_loss(ChronoOutput(pred, torch.zeros(1, 1, 5), expd), batch, ChronoLossConfig())
    assert terms["expected_dist"].item() == pytest.approx(2 * ln2 / 4, rel=1e-5)


def synthetic_batch(num_queries: int = 16) -> dict[str, torch.Tensor]:
    return tracking_batch(num_frames=6, num_queries=num_queries)


def test_overfits_one_batch() -> None:
    model = tiny_chrono(freeze_backbone=False).train()  # from scratch, as the CPU demo config
    batch = synthetic_batch()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(40):
        loss = chrono_loss(model(batch["video"], batch["queries"]), batch, ChronoLossConfig())["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_checkpoint_loading_is_strict_and_strips_the_lightning_prefix() -> None:
    src = tiny_chrono()
    with torch.no_grad():
        src.adapter[1].conv2.weight.normal_()
    released = {f"model.{k}": v for k, v in src.state_dict().items()}
    dst = tiny_chrono()
    dst.load_chrono_checkpoint(released)
    assert torch.equal(dst.adapter[1].conv2.weight, src.adapter[1].conv2.weight)
    released["model.adapter.1.attn_temp.qkv.bias"] = torch.zeros(48)  # the release has no qkv bias
    del released["model.occ_linear.bias"]
    with pytest.raises(CheckpointMismatchError, match=r"(?s)occ_linear\.bias.*attn_temp\.qkv\.bias"):
        dst.load_chrono_checkpoint(released)


def test_build_loads_dinov2_weights_and_a_chrono_checkpoint_from_files(tmp_path) -> None:
    from lightning_modules.chrono import build_chrono

    _, cfg = load_config(tiny_chrono_args(tmp_path))
    reference = build_chrono(cfg.model)
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_()
    torch.save(reference.dino.state_dict(), tmp_path / "dinov2_vits14_pretrain.pth")
    torch.save({"state_dict": {f"model.{k}": v for k, v in reference.state_dict().items()}, "epoch": 3},
               tmp_path / "chrono.ckpt")
    cfg.model.backbone_weights = str(tmp_path / "dinov2_vits14_pretrain.pth")
    cfg.model.freeze_backbone = True
    with_backbone = build_chrono(cfg.model)
    assert torch.equal(with_backbone.dino.pos_embed, reference.dino.pos_embed)
    assert not with_backbone.dino.pos_embed.requires_grad
    assert not torch.equal(with_backbone.adapter[0].conv1.weight, reference.adapter[0].conv1.weight)
    cfg.model.init_from = str(tmp_path / "chrono.ckpt")
    full = build_chrono(cfg.model)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in full.state_dict().items())


def tiny_chrono_args(tmp_path) -> list[str]:
    """tests/tiny_run.py's tiny data and logging overrides, with a tiny Chrono instead of its tracker."""
    data_args = tiny_run_args(tmp_path)[len(TINY_MODEL):]
    return ["experiment=chrono_tiny_synthetic", *data_args, "model.arch.embed_dim=16", "model.arch.depth=2",
            "model.arch.num_heads=2", "model.arch.backbone_img_size=64", "model.arch.feature_grid=8",
            "model.arch.adapter_channels=8", "model.arch.query_chunk_size=4"]


class CaptureTrainingState(L.Callback):
    def __init__(self) -> None:
        self.seen: dict[str, object] = {}

    def on_after_backward(self, trainer: L.Trainer, module: ChronoModule) -> None:
        model = module.model
        self.seen["dino_training"] = model.dino.training
        self.seen["adapter_training"] = model.adapter[0].training
        self.seen["dino_grads"] = [p.grad for p in model.dino.parameters()]
        self.seen["conv2_grad"] = model.adapter[0].conv2.weight.grad.clone()
        opt_params = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
        self.seen["dino_in_optimizer"] = any(id(p) in opt_params for p in model.dino.parameters())
        self.seen["adapter_in_optimizer"] = all(id(p) in opt_params for p in model.adapter.parameters())


def test_backbone_stays_frozen_and_in_eval_mode_while_adapters_train(tmp_path) -> None:
    _, cfg = load_config([*tiny_chrono_args(tmp_path), "model.freeze_backbone=true"])
    module = ChronoModule(cfg.model)
    module.train()
    assert module.model.training and not module.model.dino.training
    dino_before = {k: v.clone() for k, v in module.model.dino.state_dict().items()}
    conv2_before = module.model.adapter[0].conv2.weight.detach().clone()
    batch = synthetic_batch(num_queries=8)
    capture = CaptureTrainingState()
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=1.0, callbacks=[capture])
    trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))
    assert capture.seen["dino_training"] is False and capture.seen["adapter_training"] is True
    assert all(g is None for g in capture.seen["dino_grads"])
    assert capture.seen["conv2_grad"].abs().sum() > 0
    assert capture.seen["dino_in_optimizer"] is False and capture.seen["adapter_in_optimizer"] is True
    assert all(torch.equal(v, dino_before[k]) for k, v in module.model.dino.state_dict().items())
    assert not torch.equal(module.model.adapter[0].conv2.weight, conv2_before)


def test_train_py_runs_the_tiny_chrono_experiment_with_validation(tmp_path) -> None:
    args = [*tiny_chrono_args(tmp_path), "trainer.max_steps=2", "trainer.val_check_interval=2",
            "trainer.limit_val_batches=1", "checkpoint.every_n_steps=2"]
    trainer = train.run(args)
    assert isinstance(trainer.lightning_module, ChronoModule)
    assert trainer.global_step == 2
    metrics = trainer.callback_metrics
    assert "val/aj" in metrics and "val/zero_motion_aj" in metrics and "train/loss" in metrics
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "run" / "media").glob("tracks_step*.mp4"))


def test_correlation_and_soft_argmax_stay_float32_under_bf16_autocast() -> None:
    """bf16 would round the correlation to 2^-8 steps: ties that moved the argmax by whole cells."""
    model = tiny_chrono().eval()
    g = torch.Generator().manual_seed(1)
    feats = torch.nn.functional.normalize(torch.randn(1, 3, 8, 8, 16, generator=g), dim=-1)
    query_feats = torch.nn.functional.normalize(torch.randn(1, 5, 16, generator=g), dim=-1)
    with torch.no_grad():
        reference = model.track_chunk(feats, query_feats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = model.track_chunk(feats, query_feats)
    for ref, out in zip(reference, under_autocast, strict=True):
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref)
