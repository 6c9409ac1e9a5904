"""TAPTRv2 training: the reference criterion, optimiser groups, EMA wiring, overfitting, a real train.py run."""

from __future__ import annotations

import math

import pytest
import torch

import train
from callbacks.ema import ExponentialMovingAverage
from lightning_modules.taptrv2 import TaptrV2Module
from lightning_modules.taptrv2_loss import TaptrV2LossConfig, taptrv2_loss
from models.taptrv2 import TaptrV2, TaptrV2Config
from tests.conftest import tracking_batch
from tests.tiny_run import TINY_MODEL, tiny_run_args
from train import load_config

LN2 = math.log(2.0)


def hand_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """3 frames of an 11x11 video (positions normalised by 10), 3 points, 2 decoder layers.

    Supervised (after the query frame, annotated): p0 at t1, t2; p1 at t2; p2 at t2 (its t1 is
    not annotated). p0 leaves the frame at t2 (occluded, no position loss); p1 is occluded but
    in the frame at t2 (position supervised). Every unsupervised entry carries a large error.
    """
    gt = torch.tensor([[[0.0, 0.0], [3.0, 3.0], [0.0, 0.0]],
                       [[5.0, 5.0], [3.0, 3.0], [1.0, 1.0]],
                       [[12.0, 5.0], [4.0, 6.0], [2.0, 2.0]]])[None]  # (1, T, N, 2)
    visible = torch.tensor([[True, True, True], [True, True, True], [False, False, True]])[None]
    valid = torch.ones_like(visible)
    valid[0, 1, 2] = False
    queries = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 3.0, 3.0], [0.0, 0.0, 0.0]]])
    batch = {"video": torch.zeros(1, 3, 3, 11, 11), "tracks": gt, "visible": visible, "valid": valid,
             "queries": queries}
    supervised = torch.zeros(1, 3, 3, dtype=torch.bool)
    supervised[0, 1, 0] = supervised[0, 2, 0] = supervised[0, 2, 1] = supervised[0, 2, 2] = True

    def predictions(errors: dict[tuple[int, int], tuple[float, float]]) -> torch.Tensor:
        pred = torch.where(supervised[..., None], gt, gt + 100.0)  # far off wherever nothing is supervised
        pred[0, 2, 0] = torch.tensor([50.0, 50.0])  # out-of-frame ground truth: ignored
        for (t, n), delta in errors.items():
            pred[0, t, n] = gt[0, t, n] + torch.tensor(delta)
        return pred

    layer_tracks = torch.stack([predictions({(1, 0): (1.0, 0.0), (2, 1): (0.0, 2.0)}),  # L1 0.1 + 0.2
                                predictions({(1, 0): (0.0, -2.0)})])  # 0.2
    apu_tracks = torch.stack([predictions({(2, 1): (1.0, 1.0)}),  # 0.2
                              predictions({(2, 2): (0.0, -1.0)})])  # 0.1
    logits = torch.zeros(1, 3, 3, 3)
    logits[0, 2, 0, 2] = 20.0  # p0 at t2 is occluded (label 2): a confident, correct logit
    logits[0, 1, 1] = 50.0  # p1's query frame: never supervised
    return layer_tracks, apu_tracks, logits, batch


