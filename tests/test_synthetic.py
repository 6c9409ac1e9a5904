"""The synthetic Kubric-like generator: determinism, layout, and exact ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datamodules.synthetic import SyntheticClip, SyntheticConfig, generate_clip, render_clip

SEEDS = (0, 1, 2, 3)
ARRAY_KEYS = ("frames", "tracks", "visible", "depth", "depth_valid")


def _in_frame(tracks: np.ndarray, height: int, width: int) -> np.ndarray:
    x, y = tracks[..., 0], tracks[..., 1]
    return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)


def _nearest_pixel(tracks: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented rule: nearest pixel centre = floor(coord + 0.5)."""
    nx = np.clip(np.floor(tracks[..., 0] + 0.5), 0, width - 1).astype(int)
    ny = np.clip(np.floor(tracks[..., 1] + 0.5), 0, height - 1).astype(int)
    return nx, ny


def _bilinear(frames: np.ndarray, tracks: np.ndarray) -> np.ndarray:
    """Colour (T, N, 3) of each frame at its track positions (pixel centres at integers)."""
    T, H, W, _ = frames.shape
    x = np.clip(tracks[..., 0], 0, W - 1)
    y = np.clip(tracks[..., 1], 0, H - 1)
    x0 = np.minimum(np.floor(x).astype(int), W - 2)
    y0 = np.minimum(np.floor(y).astype(int), H - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    t = np.arange(T)[:, None]
    f = frames.astype(np.float64)
    top = f[t, y0, x0] * (1 - fx) + f[t, y0, x0 + 1] * fx
    bottom = f[t, y0 + 1, x0] * (1 - fx) + f[t, y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def test_same_seed_same_clip_regardless_of_global_rng_and_order() -> None:
    first = generate_clip(7)
    np.random.seed(123)
    torch.manual_seed(123)
    generate_clip(8)  # generating another clip in between must not matter
    again = generate_clip(7)
    for key in ARRAY_KEYS:
        np.testing.assert_array_equal(first[key], again[key])
    assert first["meta"] == again["meta"]

    other = generate_clip(8)
    assert not np.array_equal(first["frames"], other["frames"])
    assert not np.array_equal(first["tracks"], other["tracks"])


def test_shapes_dtypes_and_meta() -> None:
    cfg = SyntheticConfig(height=40, width=72, num_frames=9, num_tracks=33, min_objects=1,
                          max_objects=3)
    clip = generate_clip(5, cfg)
    T, H, W, N = 9, 40, 72, 33
    expected = {
        "frames": ((T, H, W, 3), np.uint8),
        "tracks": ((T, N, 2), np.float32),
        "visible": ((T, N), np.bool_),
        "depth": ((T, H, W), np.float32),
        "depth_valid": ((T, H, W), np.bool_),
    }
    assert set(clip) == set(expected) | {"meta"}
    for key, (shape, dtype) in expected.items():
        assert clip[key].shape == shape, key
        assert clip[key].dtype == dtype, key
    assert np.isfinite(clip["tracks"]).all()
    assert (clip["depth"] > 0).all() and clip["depth_valid"].all()
    assert clip["visible"].any(0).all(), "every track must be visible at least once"
    meta = json.loads(json.dumps(clip["meta"]))
    assert meta["source"] == "synthetic" and meta["seed"] == 5
    assert (meta["height"], meta["width"], meta["num_frames"], meta["num_tracks"]) == (H, W, T, N)
    assert meta["fps"] == cfg.fps and meta["depth_kind"] == "depth"


@pytest.mark.parametrize("seed", SEEDS)
def test_colour_follows_track_and_not_a_shifted_or_swapped_one(seed: int) -> None:
    """Sampling the frame at the track gives the point's own texture colour while visible.

    The reference is absolute (`track_colour`, the layer texture at the point's canonical
    location), so a constant offset of the whole track is caught too, not only drift.
    Only samples whose 2x2 bilinear footprint lies on the point's own layer are compared
    (a footprint straddling an outline mixes two textures). The textures are band-limited
    (no period below ~4 texels), so resampling at another sub-pixel phase, rotation and
    scale is off by ~1 level (median) and a few levels at the 90th percentile, while a
    1 px displacement moves along the texture gradient: ~6-9 levels median, ~5 for the
    half-pixel raster-convention offset. The thresholds sit between the two; a swapped x/y
    lands on unrelated texture entirely.
    """
    clip = render_clip(seed)
    T, H, W, _ = clip.frames.shape
    N = clip.tracks.shape[1]
    x0 = np.clip(np.floor(clip.tracks[..., 0]).astype(int), 0, W - 2)
    y0 = np.clip(np.floor(clip.tracks[..., 1]).astype(int), 0, H - 2)
    t = np.arange(T)[:, None]
    own_footprint = np.ones((T, N), bool)
    for dy in (0, 1):
        for dx in (0, 1):
            own_footprint &= clip.layers[t, y0 + dy, x0 + dx] == clip.track_layer
    compared = clip.visible & own_footprint
    assert compared.sum() > 1000

    def error(tracks: np.ndarray) -> np.ndarray:
        return np.abs(_bilinear(clip.frames, tracks) - clip.track_colour).mean(-1)

    true_error = error(clip.tracks)[compared]
    assert np.median(true_error) < 1.5
    assert np.percentile(true_error, 90) < 6.0
    for offset in ([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]):
        shifted = clip.tracks + np.array(offset, np.float32)
        assert np.median(error(shifted)[compared]) > 4.0, f"shift by {offset} not detected"
    raster = clip.tracks + 0.5  # the pixel-centre-at-i+0.5 convention
    assert np.median(error(raster)[compared]) > 3.0
    assert np.median(error(clip.tracks[..., ::-1].copy())[compared]) > 15.0

    # Hidden points really are covered: the frame there shows another layer's texture.
    hidden = ~clip.visible & _in_frame(clip.tracks, H, W)
    assert np.median(error(clip.tracks)[hidden]) > 15.0


@pytest.mark.parametrize("seed", SEEDS)
def test_points_get_occluded_and_leave_the_frame(seed: int) -> None:
    cfg = SyntheticConfig()
    clip = generate_clip(seed, cfg)
    in_frame = _in_frame(clip["tracks"], cfg.height, cfg.width)
    visible = clip["visible"]
    assert not (visible & ~in_frame).any()
    occluded_tracks = (in_frame & ~visible).any(0)
    left_tracks = (~in_frame).any(0)
    assert occluded_tracks.sum() >= 5, "no occlusion in a default clip"
    assert left_tracks.sum() >= 5, "no point leaves the frame in a default clip"
    assert 0.3 < visible.mean() < 0.95


@pytest.mark.parametrize("seed", SEEDS)
def test_visibility_and_depth_agree_with_the_layer_map(seed: int) -> None:
    clip: SyntheticClip = render_clip(seed)
    T, H, W, _ = clip.frames.shape
    in_frame = _in_frame(clip.tracks, H, W)
    nx, ny = _nearest_pixel(clip.tracks, H, W)
    t = np.arange(T)[:, None]
    on_top = clip.layers[t, ny, nx] == clip.track_layer
    np.testing.assert_array_equal(clip.visible, in_frame & on_top)
    assert (clip.track_layer > 0).any() and (clip.track_layer == 0).any()

    rendered = clip.depth[t, ny, nx]
    hidden = in_frame & ~clip.visible
    assert hidden.any()
    # Whatever hides a point is in front of it. (A hidden object point whose nearest pixel
    # were merely off its own outline, rather than under a nearer layer, would fail here.)
    assert (rendered[hidden] < clip.track_depth[hidden]).all()
    # A visible object point is the surface at its pixel; the tilted background plane's
    # depth changes by well under 1% across half a pixel.
    on_object = clip.visible & (clip.track_layer > 0)
    np.testing.assert_array_equal(rendered[on_object], clip.track_depth[on_object])
    on_background = clip.visible & (clip.track_layer == 0)
    np.testing.assert_allclose(rendered[on_background], clip.track_depth[on_background],
                               rtol=1e-2)
    # Object depth is constant over each object at each frame; every object sits in front
    # of the background everywhere.
    assert clip.depth[clip.layers > 0].max() < clip.depth[clip.layers == 0].min()


def test_motion_is_smooth() -> None:
    for seed in SEEDS:
        tracks = generate_clip(seed)["tracks"]
        step = np.abs(np.diff(tracks, axis=0))
        accel = np.abs(tracks[2:] - 2 * tracks[1:-1] + tracks[:-2])
        assert step.max() < 8.0 and accel.max() < 1.5
        assert np.median(step) > 0.1  # and things do move


def test_textures_have_structure_at_several_scales() -> None:
    """Not flat (contrast), not white noise (neighbours correlate), with fine detail."""
    for seed in SEEDS:
        gray = generate_clip(seed)["frames"].astype(np.float64).mean(-1)
        centred = gray - gray.mean(axis=(1, 2), keepdims=True)
        assert gray.std(axis=(1, 2)).min() > 5.0
        lag1 = (centred[:, :, 1:] * centred[:, :, :-1]).mean() / (centred**2).mean()
        assert 0.6 < lag1 < 0.99
        assert np.abs(np.diff(gray, axis=2)).mean() > 1.5


def test_degenerate_scene_settings() -> None:
    background_only = render_clip(0, SyntheticConfig(min_objects=0, max_objects=0))
    assert (background_only.layers == 0).all() and (background_only.track_layer == 0).all()
    assert background_only.visible.any(0).all()
    objects_only = render_clip(0, SyntheticConfig(background_fraction=0.0, min_objects=3))
    assert objects_only.visible.any(0).all()
    assert (objects_only.track_layer > 0).mean() > 0.5


@pytest.mark.parametrize(
    "bad",
    [
        {"height": 4},
        {"num_tracks": 0},
        {"min_objects": 3, "max_objects": 2},
        {"background_fraction": 1.5},
        {"min_object_size": 0.5, "max_object_size": 0.2},
        {"camera_pan": -1.0},
        {"fps": 0.0},
    ],
)
def test_invalid_config_is_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(**bad)


def test_negative_seed_is_rejected() -> None:
    with pytest.raises(ValueError, match="seed"):
        generate_clip(-1)


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Angle of the zero-luminance part of RGB colours (..., 3), in the generator's hue plane."""
    luma = np.array([0.299, 0.587, 0.114])
    first = np.cross(luma, [0.0, 0.0, 1.0])
    second = np.cross(luma / np.linalg.norm(luma), first / np.linalg.norm(first))
    chroma = rgb - (rgb @ luma)[..., None]
    return np.arctan2(chroma @ second, chroma @ first)


def _hue_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(np.angle(np.exp(1j * (a - b))))


@pytest.mark.parametrize("seed", (0, 5))
def test_colour_classes_recolour_by_class_without_moving_anything(seed: int) -> None:
    plain = render_clip(seed, SyntheticConfig(num_frames=8))
    classes = 4
    coloured = render_clip(seed, SyntheticConfig(num_frames=8, colour_classes=classes))
    for key in ("tracks", "visible", "depth", "track_depth", "track_layer", "layers"):
        np.testing.assert_array_equal(getattr(plain, key), getattr(coloured, key), err_msg=key)
    assert np.abs(plain.frames.astype(int) - coloured.frames).mean() > 10

    layer_class = np.array(coloured.meta["layer_class"])
    assert len(layer_class) == coloured.meta["num_objects"] + 1
    assert ((layer_class >= 0) & (layer_class < classes)).all()
    # One hue per class: points of the same class (one layer or several) share it, other classes
    # sit at least most of a hue step away.
    point_class = layer_class[coloured.track_layer]
    hue = _hue(coloured.track_colour)
    class_hue = {}
    for c in np.unique(point_class):
        mine = hue[point_class == c]
        centre = np.angle(np.exp(1j * mine).mean())
        assert np.percentile(_hue_gap(mine, centre), 95) < 0.15, f"class {c} hue spread"
        class_hue[c] = centre
    for a in class_hue:
        for b in class_hue:
            if a < b:
                assert _hue_gap(class_hue[a], class_hue[b]) > 0.7 * 2 * np.pi / classes


def test_colour_class_signature_is_luminance_only_and_varies_per_frame() -> None:
    clip = render_clip(3, SyntheticConfig(num_frames=8, colour_classes=4, class_signature=30.0))
    T, H, W, _ = clip.frames.shape
    x0 = np.clip(np.floor(clip.tracks[..., 0]).astype(int), 0, W - 2)
    y0 = np.clip(np.floor(clip.tracks[..., 1]).astype(int), 0, H - 2)
    t = np.arange(T)[:, None]
    own = clip.visible.copy()
    for dy in (0, 1):
        for dx in (0, 1):
            own &= clip.layers[t, y0 + dy, x0 + dx] == clip.track_layer
    diff = _bilinear(clip.frames, clip.tracks) - clip.track_colour  # the grating (+ rounding)
    grey = diff.mean(-1)
    chroma_part = np.abs(diff - grey[..., None]).mean(-1)[own]
    assert np.median(chroma_part) < 2.0  # the signature changes luminance, not hue
    # Its contrast is redrawn per frame: per-frame spread of the background's grating varies.
    spread = [np.abs(grey[k][own[k] & (clip.track_layer == 0)]).mean() for k in range(T)]
    assert max(spread) > 2.5 * min(spread) and max(spread) > 6.0
