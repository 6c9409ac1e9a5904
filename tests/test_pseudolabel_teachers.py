"""Teachers for pseudo-label training: loading every kind, rules, the weighted draw, cut-back."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from lightning_modules.pseudolabel_targets import make_pseudo_labels
from lightning_modules.pseudolabel_teachers import Teacher, TeacherConfig, TeacherError, TeacherSet, load_teacher
from models.cotracker3 import CoTrackerThree
from models.keypoint_queries import KeypointQuerySampler, QuerySamplingConfig
from tests.tiny_run import TINY_MODEL
from train import build_module, load_config

TINY_ARCH = dict(window_len=4, latent_dim=8, corr_levels=2, corr_radius=1, corr_hidden_dim=16, corr_out_dim=8,
                 hidden_size=16, num_heads=2, time_depth=1, space_depth=1, num_virtual_tracks=4, posenc_freqs=2,
                 model_resolution=(32, 32))


def official(tmp_path, variant: str) -> TeacherConfig:
    arch = {**TINY_ARCH, "window_len": 4 if variant == "online" else 6}
    torch.manual_seed(0)
    path = tmp_path / f"tiny_{variant}.pth"
    torch.save(CoTrackerThree(variant=variant, **arch).state_dict(), path)
    return TeacherConfig(checkpoint=str(path), kind=f"cotracker3_{variant}", arch=arch)


def tracklight_ckpt(tmp_path, name: str, argv: list[str]) -> TeacherConfig:
    """A .ckpt as train.py writes it (config in hyper_parameters, weights in state_dict)."""
    _, cfg = load_config([*argv, f"run_dir={tmp_path / name}"])
    module = build_module(cfg)
    path = tmp_path / f"{name}.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": OmegaConf.to_container(cfg, resolve=True)}, path)
    return TeacherConfig(checkpoint=str(path), kind="tracklight")


def clip(frames: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, frames, 3, 32, 32, generator=g) * 255


@pytest.mark.parametrize("variant,grid,uniform", [("online", 5, 0), ("offline", 0, 100)])
def test_official_cotracker3_teachers_load_frozen_with_the_reference_rules(tmp_path, variant, grid, uniform):
    teacher = load_teacher(official(tmp_path, variant))
    assert teacher.type == f"cotracker3_{variant}" and teacher.name == f"tiny_{variant}"
    assert (teacher.support_grid, teacher.support_uniform, teacher.occluded_loss) == (grid, uniform, True)
    assert not teacher.tracker.training and not any(p.requires_grad for p in teacher.tracker.parameters())
    queries = torch.tensor([[[0.0, 5.0, 6.0], [3.0, 20.0, 11.0]]])
    tracks, visible = teacher.track(clip(), queries)
    assert tracks.shape == (1, 8, 2, 2) and visible.dtype == torch.bool and visible.shape == (1, 8, 2)
    support = teacher.support_queries(2, 8, (32, 32), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert support.shape == (2, grid * grid + uniform, 3)
    if grid:  # the reference's get_points_on_a_grid at frame 0
        assert (support[..., 0] == 0).all() and support[0, 0, 1:].tolist() == [0.5, 0.5]


def test_tracklight_checkpoints_of_every_tracking_family_load_as_teachers(tmp_path):
    cotracker = load_teacher(tracklight_ckpt(tmp_path, "cotracker3", TINY_MODEL))
    assert cotracker.type == "cotracker3_online" and cotracker.support_grid == 5 and cotracker.occluded_loss
    small = ["data.synthetic.height=32", "data.synthetic.width=32"]
    chrono = load_teacher(tracklight_ckpt(tmp_path, "chrono", ["experiment=chrono_tiny_synthetic", *small,
                                                               "model.arch.backbone_img_size=32",
                                                               "model.arch.feature_grid=8"]))
    taptr = load_teacher(tracklight_ckpt(tmp_path, "taptrv2", ["experiment=taptrv2_tiny_synthetic", *small,
                                                               "model.arch.model_resolution=[32,32]"]))
    queries = torch.tensor([[[0.0, 5.0, 6.0], [2.0, 20.0, 11.0]]])
    for teacher, family in ((chrono, "ChronoModule"), (taptr, "TaptrV2Module")):
        # The reference's rules for its non-CoTracker teacher (TAPIR): no support points, no occluded loss.
        assert teacher.type == family and (teacher.support_grid, teacher.support_uniform) == (0, 0)
        assert not teacher.occluded_loss
        assert not any(p.requires_grad for p in teacher.tracker.parameters())
        tracks, visible = teacher.track(clip(), queries)
        assert tracks.shape == (1, 8, 2, 2) and visible.dtype == torch.bool


def test_rules_can_be_overridden_and_bad_teachers_are_refused(tmp_path):
    cfg = official(tmp_path, "online")
    cfg.support_grid, cfg.support_uniform, cfg.occluded_loss, cfg.name = 0, 7, False, "mine"
    teacher = load_teacher(cfg)
    assert (teacher.support_grid, teacher.support_uniform, teacher.occluded_loss, teacher.name) == (0, 7, False, "mine")
    with pytest.raises(TeacherError, match="not found: .*missing.pth"):
        load_teacher(TeacherConfig(checkpoint=str(tmp_path / "missing.pth")))
    with pytest.raises(TeacherError, match="kind must be one of"):
        load_teacher(TeacherConfig(checkpoint=cfg.checkpoint, kind="tapir"))
    with pytest.raises(TeacherError, match="weight must be a positive"):
        load_teacher(TeacherConfig(checkpoint=cfg.checkpoint, weight=0.0))
    with pytest.raises(TeacherError, match="contradicts kind"):
        load_teacher(TeacherConfig(checkpoint=cfg.checkpoint, kind="cotracker3_offline", arch={"variant": "online"}))
    with pytest.raises(TeacherError, match="no teachers"):
        TeacherSet([])


def test_teacher_draw_follows_the_weights_and_is_seeded(tmp_path):
    online = official(tmp_path, "online")
    teachers = [Teacher(TeacherConfig(checkpoint=online.checkpoint, weight=w), load_teacher(online).tracker)
                for w in (1.0, 3.0, 0.5)]
    teacher_set = TeacherSet(teachers)
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([teacher_set.draw(g) for _ in range(9000)])
    shares = torch.bincount(draws, minlength=3).double() / len(draws)
    expected = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64) / 4.5
    # Binomial standard error of a share is <= 0.0053 at n = 9000; 4 sigma.
    assert torch.allclose(shares, expected, atol=0.021), shares
    again = [teacher_set.draw(torch.Generator().manual_seed(s)) for s in range(20)]
    assert again == [teacher_set.draw(torch.Generator().manual_seed(s)) for s in range(20)]


class _Recorder(torch.nn.Module):
    """A non-CoTracker teacher that remembers its queries and marks each output with its index."""

    def predict_tracks(self, video, queries):
        self.queries = queries
        B, N = queries.shape[:2]
        T = video.shape[1]
        index = torch.arange(N, dtype=video.dtype).view(1, 1, N, 1).expand(B, T, N, 2)
        visible = (torch.arange(N) % 2 == 0).view(1, 1, N).expand(B, T, N)
        return index.clone(), visible.clone()


class _Uniform(KeypointQuerySampler):
    def __init__(self, found: list[bool]):
        super().__init__(QuerySamplingConfig(method="uniform"))
        self.found = found

    def __call__(self, video, num, generator=None):
        queries, _ = super().__call__(video, num, generator)
        return queries, torch.tensor(self.found)


def test_targets_are_cut_back_to_the_real_queries(tmp_path):
    recorder = _Recorder()
    teacher = Teacher(TeacherConfig(checkpoint="stub.ckpt", kind="tracklight", support_grid=3, support_uniform=4),
                      recorder)
    labels = make_pseudo_labels(clip(6).expand(2, -1, -1, -1, -1), 5, teacher, _Uniform([True, False]),
                                torch.Generator().manual_seed(1))
    assert recorder.queries.shape == (2, 5 + 9 + 4, 3)  # queries, then 3x3 grid, then uniform points
    assert torch.equal(recorder.queries[:, :5], labels.queries)
    assert labels.tracks.shape == (2, 6, 5, 2) and labels.visible.shape == (2, 6, 5)
    assert labels.tracks[..., 0].amax().item() == 4  # only tracks 0..4 remain
    assert labels.visible[0, 0].tolist() == [True, False, True, False, True]
    # The fallback sample stays in the batch without weight in the loss.
    assert labels.valid[0].all() and not labels.valid[1].any()
    assert labels.occluded_loss.tolist() == [False, False] and labels.keypoints_found.tolist() == [True, False]


def test_non_finite_teacher_tracks_are_masked_and_zeroed():
    class _Broken(_Recorder):
        def predict_tracks(self, video, queries):
            tracks, visible = super().predict_tracks(video, queries)
            tracks[1, 2, 0] = math.nan
            return tracks, visible

    teacher = Teacher(TeacherConfig(checkpoint="stub.ckpt", kind="tracklight"), _Broken())
    labels = make_pseudo_labels(clip(4).expand(2, -1, -1, -1, -1), 3, teacher, _Uniform([True, True]))
    assert labels.valid[0].all() and not labels.valid[1].any()
    assert torch.isfinite(labels.tracks).all() and (labels.tracks[1] == 0).all()