def test_loss_on_a_hand_case() -> None:
    layer_tracks, apu_tracks, logits, batch = hand_case()
    terms = taptrv2_loss(layer_tracks, apu_tracks, logits, batch, TaptrV2LossConfig())
    # 3 position-supervised point-frames -> / 4; 4 visibility-supervised -> / 5.
    assert terms["position"].item() == pytest.approx((0.1 + 0.2) / 4 + 0.2 / 4, abs=1e-6)
    assert terms["position_last"].item() == pytest.approx(0.2 / 4, abs=1e-6)
    assert terms["apu_position"].item() == pytest.approx(0.2 / 4 + 0.1 / 4, abs=1e-6)
    # Zero logits: per class 0.25^2 ln2 x alpha 0.25 (target) or 0.75 (not): 1.75 * 0.25 * ln2 per entry.
    # The confident correct class-2 logit removes its 0.25 * 0.25 * ln2 target term.
    expected_vis = (3 * 1.75 * 0.25 * LN2 + 1.5 * 0.25 * LN2) / 5
    assert terms["visibility"].item() == pytest.approx(expected_vis, abs=1e-6)
    assert terms["loss"].item() == pytest.approx(5 * 0.125 + 5 * 0.075 + expected_vis, abs=1e-5)
    # Without ignore_outside the out-of-frame ground truth is supervised too: |50-12|/10 + 45/10 more, / 5.
    kept = taptrv2_loss(layer_tracks, apu_tracks, logits, batch, TaptrV2LossConfig(ignore_outside=False))
    assert kept["position_last"].item() == pytest.approx((0.2 + 3.8 + 4.5) / 5, abs=1e-6)


def reference_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """A seeded float64 case (queries at frames 0..4, ground truth partly outside a 50x40 frame)."""
    gen = torch.Generator().manual_seed(0)
    b, t, n, layers, h, w = 2, 9, 7, 5, 40, 50
    size = torch.tensor([w - 1.0, h - 1.0], dtype=torch.float64)
    query_t = torch.randint(0, 5, (b, n), generator=gen).double()
    gt = torch.rand(b, t, n, 2, generator=gen, dtype=torch.float64) * size * 1.2 - 2
    visible = torch.rand(b, t, n, generator=gen, dtype=torch.float64) > 0.3
    layer_tracks = torch.rand(layers, b, t, n, 2, generator=gen, dtype=torch.float64) * size
    apu_tracks = torch.rand(layers, b, t, n, 2, generator=gen, dtype=torch.float64) * size
    logits = torch.randn(b, t, n, 3, generator=gen, dtype=torch.float64) * 2
    batch = {"video": torch.zeros(b, t, 3, h, w), "tracks": gt, "visible": visible,
             "valid": torch.ones_like(visible), "queries": torch.cat([query_t[..., None], gt[:, 0]], -1)}
    return layer_tracks, apu_tracks, logits, batch


# Golden values: IDEA-Research/TAPTR v2 (a57063403581) PointTrackingCriterion with its TAPTRv2
# weight dict (get_weight_dict), fed `reference_case` in its layout (boxes / (W-1, H-1), labels
# occluded + 1, update mask t > query frame), float64: weighted total, pt_full_loss_ce, pt_full_loss_bbox.
REFERENCE_TOTAL = 32.8545548328653
REFERENCE_CE = 1.1954135261791807
REFERENCE_BBOX_LAST = 0.5647103438034238


def test_loss_equals_the_reference_criterion_on_a_seeded_case() -> None:
    terms = taptrv2_loss(*reference_case(), TaptrV2LossConfig())
    assert terms["loss"].item() == pytest.approx(REFERENCE_TOTAL, rel=1e-10)
    assert terms["visibility"].item() == pytest.approx(REFERENCE_CE, rel=1e-10)
    assert terms["position_last"].item() == pytest.approx(REFERENCE_BBOX_LAST, rel=1e-10)


def test_loss_rejects_mismatched_shapes() -> None:
    layer_tracks, apu_tracks, logits, batch = hand_case()
    with pytest.raises(ValueError, match="layer tracks"):
        taptrv2_loss(layer_tracks[:, :, :2], apu_tracks, logits, batch, TaptrV2LossConfig())
    with pytest.raises(ValueError, match="visibility logits"):
        taptrv2_loss(layer_tracks, apu_tracks, logits[..., :2], batch, TaptrV2LossConfig())


TINY_TAPTR = dict(d_model=16, nheads=2, norm_groups=4, enc_layers=1, dec_layers=2, dim_feedforward=32,
                  backbone_depths=(1, 1, 1, 1), backbone_width=4, model_resolution=(32, 32))


def synthetic_batch(num_queries: int = 16) -> dict[str, torch.Tensor]:
    return tracking_batch(num_frames=8, num_queries=num_queries)


