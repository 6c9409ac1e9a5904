"""CoTracker3 at full width against outputs of the reference code (facebookresearch/co-tracker).

tests/data/cotracker3_golden.json was written by
``python tools/parity_cotracker3.py --reference-repo <co-tracker checkout> --write-golden ...``:
the reference models with deterministic formula weights on a tiny formula clip, in float64.
"""

import json
from pathlib import Path

import pytest
import torch

from models.cotracker3 import CoTrackerThree
from tools.parity_cotracker3 import formula_state_dict, golden_inputs

GOLDEN = json.loads((Path(__file__).parent / "data" / "cotracker3_golden.json").read_text())


@pytest.mark.parametrize("variant", [
    "online",  # two windows: the overlap copy and the support masking
    "offline",  # the 60-slot time embedding resampled to the 12-frame clip
])
def test_matches_reference_outputs(variant):
    model = CoTrackerThree(variant=variant, model_resolution=(GOLDEN["height"], GOLDEN["width"])).double().eval()
    model.load_official(formula_state_dict(model.state_dict()))
    video, queries = golden_inputs(GOLDEN[variant]["frames"])
    assert queries.tolist() == GOLDEN[variant]["queries"]
    with torch.no_grad():
        out = model(video, queries, iters=GOLDEN["iters"])
    for name, ours in (("tracks", out.tracks), ("vis", out.vis), ("conf", out.conf)):
        expected = torch.tensor(GOLDEN[variant][name], dtype=torch.float64)
        assert ours.shape == expected.shape
        # float64 on both sides; 1e-9 leaves room for different summation orders only
        assert (ours - expected).abs().max() <= 1e-9 * expected.abs().max(), name
