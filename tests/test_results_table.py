"""tools/results_table.py: the README's default-run table from training runs over several seeds."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.tiny_run import tiny_run_args
from tools import results_table

KEYS = ("aj", "delta_avg", "oa")


def _write_log(run_dir: Path, rows: dict[int, tuple[float, float, float]], baseline=(0.075, 0.137, 0.848)) -> None:
    path = run_dir / "logs" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    fields = ["step", "train/loss"] + [f"val/{k}" for k in KEYS] + [f"val/zero_motion_{k}" for k in KEYS]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for step, values in rows.items():
            writer.writerow({"step": step - 2, "train/loss": 1.0})  # a training row: skipped
            writer.writerow({"step": step - 1, **{f"val/{k}": v for k, v in zip(KEYS, values)},
                             **{f"val/zero_motion_{k}": v for k, v in zip(KEYS, baseline)}})


def test_validation_rows_are_read_in_percent_at_their_global_step(tmp_path):
    _write_log(tmp_path, {200: (0.086, 0.144, 0.538), 400: (0.156, 0.259, 0.683)})
    rows = results_table.validation_rows(tmp_path)
    assert sorted(rows) == [200, 400]  # Lightning writes validation rows at global step - 1
    assert rows[400]["aj"] == pytest.approx(15.6) and rows[200]["zero_motion_oa"] == pytest.approx(84.8)


def test_the_table_shows_the_mean_and_the_spread_over_seeds(tmp_path):
    per_seed = {}
    for seed, aj in ((1, 0.10), (2, 0.14)):
        _write_log(tmp_path / f"seed{seed}", {200: (aj, 0.2, 0.7)})
        per_seed[seed] = results_table.validation_rows(tmp_path / f"seed{seed}")
    lines = results_table.markdown(per_seed, [200]).splitlines()
    assert lines[0] == "| step | AJ | δ_avg | OA |"
    assert lines[2] == "| zero-motion baseline | 7.5 | 13.7 | 84.8 |"  # the same for every seed: no spread
    assert lines[3] == "| 200 | 12.0 (10.0–14.0) | 20.0 | 70.0 |"
    assert "| 2 | 200 | 14.0 | 20.0 | 70.0 |" in results_table.per_seed_table(per_seed, [200])


@pytest.mark.slow
def test_one_command_trains_each_seed_and_prints_the_table(tmp_path, capsys):
    extra = [a for a in tiny_run_args(tmp_path) if not a.startswith(("run_dir=", "logger="))]
    results_table.main(["--seeds", "1", "2", "--steps", "2", "--val-every", "1", "--report", "2",
                        "--out", str(tmp_path / "out"), "--", *extra])
    out = capsys.readouterr().out
    assert "| zero-motion baseline |" in out and "\n| 2 | " in out and "| 1 | 2 | " in out and "| 2 | 2 | " in out
    assert "Wall time per 500 steps" in out and "python tools/results_table.py --seeds 1 2 --steps 2" in out
    with pytest.raises(SystemExit, match="is not empty"):  # never trains into earlier results
        results_table.main(["--seeds", "1", "--out", str(tmp_path / "out")])
    results_table.main(["--collect", str(tmp_path / "out")])
    assert "| zero-motion baseline |" in capsys.readouterr().out