def test_overfits_one_batch() -> None:
    torch.manual_seed(0)
    model = TaptrV2(TaptrV2Config(**TINY_TAPTR)).train()
    batch = synthetic_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        out = model(batch["video"], batch["queries"])
        terms = taptrv2_loss(out.layer_tracks, out.layer_apu_tracks, out.vis_logits, batch, TaptrV2LossConfig())
        opt.zero_grad()
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append({k: v.item() for k, v in terms.items()})
    assert history[-1]["loss"] < 0.3 * history[0]["loss"], [h["loss"] for h in history]
    assert history[-1]["position_last"] < 0.3 * history[0]["position_last"]
    assert history[-1]["apu_position"] < 0.3 * history[0]["apu_position"]


def tiny_taptr_args(tmp_path, **extra: object) -> list[str]:
    """tests/tiny_run.py's tiny data and logging overrides, with a tiny TAPTRv2 instead of its tracker."""
    data_args = tiny_run_args(tmp_path)[len(TINY_MODEL):]
    arch = {**TINY_TAPTR, "backbone_depths": "[1,1,1,1]", "model_resolution": "[32,32]"}
    return ["experiment=taptrv2_tiny_synthetic", *data_args, "data.val_clip_len=8",
            *[f"model.arch.{k}={v}" for k, v in arch.items()], *[f"{k}={v}" for k, v in extra.items()]]


