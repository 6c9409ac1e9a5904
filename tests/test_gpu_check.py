"""tools/gpu_check.py: its CPU mode runs every part end to end; its parsers and time limits work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tools import gpu_check

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_mode_runs_every_part_and_records_each(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "tools/gpu_check.py", "--out", str(out), "--cpu", "--budget-s", "240",
           "--work-dir", str(tmp_path / "work")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "WANDB_MODE": "disabled"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]  # scratch stays out
    data = json.loads((out / "gpu_check.json").read_text())
    parts = data["parts"]
    assert data["finished"] and data["mode"] == "cpu" and list(parts) == list(gpu_check.PARTS)
    assert {"date_utc", "torch", "python", "commit"} <= set(data["environment"])

    tests = parts["gpu_tests"]
    assert tests["status"] == "skipped" and "no CUDA" in tests["reason"], tests
    assert "tests/test_gpu.py" in tests["files"] and tests["counts"]["skipped"] >= 19

    demo = parts["taptrv2_demo"]
    assert demo["status"] == "ok", demo.get("output_tail")
    final = demo["final"]
    assert 0 <= final["aj"] <= 1 and 0 < final["zero_motion_aj"] <= 1 and 0 <= final["oa"] <= 1

    bench = parts["train_step_bench"]
    assert bench["status"] == "ok" and bench["measured"] == 2, bench
    assert [r["variant"] for r in bench["rows"]] == ["fp32", "bf16"]
    assert all(r["steps_per_s"] > 0 and r["flops_per_step"] > 0 for r in bench["rows"])

    latency = parts["tracktention_latency"]
    assert latency["status"] == "ok", latency
    overheads = [k for table in latency["tables"] for row in table for k in row if "overhead" in k.lower()]
    assert overheads, latency["tables"]

    log = (out / "gpu_check.log").read_text()
    assert "| part | status | s | result |" in log and "[train_step_bench] | taptrv2 | fp32 |" in log


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine this would run the whole check")
def test_without_cuda_every_part_is_skipped_and_says_why(tmp_path):
    data = gpu_check.main(["--out", str(tmp_path)])
    assert all(p["status"] == "skipped" and "no CUDA" in p["reason"] for p in data["parts"].values())
    assert json.loads((tmp_path / "gpu_check.json").read_text())["parts"] == data["parts"]


def test_a_process_past_its_time_limit_is_stopped_with_its_children(tmp_path):
    rec = gpu_check.Recorder(tmp_path, {})
    start = time.monotonic()
    cmd = [sys.executable, "-c", "import subprocess, sys, time; print('up', flush=True); "
           "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"]
    done = gpu_check.run_logged(rec, "sleeper", cmd, timeout=3.0, env=dict(os.environ))
    assert done.returncode is None and done.lines == ["up"]
    assert time.monotonic() - start < 10  # a live grandchild would hold the pipe open for the 10 s join
    assert "[sleeper] up" in (tmp_path / "gpu_check.log").read_text()


def test_markdown_tables_are_read_by_header():
    text = ("FLOPs\n\n| encoder | tracks | overhead |\n|---|---:|---|\n| vits | 576 | +12.0% |\n| vitb | 576 | +8.1% |\n"
            "\ndone\n| a | b |\n|---|---|\n| 1 | 2 |")
    assert gpu_check.markdown_tables(text) == [
        [{"encoder": "vits", "tracks": "576", "overhead": "+12.0%"},
         {"encoder": "vitb", "tracks": "576", "overhead": "+8.1%"}],
        [{"a": "1", "b": "2"}]]
    summary = gpu_check.summary_line("tracktention_latency", {"tables": gpu_check.markdown_tables(text)})
    assert summary == "vits 576: +12.0%; vitb 576: +8.1%"


def test_junit_results_give_each_outcome_and_message(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite><testcase classname="tests.test_gpu" name="test_a" time="1.5"/>'
        '<testcase classname="tests.test_gpu" name="test_b" time="0.1"><failure message="boom">trace</failure>'
        '</testcase><testcase classname="tests.test_gpu" name="test_c" time="0"><skipped message="needs CUDA"/>'
        '</testcase></testsuite></testsuites>')
    assert gpu_check.junit_results(xml) == [
        {"test": "tests.test_gpu::test_a", "outcome": "passed", "seconds": 1.5},
        {"test": "tests.test_gpu::test_b", "outcome": "failed", "seconds": 0.1, "message": "boom\ntrace"},
        {"test": "tests.test_gpu::test_c", "outcome": "skipped", "seconds": 0.0, "message": "needs CUDA"}]


def test_validations_are_read_from_the_csv_logger(tmp_path):
    metrics = tmp_path / "logs" / "version_0" / "metrics.csv"
    metrics.parent.mkdir(parents=True)
    metrics.write_text("epoch,perf/step_time_s,step,train/loss,val/aj,val/zero_motion_aj\n"
                       "0,0.05,9,2.5,,\n0,,499,,0.30,0.20\n0,0.04,509,1.5,,\n0,,650,,0.35,0.20\n")
    validations, last = gpu_check.read_validations(tmp_path)
    assert validations == [{"step": 499.0, "val/aj": 0.30, "val/zero_motion_aj": 0.20},
                           {"step": 650.0, "val/aj": 0.35, "val/zero_motion_aj": 0.20}]
    assert last == {"step": 509.0, "train/loss": 1.5, "perf/step_time_s": 0.04}


def test_verbose_pytest_lines_give_the_outcomes_of_a_stopped_run():
    lines = ["============ test session starts ============",
             "tests/test_gpu.py::test_two_bf16_training_steps_on_cuda[chrono] PASSED      [  5%]",
             "tests/test_gpu.py::test_attention_runs_on_fused_kernels_on_cuda[taptrv2] FAILED [ 10%]",
             "tests/test_gpu.py::test_compiled_training_steps_on_cuda "]
    assert gpu_check.verbose_results(lines) == [
        {"test": "tests/test_gpu.py::test_two_bf16_training_steps_on_cuda[chrono]", "outcome": "passed"},
        {"test": "tests/test_gpu.py::test_attention_runs_on_fused_kernels_on_cuda[taptrv2]", "outcome": "failed"}]


def test_parts_and_shares_are_parsed_and_checked(capsys: pytest.CaptureFixture[str]) -> None:
    args = gpu_check.parse_args(["--out", "x", "--parts", "gpu_tests", "taptrv2_demo", "--share", "taptrv2_demo=0.6"])
    assert args.parts == ["gpu_tests", "taptrv2_demo"] and args.share == {"taptrv2_demo": 0.6}
    for bad, named in ((["--share", "demo=0.5"], "unknown part"), (["--share", "taptrv2_demo=lots"], "PART=FRACTION"),
                       (["--parts", "everything"], "--parts")):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(["--out", "x", *bad])
        assert named in capsys.readouterr().err
