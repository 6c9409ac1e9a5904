"""Compare tracklight's pseudo-label loss with co-tracker's ``train_on_real_data.py::forward_batch``.

    python tools/parity_pseudolabel_loss.py --reference-repo /path/to/co-tracker \
        [--write-golden tests/data/pseudolabel_loss_golden.json]

For each case (student variant x teacher type) both sides get the same float64 clip, the same
queries, the same teacher outputs and the same student weights (deterministic formula weights
of the full-width CoTracker3, loaded into the reference model and, through the official
checkpoint layout, into ours):

- reference: ``forward_batch`` with its SIFT sampler replaced by the fixed queries and a stub
  teacher of the case's type that checks how many support points it was given (5x5 grid for
  online teachers, 100 uniform for offline, none for TAPIR) and returns the fixed outputs
  for queries and support points; the loss is the sum of its ``loss`` entries;
- ours: ``make_pseudo_labels`` with a stub teacher of the same type (support points appended
  by our rules, outputs cut back, thresholded), then ``forward_train`` and
  ``pseudolabel_loss``.

The reference is imported from the given checkout; its training script's imports that the
loss does not use (torchvision, Lightning Lite, TAPIR, visualiser, evaluator) are stubbed.
``--write-golden`` stores the reference's loss terms, which tests/test_pseudolabel_parity.py
compares against without the reference code.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import types
from argparse import Namespace
from pathlib import Path

import torch

from lightning_modules.cotracker3_pseudolabel_loss import PseudoLabelLossConfig, pseudolabel_loss
from lightning_modules.pseudolabel_targets import make_pseudo_labels
from lightning_modules.pseudolabel_teachers import Teacher, TeacherConfig
from models.cotracker3 import CoTrackerThree
from models.cotracker3_predictor import CoTrackerThreePredictor, PredictorOutput
from tools.parity_cotracker3 import GOLDEN as MODEL_GOLDEN
from tools.parity_cotracker3 import formula_state_dict, golden_inputs

TARGET = 1e-6
FRAMES = 20  # two online windows: 0-15 and 8-19 (padded, trimmed)
ITERS = 3  # (the recipe trains with 4; 3 distinct gamma weights suffice here)
# (t, x, y) on the 32x48 formula clip; integer values as the reference's SIFT sampler returns.
QUERIES = [[0, 10, 7], [0, 30, 20], [3, 41, 3], [5, 5, 25], [9, 22, 14], [14, 36, 28]]
SUPPORT = {"online_cotracker_three": 25, "offline_cotracker_three": 100, "tapir": 0}
CASES = [  # (student variant, reference teacher type, SIFT found enough keypoints)
    ("online", "online_cotracker_three", True),
    ("online", "offline_cotracker_three", True),
    ("offline", "offline_cotracker_three", True),
    ("offline", "online_cotracker_three", True),
    ("online", "tapir", True),
    ("online", "online_cotracker_three", False),  # uniform fallback: the sample adds nothing
]


def case_name(student: str, teacher: str, found: bool) -> str:
    return f"{student}_student_{teacher.split('_')[0]}_teacher" + ("" if found else "_no_keypoints")


def clip() -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 formula video (1, T, 3, 32, 48) and the queries (1, N, 3)."""
    video, _ = golden_inputs(FRAMES)
    return video, torch.tensor([QUERIES], dtype=torch.float64)


