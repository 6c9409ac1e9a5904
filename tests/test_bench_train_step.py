"""`trainer.channels_last` keeps weights and outputs; tools/bench_train_step.py produces a sane table."""

from __future__ import annotations

import json
import math

import pytest
import torch

from models.memory_format import has_4d_weights
from tools import bench_train_step
from train import build_module, load_config

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
    assert rows[0]["flops_per_step"] == rows[1]["flops_per_step"] > 0  # autocast changes no FLOP count
    assert rows[0]["peak_tflops"] is None and "mfu" not in rows[0]  # CPUs have no peak rate
    table = capsys.readouterr().out
    assert "| taptrv2 | fp32 |" in table and "| taptrv2 | bf16 |" in table


def test_compiled_rows_take_the_flops_of_their_family_and_get_an_mfu():
    rows = [{"family": "chrono", "variant": "fp32", "steps_per_s": 2.0, "peak_mib": 100.0,
             "flops_per_step": 3e12, "peak_tflops": 500.0},
            {"family": "chrono", "variant": "bf16_compile", "steps_per_s": 5.0, "peak_mib": 50.0,
             "flops_per_step": None, "peak_tflops": 1000.0},
            {"family": "chrono", "variant": "compile", "failed": "timed out after 90 s"}]
    bench_train_step.add_ratios(rows)
    assert rows[0]["tflops_per_s"] == pytest.approx(6.0) and rows[0]["mfu"] == pytest.approx(6.0 / 500)
    assert rows[1]["tflops_per_s"] == pytest.approx(15.0) and rows[1]["mfu"] == pytest.approx(15.0 / 1000)
    assert rows[1]["speed_ratio"] == pytest.approx(2.5) and rows[1]["memory_ratio"] == pytest.approx(0.5)
    table = bench_train_step.markdown_table(rows)
    assert "| chrono | bf16_compile | 5.000 | 2.50 | 50.0 | 0.50 | 15.0 | 1.5% | |" in table
    assert "| chrono | compile | | | | | | | failed: timed out after 90 s |" in table


def test_a_spent_budget_skips_cases_and_the_json_keeps_every_row(tmp_path):
    out = tmp_path / "rows.json"
    rows = bench_train_step.main(["--families", "chrono", "taptrv2", "--variants", "bf16", "--budget-s", "0",
                                  "--device", "cpu", "--json", str(out)])
    assert [(r["family"], r["variant"]) for r in rows] == [("chrono", "fp32"), ("chrono", "bf16"),
                                                           ("taptrv2", "fp32"), ("taptrv2", "bf16")]
    assert all(r["skipped"] == "time budget spent" for r in rows)
    assert json.loads(out.read_text())["rows"] == rows


@pytest.mark.slow
def test_published_tracker_configs_get_a_full_batch_of_queries(tmp_path):
    """The synthetic clips are sized so that the published query count finds eligible tracks (a clip of
    exactly num_queries tracks never does: some are hidden at the first and middle frames)."""
    cfg = bench_train_step.load_bench_config(
        bench_train_step.family_overrides("chrono", "published", str(tmp_path / "cache"), []))
    batch = bench_train_step.training_batch(cfg)
    assert batch["queries"].shape == (cfg.data.batch_size, cfg.data.num_queries, 3)
    assert batch["video"].shape[1] == cfg.data.clip_len


@pytest.mark.parametrize("family_major", [False, True])
def test_cases_run_variant_by_variant_or_family_by_family(family_major, capsys):
    bench_train_step.main(["--families", "chrono", "taptrv2", "--variants", "bf16", "--budget-s", "0",
                           "--device", "cpu", *(["--family-major"] if family_major else [])])
    ran = [(r["family"], r["variant"]) for r in map(json.loads, capsys.readouterr().err.splitlines())]
    if family_major:
        assert ran == [("chrono", "fp32"), ("chrono", "bf16"), ("taptrv2", "fp32"), ("taptrv2", "bf16")]
    else:
        assert ran == [("chrono", "fp32"), ("taptrv2", "fp32"), ("chrono", "bf16"), ("taptrv2", "bf16")]
