"""tools/bench_taptrv2.py: one case in process, including the memory-only mode."""

from __future__ import annotations

import argparse

from tools import bench_taptrv2


def _args(**kw) -> argparse.Namespace:
    base = dict(model="taptrv2", frames=8, size=64, points=[5], taptr_resolution=[64, 64],
                cotracker_resolution=[64, 64], iters=1, repeats=1, device="cpu", memory_only=False)
    return argparse.Namespace(**{**base, **kw})


def test_memory_only_case_reports_the_peak_and_skips_time_and_flops():
    row = bench_taptrv2.run_case(_args(memory_only=True))
    assert row["seconds"] is None and row["gflops"] is None
    assert row["peak_gib"] > 0.1  # the process's resident set: torch and the published-size model at least


def test_live_memory_probe_finds_the_peak_and_its_largest_tensor():
    import torch

    from tools.profile_taptrv2_memory import LiveMemory

    with LiveMemory(top=3) as probe:
        big = torch.ones(1000, 1000)  # 4 MB
        small = big.sum(0)
        del big
        after = small * 2
    assert 4_000_000 <= probe.peak < 4_100_000
    assert probe.at_peak[0][1] == 4_000_000 and probe.at_peak[0][0][1] == (1000, 1000)
    assert probe.bytes == after.untyped_storage().nbytes() + small.untyped_storage().nbytes()


def test_profile_script_runs_on_a_tiny_clip(capsys):
    from tools import profile_taptrv2_memory

    profile_taptrv2_memory.main(["--frames", "8", "--resolution", "64", "--points", "4", "--top", "3"])
    out = capsys.readouterr().out
    assert "peak live activations" in out and out.count("MiB") == 3