def teacher_outputs(queries: torch.Tensor, teacher_type: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed teacher tracks (1, T, N+S, 2), visibility probabilities and confidences (1, T, N+S).

    Real tracks wander smoothly from their query point (differently per teacher type);
    visibility crosses 0.9 now and then, so both loss terms have points. Support tracks are
    far off: any left over would show.
    """
    n, T, num_support = queries.shape[1], FRAMES, SUPPORT[teacher_type]
    phase = list(SUPPORT).index(teacher_type)
    t = torch.arange(T, dtype=torch.float64)[:, None]
    k = torch.arange(n, dtype=torch.float64)[None] + phase
    xy = queries[0, None, :, 1:] + torch.stack([4 * torch.sin(0.3 * t + k), 3 * torch.cos(0.2 * t + 0.5 * k)], -1)
    vis = torch.sigmoid(3 + 2 * torch.sin(0.7 * t + 1.3 * k))
    conf = torch.sigmoid(torch.cos(0.4 * t + k))
    tracks = torch.cat([xy, torch.full((T, num_support, 2), 1000.0, dtype=torch.float64)], 1)[None]
    vis = torch.cat([vis, torch.full((T, num_support), 0.5, dtype=torch.float64)], 1)[None]
    conf = torch.cat([conf, torch.full((T, num_support), 0.5, dtype=torch.float64)], 1)[None]
    return tracks, vis, conf


def student_model(variant: str) -> CoTrackerThree:
    model = CoTrackerThree(variant=variant, model_resolution=(MODEL_GOLDEN["height"], MODEL_GOLDEN["width"]),
                           activation_checkpointing=False).double()
    model.load_official(formula_state_dict(model.state_dict()))
    return model


class _FixedPredictor(CoTrackerThreePredictor):
    """A CoTracker3 teacher whose outputs are the fixed ones (checks the number of queries)."""

    def __init__(self, variant: str, expected_queries: int, outputs: tuple[torch.Tensor, ...]) -> None:
        super().__init__(CoTrackerThree(variant=variant, window_len=4 if variant == "online" else 6, latent_dim=8,
                                        corr_levels=1, corr_radius=1, corr_hidden_dim=8, corr_out_dim=8,
                                        hidden_size=8, num_heads=1, time_depth=1, space_depth=1,
                                        num_virtual_tracks=1, posenc_freqs=1), support_grid_size=0)
        self.expected, self.outputs = expected_queries, outputs

    def forward(self, video, queries=None, **_):  # noqa: ANN001
        assert queries.shape[1] == self.expected, (queries.shape, self.expected)
        tracks, vis, conf = self.outputs
        return PredictorOutput(tracks, vis > 0.5, vis, conf)


class _FixedTracker(torch.nn.Module):
    """A non-CoTracker teacher (Chrono / TAPTRv2 stand-in) returning a fixed visible decision."""

    def __init__(self, expected_queries: int, outputs: tuple[torch.Tensor, ...]) -> None:
        super().__init__()
        self.expected, self.outputs = expected_queries, outputs

    def predict_tracks(self, video: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert queries.shape[1] == self.expected, (queries.shape, self.expected)
        tracks, vis, _ = self.outputs
        return tracks, vis > 0.9  # TAPIR-like: the decision itself


class _FixedSampler:
    def __init__(self, queries: torch.Tensor, found: bool) -> None:
        self.queries, self.found = queries, found

    def __call__(self, video: torch.Tensor, num: int, generator=None):  # noqa: ANN001
        assert num == self.queries.shape[1]
        return self.queries, torch.full((self.queries.shape[0],), self.found)


def ours(student: str, teacher_type: str, found: bool) -> dict[str, float]:
    """Our loss terms for one case (the golden test calls this too)."""
    video, queries = clip()
    support = SUPPORT[teacher_type]
    outputs = teacher_outputs(queries, teacher_type)
    n = queries.shape[1]
    if teacher_type == "tapir":
        teacher = Teacher(TeacherConfig(checkpoint="tapir_stub.ckpt", kind="tracklight"), _FixedTracker(n, outputs))
    else:
        variant = teacher_type.split("_")[0]
        teacher = Teacher(TeacherConfig(checkpoint=f"{variant}_stub.pth", kind=f"cotracker3_{variant}"),
                          _FixedPredictor(variant, n + support, outputs))
    labels = make_pseudo_labels(video, n, teacher, _FixedSampler(queries, found), torch.Generator().manual_seed(0))
    model = student_model(student).train()
    windows = model.forward_train(video, labels.queries, iters=ITERS)
    terms = pseudolabel_loss([w.__dict__ for w in windows], labels.as_batch(), PseudoLabelLossConfig(),
                             mask_before_query=student == "online")
    w = PseudoLabelLossConfig()
    return {"flow": float(w.visible * terms["visible"].detach()),
            "flow_invisible": float(w.occluded * terms["occluded"].detach()), "total": float(terms["loss"].detach())}


# ---------------------------------------------------------------------- reference side
def import_reference(repo: Path) -> dict[str, object]:
    if not (repo / "train_on_real_data.py").is_file():
        raise SystemExit(f"{repo} is not a co-tracker checkout (train_on_real_data.py not found)")
    sys.path.insert(0, str(repo))

    def stub(name: str, **attrs: object) -> None:
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules.setdefault(name, module)

    unused = type("Unused", (), {})
    stub("torchvision")
    stub("pytorch_lightning")
    stub("pytorch_lightning.lite", LightningLite=unused)
    stub("cotracker.models.bootstap_predictor", TAPIRPredictor=unused)
    stub("cotracker.utils.visualizer", Visualizer=unused)
    stub("cotracker.evaluation.core.evaluator", Evaluator=unused)
    stub("cotracker.utils.train_utils", Logger=unused, get_eval_dataloader=None, sig_handler=None,
         term_handler=None, run_test_eval=None)
    import train_on_real_data
    from cotracker.datasets.utils import CoTrackerData
    from cotracker.models.core.cotracker.cotracker3_offline import CoTrackerThreeOffline
    from cotracker.models.core.cotracker.cotracker3_online import CoTrackerThreeOnline

    return {"script": train_on_real_data, "data": CoTrackerData, "online": CoTrackerThreeOnline,
            "offline": CoTrackerThreeOffline}


def reference(ref: dict[str, object], student: str, teacher_type: str, found: bool) -> dict[str, float]:
    video, queries = clip()
    support = SUPPORT[teacher_type]
    outputs = teacher_outputs(queries, teacher_type)
    n, T = queries.shape[1], FRAMES
    script = ref["script"]
    # The reference's SIFT returns integers; too few of them send it to uniform queries.
    sift = queries.long() if found else queries.long()[:, :2]
    script.get_sift_sampled_pts = lambda *a, **k: sift

    def teacher(video_in: torch.Tensor, queries_cat: torch.Tensor):  # noqa: ANN202
        assert queries_cat.shape[1] == n + support, (queries_cat.shape, n + support)
        tracks, vis, conf = outputs
        return (tracks, vis, conf, None) if "cotracker_three" in teacher_type else (tracks, vis > 0.9)

    window = 16 if student == "online" else 60
    model = ref[student](stride=4, corr_radius=3, window_len=window, linear_layer_for_vis_conf=True,
                         model_resolution=(MODEL_GOLDEN["height"], MODEL_GOLDEN["width"])).double().train()
    model.load_state_dict(formula_state_dict(model.state_dict()))
    batch = ref["data"](video=video, trajectory=torch.zeros(1, T, n, 2), visibility=torch.ones(1, T, n),
                        valid=torch.ones(1, T, n, dtype=torch.float64))
    args = Namespace(real_data_filter_sift=True, real_data_filter_superpoint=False, train_grid_size=5,
                     train_sift_size=0, model_name="cotracker_three", train_iters=ITERS,
                     offline_model=student == "offline", sliding_window_len=16, train_only_visible_points=False,
                     sequence_len=T)
    output = script.forward_batch(batch, model, args, teacher_models=[(teacher_type, teacher)])
    flow = float(output["flow"]["loss"].detach())
    invisible = float(output["flow_invisible"]["loss"].detach()) if "flow_invisible" in output else 0.0
    return {"flow": flow, "flow_invisible": invisible, "total": flow + invisible}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-repo", type=Path, required=True)
    parser.add_argument("--write-golden", type=Path)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    ref = import_reference(args.reference_repo)
    golden: dict[str, object] = {"frames": FRAMES, "iters": ITERS, "queries": QUERIES, "cases": {}}
    worst = 0.0
    for student, teacher_type, found in CASES:
        expected = reference(ref, student, teacher_type, found)
        got = ours(student, teacher_type, found)
        errors = {k: abs(got[k] - v) / max(abs(v), 1e-12) for k, v in expected.items() if v or got[k]}
        worst = max([worst, *errors.values()])
        name = case_name(student, teacher_type, found)
        print(f"{name:<48} reference total {expected['total']:.12f}  ours {got['total']:.12f}  "
              f"max rel diff {max(errors.values(), default=0.0):.2e}")
        golden["cases"][name] = {"student": student, "teacher": teacher_type, "keypoints_found": found, **expected}
    print(f"worst relative difference {worst:.2e} (target {TARGET:g}): {'PASS' if worst <= TARGET else 'FAIL'}")
    if args.write_golden:
        cases = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in golden.pop("cases").items())
        head = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in golden.items())
        args.write_golden.write_text(f"{{{head}, \"cases\": {{\n{cases}\n}}}}\n")
        print(f"wrote {args.write_golden}")
    if not math.isfinite(worst) or worst > TARGET:
        sys.exit(1)


if __name__ == "__main__":
    main()
