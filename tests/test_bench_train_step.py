"""`trainer.channels_last` keeps weights and outputs; tools/bench_train_step.py produces a sane table."""

from __future__ import annotations

import math

import pytest
import torch

from configs.loader import load_config
from models.memory_format import has_4d_weights
from tools import bench_train_step
from train import build_module

TINY_TAPTR = ["experiment=taptrv2_tiny_synthetic", "model.arch.d_model=16", "model.arch.nheads=2",
              "model.arch.norm_groups=4", "model.arch.dim_feedforward=32", "model.arch.backbone_width=4",
              "model.arch.dec_layers=2", "model.arch.model_resolution=[32,32]"]


def test_channels_last_keeps_the_state_dict_and_the_outputs():
    _, plain_cfg = load_config(TINY_TAPTR)
    _, cl_cfg = load_config(TINY_TAPTR + ["trainer.channels_last=true"])
    torch.manual_seed(0)
    plain = build_module(plain_cfg).model.eval()
    torch.manual_seed(0)
    converted = build_module(cl_cfg).model.eval()
    assert has_4d_weights(converted)
    conv = next(p for p in converted.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    a, b = plain.state_dict(), converted.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    g = torch.Generator().manual_seed(1)
    video = torch.rand(1, 8, 3, 32, 32, generator=g) * 255
    queries = torch.cat([torch.zeros(1, 6, 1), torch.rand(1, 6, 2, generator=g) * 31], -1)
    with torch.no_grad():
        out_a, out_b = plain(video, queries), converted(video, queries)
    torch.testing.assert_close(out_b.layer_tracks, out_a.layer_tracks, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_b.vis_logits, out_a.vis_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_bench_reports_positive_speeds_and_finite_ratios(tmp_path, capsys):
    overrides = [f"--override={o}" for o in TINY_TAPTR[1:]] + ["--override=data.clip_len=8",
                                                               "--override=data.synthetic.height=32",
                                                               "--override=data.synthetic.width=32"]
    rows = bench_train_step.main(["--families", "taptrv2", "--variants", "fp32", "bf16", "--warmup", "1",
                                  "--steps", "1", "--device", "cpu", "--threads", "1",
                                  "--cache-dir", str(tmp_path / "cache"), *overrides])
    assert [r["variant"] for r in rows] == ["fp32", "bf16"]
    for r in rows:
        assert r["steps_per_s"] > 0, r
        assert math.isfinite(r["speed_ratio"]) and math.isfinite(r["memory_ratio"]), r
    assert rows[0]["speed_ratio"] == 1.0
    table = capsys.readouterr().out
    assert "| taptrv2 | fp32 |" in table and "| taptrv2 | bf16 |" in table
