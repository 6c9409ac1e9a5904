"""The video-depth demo's per-frame depth cue (haze) and flicker source (per-frame noise)."""

import numpy as np

from datamodules.synthetic import SyntheticConfig, render_clip

BASE = dict(height=48, width=48, num_frames=6, num_tracks=32)


def test_haze_and_noise_change_pixels_only():
    plain = render_clip(5, SyntheticConfig(**BASE))
    cued = render_clip(5, SyntheticConfig(**BASE, haze=1.5, frame_noise=8.0))
    for name in ("tracks", "visible", "depth", "layers", "track_colour"):
        assert np.array_equal(getattr(plain, name), getattr(cued, name)), name
    assert not np.array_equal(plain.frames, cued.frames)


def test_haze_lowers_contrast_with_depth():
    plain = render_clip(5, SyntheticConfig(**BASE)).frames.astype(np.float64)
    clip = render_clip(5, SyntheticConfig(**BASE, haze=1.5))
    hazed = clip.frames.astype(np.float64)
    # Per layer, the texture's spread shrinks by exp(-haze * depth / 10): more for farther layers.
    ratios = {}
    for layer in np.unique(clip.layers):
        mask = clip.layers == layer
        if mask.sum() > 50:
            ratios[float(clip.depth[mask].mean())] = hazed[mask].std(0).mean() / plain[mask].std(0).mean()
    depths = sorted(ratios)
    assert len(depths) >= 2
    for near, far in zip(depths, depths[1:]):
        assert ratios[near] > ratios[far]
    for d in depths:
        assert abs(ratios[d] - np.exp(-1.5 * d / 10)) < 0.1  # depth varies within a layer; uint8 rounding


def test_frame_noise_is_fresh_every_frame_and_deterministic():
    cfg = SyntheticConfig(**BASE, frame_noise=8.0)
    plain = render_clip(5, SyntheticConfig(**BASE)).frames.astype(np.float64)
    noisy = render_clip(5, cfg).frames.astype(np.float64)
    assert np.array_equal(render_clip(5, cfg).frames, noisy.astype(np.uint8))
    residual = noisy - plain
    assert 6 < residual.std() < 9
    assert abs(np.corrcoef(residual[0].ravel(), residual[1].ravel())[0, 1]) < 0.05
