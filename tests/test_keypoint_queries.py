"""SIFT query sampling for pseudo-label training (models/keypoint_queries.py)."""

import numpy as np
import pytest
import torch

from datamodules.synthetic import SyntheticConfig, generate_clip
from models.keypoint_queries import KeypointQuerySampler, QuerySamplingConfig


def textured_video(frames: int = 12) -> torch.Tensor:
    clip = generate_clip(1, SyntheticConfig(height=64, width=64, num_frames=frames, num_tracks=16, domain="plaid"))
    return torch.from_numpy(clip["frames"]).permute(0, 3, 1, 2)[None].float()


def test_sift_finds_keypoints_on_a_textured_clip_in_its_first_quarter():
    video = textured_video(12)
    sampler = KeypointQuerySampler(QuerySamplingConfig())
    queries, found = sampler(video, 24, torch.Generator().manual_seed(0))
    assert queries.shape == (1, 24, 3) and found.tolist() == [True]
    t, x, y = queries[0].unbind(-1)
    assert ((t >= 0) & (t <= int(12 * 0.25))).all()  # frames 0 .. int(T * 0.25), as the reference
    assert ((x >= 0) & (x <= 63) & (y >= 0) & (y <= 63)).all()
    assert (queries == queries.floor()).all()  # integer pixels, as the reference's int(kp.pt)
    # Each searched frame gives at most ceil(24 / 8) = 3 keypoints, in draw order.
    keypoints = sampler.keypoints(video, 24, torch.Generator().manual_seed(0))[0]
    assert torch.equal(keypoints[:24], queries[0])
    changes = (keypoints[1:, 0] != keypoints[:-1, 0]).sum()
    assert changes <= 7
    # Same generator seed, same queries; another seed draws other frames.
    again, _ = sampler(video, 24, torch.Generator().manual_seed(0))
    assert torch.equal(again, queries)


def test_keypoints_sit_on_blob_centres():
    # Gaussian blobs at known places: the detector's keypoints (floored) land on them.
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    centres = [(14, 20), (45, 12), (30, 40), (50, 50)]
    image = sum(torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8.0) for cx, cy in centres)
    video = (40 + 200 * image).expand(1, 4, 3, 64, 64)
    sampler = KeypointQuerySampler(QuerySamplingConfig(num_frames=1))
    keypoints = sampler.keypoints(video, 4, torch.Generator().manual_seed(0))[0]
    assert len(keypoints) == 4
    for _, x, y in keypoints.tolist():
        assert min(abs(x - cx) + abs(y - cy) for cx, cy in centres) <= 2


def test_too_few_keypoints_fall_back_to_uniform_points():
    flat = torch.full((1, 8, 3, 64, 64), 128.0)  # nothing to detect
    video = torch.cat([flat, textured_video(8)])  # sample 1 is textured
    sampler = KeypointQuerySampler(QuerySamplingConfig())
    queries, found = sampler(video, 16, torch.Generator().manual_seed(3))
    assert found.tolist() == [False, True]
    t, x, y = queries[0].unbind(-1)
    assert ((t >= 0) & (t <= 7)).all() and ((x >= 0) & (x <= 63) & (y >= 0) & (y <= 63)).all()
    assert (x != x.floor()).any()  # uniform points are not keypoints
    assert len(sampler.keypoints(flat, 8)[0]) == 0


def test_uniform_method_and_config_checks():
    sampler = KeypointQuerySampler(QuerySamplingConfig(method="uniform"))
    queries, found = sampler(torch.zeros(3, 5, 3, 16, 20), 7, torch.Generator().manual_seed(0))
    assert queries.shape == (3, 7, 3) and found.all()
    assert queries[..., 0].max() <= 4 and queries[..., 1].max() <= 19 and queries[..., 2].max() <= 15
    with pytest.raises(ValueError, match="method must be one of"):
        QuerySamplingConfig(method="superpoint")
    with pytest.raises(ValueError, match="first_fraction"):
        QuerySamplingConfig(first_fraction=1.5)
    with pytest.raises(ValueError, match=">= 1"):
        sampler(torch.zeros(1, 5, 3, 16, 20), 0)


def test_contrast_threshold_drops_faint_keypoints():
    video = textured_video(8)
    faint = 128 + (video - 128) * 0.02  # the same texture at 2 % contrast
    sampler = KeypointQuerySampler(QuerySamplingConfig())
    strong = len(sampler.keypoints(video, 64, torch.Generator().manual_seed(0))[0])
    weak = len(sampler.keypoints(faint, 64, torch.Generator().manual_seed(0))[0])
    assert strong > 4 * max(weak, 1)
    assert np.isclose(QuerySamplingConfig().contrast_threshold, 0.04 / 3)