def test_optimiser_groups_schedule_and_ema_callback(tmp_path) -> None:
    _, cfg = load_config(tiny_taptr_args(tmp_path, **{"model.lr": 2e-4, "model.backbone_lr": 1e-5,
                                                      "model.lr_milestones": "[3,5]"}))
    module = TaptrV2Module(cfg.model)
    groups = module.parameter_groups()
    backbone_ids = {id(p) for p in module.model.backbone.parameters()}
    assert [g["lr"] for g in groups] == [2e-4, 1e-5]
    assert {id(p) for p in groups[1]["params"]} == backbone_ids
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in module.model.parameters())  # each parameter once
    optimizer = module.configure_optimizers()
    opt, sched = optimizer["optimizer"], optimizer["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW) and all(g["weight_decay"] == 1e-4 for g in opt.param_groups)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2e-4] * 3 + [2e-5] * 2 + [2e-6])
    emas = [c for c in module.configure_callbacks() if isinstance(c, ExponentialMovingAverage)]
    assert len(emas) == 1 and emas[0].decay == cfg.model.ema_decay
    cfg.model.ema_decay = None
    assert not any(isinstance(c, ExponentialMovingAverage) for c in module.configure_callbacks())


def test_evaluation_pads_queries_with_seeded_dummies_and_returns_the_real_ones(tmp_path) -> None:
    _, cfg = load_config(tiny_taptr_args(tmp_path, **{"model.eval_num_queries": 20}))
    module = TaptrV2Module(cfg.model).eval()
    seen = []
    forward = module.model.forward
    module.model.forward = lambda video, queries: seen.append(queries.clone()) or forward(video, queries)
    video = torch.rand(1, 8, 3, 32, 32) * 255
    queries = torch.tensor([[[0.0, 5.0, 7.0], [3.0, 20.0, 11.0]]])
    with torch.no_grad():
        tracks, visible = module.predict_tracks(video, queries)
        module.predict_tracks(video, queries)
    assert tracks.shape == (1, 8, 2, 2) and visible.shape == (1, 8, 2)
    padded = seen[0]
    assert padded.shape == (1, 20, 3) and torch.equal(padded[:, :2], queries)
    dummies = padded[0, 2:]
    assert (dummies == dummies.round()).all() and dummies[:, 0].max() < 8  # integer pixels, early frames
    assert dummies[:, 1:].min() >= 2 and dummies[:, 1:].max() <= 29  # 1/16 of 32 px from the borders
    assert torch.equal(seen[1], padded)  # the same dummies every evaluation


@pytest.mark.parametrize("query_mode, backward", [("strided", None), ("first", True)])
def test_frames_before_the_query_come_from_the_time_reversed_pass(tmp_path, query_mode, backward) -> None:
    _, cfg = load_config(tiny_taptr_args(tmp_path, **{"model.eval_backward": "null" if backward is None else backward}))
    cfg.model.query_mode = query_mode  # as it follows data.query_mode of a TAP-Vid data config
    module = TaptrV2Module(cfg.model)
    calls = []

    def fake_pass(video, queries):  # forward pass: zeros / occluded; reversed pass: ones / visible
        calls.append(queries.clone())
        value = float(len(calls) - 1)
        B, T, N = video.shape[0], video.shape[1], queries.shape[1]
        return torch.full((B, T, N, 2), value), torch.full((B, T, N), bool(value))

    module._track_padded = fake_pass
    queries = torch.tensor([[[0.0, 1.0, 1.0], [3.0, 2.0, 2.0], [7.0, 3.0, 3.0]]])
    tracks, visible = module.predict_tracks(torch.zeros(1, 8, 3, 32, 32), queries)
    assert torch.equal(calls[1][0, :, 0], torch.tensor([7.0, 4.0, 0.0]))  # t -> T - 1 - t
    expected = torch.arange(8).view(8, 1) < queries[0, :, 0].view(1, 3)
    assert torch.equal(visible[0], expected) and torch.equal(tracks[0, ..., 0], expected.float())


def test_first_mode_evaluation_runs_forwards_only(tmp_path) -> None:
    _, cfg = load_config(tiny_taptr_args(tmp_path))
    module = TaptrV2Module(cfg.model)
    calls = []
    module._track_padded = lambda video, queries: calls.append(1) or (torch.zeros(1, 8, 1, 2), torch.ones(1, 8, 1, dtype=torch.bool))
    module.predict_tracks(torch.zeros(1, 8, 3, 32, 32), torch.tensor([[[3.0, 1.0, 1.0]]]))
    assert len(calls) == 1


def test_build_loads_resnet_weights_and_the_official_checkpoint(tmp_path) -> None:
    from lightning_modules.taptrv2 import build_taptrv2

    _, cfg = load_config(tiny_taptr_args(tmp_path))
    torch.manual_seed(1)
    reference = build_taptrv2(cfg.model)
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_()
    resnet = {**reference.backbone[0].body.state_dict(), "fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10)}
    torch.save(resnet, tmp_path / "resnet50.pth")
    ema = {k: v + 1 for k, v in reference.state_dict().items()}
    torch.save({"model": reference.state_dict(), "ema_model": ema, "epoch": 3}, tmp_path / "taptrv2.pth")
    cfg.model.backbone_weights = str(tmp_path / "resnet50.pth")
    with_backbone = build_taptrv2(cfg.model)
    assert torch.equal(with_backbone.backbone[0].body.conv1.weight, reference.backbone[0].body.conv1.weight)
    assert not torch.equal(with_backbone.input_proj[0][0].weight, reference.input_proj[0][0].weight)
    cfg.model.init_from = str(tmp_path / "taptrv2.pth")
    full = build_taptrv2(cfg.model)
    assert all(torch.equal(v, ema[k]) for k, v in full.state_dict().items())  # the release's EMA weights


def test_train_py_runs_the_tiny_experiment_with_ema_and_clipping(tmp_path) -> None:
    args = tiny_taptr_args(tmp_path, **{"trainer.max_steps": 2, "trainer.val_check_interval": 2,
                                        "trainer.limit_val_batches": 1, "checkpoint.every_n_steps": 2})
    trainer = train.run(args)
    assert isinstance(trainer.lightning_module, TaptrV2Module)
    assert trainer.global_step == 2 and trainer.gradient_clip_val == 0.1
    metrics = trainer.callback_metrics
    assert {"val/aj", "val/zero_motion_aj", "train/loss", "train/loss_apu_position"} <= set(metrics)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ema = next(v for k, v in state["callbacks"].items() if "ExponentialMovingAverage" in k)
    assert ema["updates"] == 2
    name = "model.class_embed.0.weight"
    assert not torch.equal(ema["averaged"][name], state["state_dict"][name])
