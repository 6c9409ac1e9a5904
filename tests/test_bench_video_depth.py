"""tools/bench_video_depth.py runs end to end on a CPU at tiny sizes (the GPU run uses the same code)."""

from __future__ import annotations

import json

import pytest

from tools import bench_video_depth

TINY = ["--tiny", "--encoders", "vits", "--size", "28", "--frames", "2", "--tracks", "6", "--repeats", "1"]


def test_tiny_cpu_run_times_every_variant_and_mode(tmp_path, capsys):
    bench_video_depth.main(TINY + ["--json", str(tmp_path / "rows.json")])
    out = capsys.readouterr().out
    assert "| vits | 6 | forward |" in out and "| vits | 6 | train |" in out
    assert "windowed overhead" in out and "dense overhead" in out
    rows = json.loads((tmp_path / "rows.json").read_text())
    flops = [r for r in rows if r["kind"] == "flops"]
    assert len(flops) == 1 and flops[0]["video_flops"] > flops[0]["image_flops"] > 0
    latency = {r["mode"]: r["seconds"] for r in rows if r["kind"] == "latency"}
    assert set(latency) == {"forward", "train"}
    for seconds in latency.values():
        assert set(seconds) == {"image", "windowed", "dense"}
        assert all(s["wall_s"] > 0 and s["cpu_s"] > 0 for s in seconds.values())
        assert seconds["image"]["wall_ratio"] == 1.0


def test_tiny_cpu_run_under_bf16_autocast(capsys):
    bench_video_depth.main(TINY + ["--dtype", "bf16", "--modes", "forward", "--attention", "windowed"])
    out = capsys.readouterr().out
    assert "bf16" in out and "| vits | 6 | forward |" in out


def test_cuda_without_a_gpu_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(bench_video_depth.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        bench_video_depth.main(TINY + ["--device", "cuda"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_tiny_cpu_memory_cases_run_in_fresh_processes(tmp_path):
    bench_video_depth.main(TINY + ["--modes", "forward", "--memory", "--json", str(tmp_path / "rows.json")])
    rows = json.loads((tmp_path / "rows.json").read_text())
    memory = [r for r in rows if r["kind"] == "memory"]
    assert len(memory) == 1
    peaks = memory[0]["peaks"]
    assert set(peaks) == {"image", "windowed", "dense"}
    assert all(p is not None and p["peak_gib"] > 0 for p in peaks.values())
