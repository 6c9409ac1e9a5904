"""Deterministic synthetic Kubric-like clips: the embedded default dataset.

A clip is a textured background plane seen by a panning / zooming / rolling camera, plus
a few flat textured objects (ellipses, rounded rectangles, blobs) moving with smooth
affine motions (translation, rotation, scale) at distinct depths. Every layer is rendered
by mapping each pixel centre through the inverse of the layer's per-frame affine
transform into the layer's canonical (texture) coordinates and sampling its periodic
texture bilinearly; layers are composited front to back with hard edges. Ground-truth
tracks are exact: canonical points mapped forward with the same transforms.

`domain="plaid"` draws a shifted domain (flat-coloured plaid textures, swinging motions) for
domain-adaptation experiments; the default domain's output does not depend on that option.

Conventions (DESIGN.md): tracks are pixel (x, y) with pixel centres at integers; visible
is True = visible; depth is positive, larger = farther.

Visibility rule: point n is visible at frame t iff its position lies in
[0, W-1] x [0, H-1] and the hard layer map at its nearest pixel centre
(floor(x + 0.5), floor(y + 0.5)) is the point's own layer. Object points are only sampled
where, at every frame they are in the frame, that nearest pixel centre also lies (with a
small margin) on the object's own outline, so a point is never hidden merely because it
sits within half a pixel of its own object's edge: visibility changes only through
occlusion by a nearer layer and through leaving the frame.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Objects live in disjoint log-depth bands inside this range, so a depth order fixed per
# clip is also the rendering order at every frame; the background is always behind them.
_OBJECT_DEPTH_RANGE = (2.0, 8.0)
_BACKGROUND_MIN_DEPTH = 9.0
_BACKGROUND_NOMINAL_DEPTH = 10.0  # reference depth for the parallax of camera pan and for haze
_HAZE_COLOUR = np.array([200.0, 210.0, 225.0], np.float32)  # pale sky blue
# A sampled object point's nearest pixel must be inside the outline shrunk by this factor,
# which keeps the check robust to last-bit differences against the rendered label map.
_SUPPORT_MARGIN = 0.97
_SHAPES = ("ellipse", "rounded_rectangle", "blob")
# `colour_classes`: class c has hue 2 pi c / C and a luminance grating of period
# _CLASS_PERIOD_BASE * _CLASS_PERIOD_RATIO ** c texels. Neighbouring periods are closer than the
# range that the default camera zoom and object scale stretch a period over, so the period seen in
# one frame is ambiguous.
_CLASS_PERIOD_BASE = 4.0
_CLASS_PERIOD_RATIO = 1.45
_CLASS_CHROMA = (30.0, 60.0)  # range of a layer's chroma (RGB units away from its grey)
_LUMA = np.array([0.299, 0.587, 0.114])
DOMAINS = ("default", "plaid")
_PLAID_SPEEDUP = 2.0  # peak speed of the "plaid" domain's swinging paths, times the configured maximum
_PLAID_FIELDS = 3  # stripe fields overlaid in a plaid texture: 2**3 flat colours


@dataclass
class SyntheticConfig:
    """Scene and motion parameters of the synthetic clips (pixels and frames as units)."""

    height: int = 64
    width: int = 64
    num_frames: int = 24
    num_tracks: int = 256
    min_objects: int = 2
    max_objects: int = 6
    background_fraction: float = 0.4  # share of tracks sampled on the background
    min_object_size: float = 0.12  # object radius as a fraction of min(height, width)
    max_object_size: float = 0.3
    camera_pan: float = 1.0  # max camera pan speed, pixels per frame
    camera_zoom: float = 0.2  # max |log zoom| over a clip
    camera_rotation: float = 0.05  # max camera roll, radians
    object_speed: float = 1.5  # max object speed, pixels per frame
    object_rotation: float = 0.04  # max object spin, radians per frame
    object_scale_change: float = 0.15  # max |log scale| change (also capped by depth bands)
    parallax: float = 0.5  # pan seen by an object = pan * (bg depth / object depth) ** parallax
    fps: float = 12.0
    # Monocular depth cue for the video-depth demo: aerial perspective blends a pixel towards
    # _HAZE_COLOUR by 1 - exp(-haze * depth / _BACKGROUND_NOMINAL_DEPTH), so contrast and
    # saturation fall with depth, as in outdoor footage.
    haze: float = 0.0
    # Std (0..255 units) of independent per-pixel Gaussian noise, drawn afresh for every frame:
    # sensor noise that makes a per-frame estimator flicker while the scene itself is steady.
    frame_noise: float = 0.0
    # Colour that L reveals only partly, for video colorization (0 = off, textures as above).
    # With C > 0 every layer (background included) draws a class c in 0..C-1: its texture keeps its
    # luminance structure but takes the class hue (equal hue steps, random chroma per layer), and
    # its luminance carries the class signature, a grating along the layer's canonical u axis of
    # the class's period (so it moves, turns and scales with the layer). The grating's contrast is
    # class_signature * g, with g ~ U(0, 1) drawn afresh per layer and frame: some frames show the
    # class clearly, others barely, and with `frame_noise` a per-frame estimate of the colour is
    # unsure and flickers, while evidence gathered along a track over the clip is not.
    colour_classes: int = 0
    class_signature: float = 24.0  # peak grating amplitude (0..255 units) at g = 1
    # Scene style (see DOMAINS). "default" is the Kubric-like look above; "plaid" is a shifted
    # domain for domain-adaptation demos: hard-edged plaid textures in a few flat colours instead
    # of power-law noise, and objects and camera swinging back and forth (sinusoidal paths up to
    # _PLAID_SPEEDUP times faster) instead of drifting along smoothly turning headings.
    domain: str = "default"

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {self.domain!r}")
        if self.height < 8 or self.width < 8:
            raise ValueError(f"height and width must be >= 8, got {self.height}x{self.width}")
        if self.num_frames < 1 or self.num_tracks < 1:
            raise ValueError(
                f"num_frames and num_tracks must be >= 1, got {self.num_frames}, {self.num_tracks}"
            )
        if not 0 <= self.min_objects <= self.max_objects <= 254:
            raise ValueError(
                "need 0 <= min_objects <= max_objects <= 254, "
                f"got {self.min_objects}, {self.max_objects}"
            )
        if not 0.0 <= self.background_fraction <= 1.0:
            raise ValueError(
                f"background_fraction must be in [0, 1], got {self.background_fraction}"
            )
        if not 0.0 < self.min_object_size <= self.max_object_size <= 1.0:
            raise ValueError(
                "need 0 < min_object_size <= max_object_size <= 1, "
                f"got {self.min_object_size}, {self.max_object_size}"
            )
        for name in ("camera_pan", "camera_zoom", "camera_rotation", "object_speed",
                     "object_rotation", "object_scale_change", "parallax", "haze", "frame_noise",
                     "colour_classes", "class_signature"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")


@dataclass
class SyntheticClip:
    """A rendered clip with its exact ground truth; layer 0 is the background."""

    frames: np.ndarray  # uint8 (T, H, W, 3) RGB
    tracks: np.ndarray  # float32 (T, N, 2) pixel (x, y)
    visible: np.ndarray  # bool (T, N)
    depth: np.ndarray  # float32 (T, H, W), depth of the topmost layer
    depth_valid: np.ndarray  # bool (T, H, W)
    track_depth: np.ndarray  # float32 (T, N), depth of each point (also when hidden)
    track_layer: np.ndarray  # int64 (N,), the layer each point lies on
    # float32 (N, 3), the point's texture colour (before haze, noise, uint8 rounding and, with
    # colour_classes, before the per-frame class grating, which only changes luminance)
    track_colour: np.ndarray
    layers: np.ndarray  # uint8 (T, H, W), hard id of the topmost layer per pixel
    meta: dict[str, Any]


@dataclass
class _Shape:
    """An object outline in canonical coordinates: a superellipse |u/a|^p + |v/b|^p <= 1
    whose radius is modulated by a few angular harmonics (blobs)."""

    a: float
    b: float
    power: int  # even, so powers are plain products (exact and cheap)
    harmonics: np.ndarray  # complex (K,), coefficient of e^{i k phi} for k = 2, 3, ...

    @property
    def extent(self) -> tuple[float, float]:
        bulge = 1.0 + float(np.abs(self.harmonics).sum())
        return self.a * bulge, self.b * bulge

    def contains(self, qx: np.ndarray, qy: np.ndarray, shrink: float = 1.0) -> np.ndarray:
        ux = qx / (self.a * shrink)
        uy = qy / (self.b * shrink)
        ux2, uy2 = ux * ux, uy * uy
        px, py = ux2, uy2
        for _ in range(self.power // 2 - 1):
            px, py = px * ux2, py * uy2
        level = px + py
        if not len(self.harmonics):
            return level <= 1.0
        # The modulated radius is at most `bulge`; only points inside that need the angle.
        bulge = 1.0 + float(np.abs(self.harmonics).sum())
        inside = level <= bulge**self.power
        cand = np.nonzero(inside)
        cx, cy = ux[cand], uy[cand]
        unit = (cx + 1j * cy) / np.sqrt(np.maximum(cx * cx + cy * cy, 1e-24))
        radius = np.ones(cx.shape)
        wave = unit * unit  # e^{i k phi}, starting at k = 2
        for coeff in self.harmonics:
            radius += (coeff * wave).real
            wave = wave * unit
        radius_p = radius2 = radius * radius
        for _ in range(self.power // 2 - 1):
            radius_p = radius_p * radius2
        inside[cand] = level[cand] <= radius_p
        return inside


def _smooth_unit(rng: np.random.Generator, count: int, num_frames: int) -> np.ndarray:
    """`count` smooth random curves over the clip, shape (count, T), values in [-1, 1]."""
    tau = np.arange(num_frames) / max(num_frames - 1, 1)
    freq = rng.uniform(0.1, 1.0, (count, 3, 1))  # cycles per clip: slow, smooth motion
    phase = rng.uniform(0.0, 2 * math.pi, (count, 3, 1))
    amp = rng.uniform(0.0, 1.0, (count, 3, 1)) / np.arange(1, 4)[:, None]
    curves = (amp * np.sin(2 * math.pi * freq * tau + phase)).sum(1)
    return curves / amp.sum(1)


def _heading_path(rng: np.random.Generator, count: int, num_frames: int,
                  max_speed: float) -> np.ndarray:
    """Cumulative displacement (count, T, 2) of paths with smoothly turning headings, 0 at t=0."""
    speed = rng.uniform(0.2, 1.0, (count, 1)) * max_speed
    turn = rng.uniform(0, 1.5, (count, 1))  # radians of heading wobble over the clip
    heading = rng.uniform(0, 2 * math.pi, (count, 1)) + turn * _smooth_unit(rng, count, num_frames)
    step = speed[..., None] * np.stack([np.cos(heading), np.sin(heading)], -1)
    return np.cumsum(step, axis=1) - step[:, :1]


def _swinging_path(rng: np.random.Generator, count: int, num_frames: int,
                   max_speed: float) -> np.ndarray:
    """Cumulative displacement (count, T, 2) of back-and-forth swings, 0 at t=0.

    Each axis is a sinusoid of 0.75..2.5 cycles per 24 frames whose peak speed is up to
    _PLAID_SPEEDUP * max_speed, so directions reverse within a clip (the "plaid" domain).
    """
    t = np.arange(num_frames)[None, :, None]
    omega = 2 * math.pi * rng.uniform(0.75, 2.5, (count, 1, 2)) / 24.0
    speed = rng.uniform(0.3, 1.0, (count, 1, 2)) * _PLAID_SPEEDUP * max_speed
    phase = rng.uniform(0, 2 * math.pi, (count, 1, 2))
    amplitude = speed / omega
    return amplitude * (np.sin(omega * t + phase) - np.sin(phase))


def _rotation(angle: np.ndarray) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A periodic channel-first (3, size, size) float32 RGB texture in [0, 255] with
    structure at all scales.

    Power-law (1/f^beta, natural-image-like) coloured noise, band-limited to periods of
    about 4 texels and more so that bilinear resampling under zoom-out does not alias, plus
    sharp-edged regions from thresholding another power-law field (corners and edges for
    trackers to lock on to). Periodic because it is synthesised in the Fourier domain, so
    sampling wraps without seams.
    """
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    freq = np.sqrt(fx * fx + fy * fy)
    freq[0, 0] = 1.0
    beta = rng.uniform(1.6, 2.6)
    amp = freq ** (-beta / 2) * np.exp(-((freq / 0.22) ** 4))
    amp[0, 0] = 0.0
    shape = (4, size, size // 2 + 1)
    spectrum = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * amp
    fields = np.fft.irfft2(spectrum, s=(size, size))
    fields -= fields.mean(axis=(1, 2), keepdims=True)
    fields /= fields.std(axis=(1, 2), keepdims=True) + 1e-12
    base = rng.uniform(50, 205, 3)
    mix = rng.standard_normal((3, 3))
    mix *= rng.uniform(25, 45) / np.linalg.norm(mix, axis=1, keepdims=True)
    colour = base[:, None, None] + np.einsum("cf,fyx->cyx", mix, fields[:3])
    regions = fields[3] > rng.uniform(-0.6, 0.6)
    colour += regions * rng.uniform(-70, 70, (3, 1, 1))
    return np.clip(colour, 0, 255).astype(np.float32)


def _plaid_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A periodic channel-first (3, size, size) float32 plaid in [0, 255]: _PLAID_FIELDS hard-edged
    stripe fields at random orientations and widths overlaid, each texel taking one of 2**fields
    flat palette colours, plus a faint grain. The stripes have whole numbers of cycles per tile,
    so the texture wraps without seams; stripe crossings give corners to track.
    """
    v, u = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    code = np.zeros((size, size), np.int64)
    for _ in range(_PLAID_FIELDS):
        cycles = int(rng.integers(2, max(3, size // 8)))
        angle = rng.uniform(0, math.pi)
        kx, ky = np.rint(cycles * np.array([math.cos(angle), math.sin(angle)])).astype(int)
        if kx == 0 and ky == 0:
            kx = 1
        stripes = np.sin(2 * math.pi * (kx * u + ky * v) / size + rng.uniform(0, 2 * math.pi)) > 0
        code = 2 * code + stripes
    palette = rng.uniform(20, 235, (2**_PLAID_FIELDS, 3))
    colour = palette[code].transpose(2, 0, 1) + rng.normal(0.0, 4.0, (3, size, size))
    return np.clip(colour, 0, 255).astype(np.float32)


def _class_texture(texture: np.ndarray, hue: float, chroma: float) -> np.ndarray:
    """`texture`'s luminance structure (squeezed to leave room for chroma) in a single hue."""
    luma = np.einsum("c,cyx->yx", _LUMA, texture)
    colour = (60.0 + luma * (140.0 / 255.0))[None] + chroma * _hue_direction(hue)[:, None, None]
    return np.clip(colour, 0, 255).astype(np.float32)


def _hue_direction(hue: float) -> np.ndarray:
    """Unit RGB direction of zero luminance at angle `hue` in the plane orthogonal to _LUMA."""
    first = np.cross(_LUMA, [0.0, 0.0, 1.0])
    first /= np.linalg.norm(first)
    second = np.cross(_LUMA / np.linalg.norm(_LUMA), first)
    return math.cos(hue) * first + math.sin(hue) * second


def _class_grating(scene: _Scene, layer: int, u: np.ndarray) -> np.ndarray:
    """Luminance signature of `layer`'s class at canonical texel u (T, ...) (frame axis first)."""
    period = _CLASS_PERIOD_BASE * _CLASS_PERIOD_RATIO ** scene.layer_class[layer]
    gain = scene.signature_gain[layer].reshape((-1,) + (1,) * (u.ndim - 1))
    return (gain * np.sin(2 * math.pi * u / period)).astype(np.float32)


def _sample_texture(texture: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear, wrapping lookup of a (3, S, S) power-of-two texture at texel coords (u, v)
    (texel centres at integers); returns float32 (M, 3)."""
    size = texture.shape[-1]
    u0, v0 = np.floor(u), np.floor(v)
    fu = (u - u0).astype(np.float32)
    fv = (v - v0).astype(np.float32)
    i0 = u0.astype(np.intp) & (size - 1)
    i1 = (i0 + 1) & (size - 1)
    j0 = (v0.astype(np.intp) & (size - 1)) * size
    j1 = (j0 + size) & (size * size - 1)
    out = np.empty((len(fu), 3), np.float32)
    # Per-channel 1-D `take` is ~3x faster than gathering RGB rows with fancy indexing.
    for channel in range(3):
        plane = texture[channel].ravel()
        top = plane.take(j0 + i0)
        top += (plane.take(j0 + i1) - top) * fu
        bottom = plane.take(j1 + i0)
        bottom += (plane.take(j1 + i1) - bottom) * fu
        out[:, channel] = top + (bottom - top) * fv
    return out


def _to_canonical(inv: np.ndarray, shift: np.ndarray, x: np.ndarray,
                  y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (u, v) of image points (x, y): inv @ ((x, y) - shift), inv (..., 2, 2),
    shift (..., 2), all broadcast against x and y."""
    dx, dy = x - shift[..., 0], y - shift[..., 1]
    return inv[..., 0, 0] * dx + inv[..., 0, 1] * dy, inv[..., 1, 0] * dx + inv[..., 1, 1] * dy


def _next_pow2(value: float, minimum: int) -> int:
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(value, 1.0)))))


class _Scene:
    """Per-clip layer geometry, textures and motion, drawn from one seeded Generator."""

    def __init__(self, rng: np.random.Generator, cfg: SyntheticConfig, seed: int) -> None:
        self.seed = seed
        self.num_frames = T = cfg.num_frames
        H, W = cfg.height, cfg.width
        self.num_objects = K = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        centre = np.array([(W - 1) / 2, (H - 1) / 2])

        # Camera: image = centre + zoom R(roll) (world - pan); the background's canonical
        # coordinates are the world coordinates.
        path = _heading_path if cfg.domain == "default" else _swinging_path
        pan = path(rng, 1, T, cfg.camera_pan)[0]
        zoom = np.exp(cfg.camera_zoom * _smooth_unit(rng, 1, T)[0])
        roll = cfg.camera_rotation * _smooth_unit(rng, 1, T)[0]
        cam = zoom[:, None, None] * _rotation(roll)  # (T, 2, 2)

        # Objects: one disjoint log-depth band each (random order); the log-scale change
        # drives depth (z ~ 1 / scale) and is capped to stay inside the band.
        lo, hi = np.log(_OBJECT_DEPTH_RANGE[0]), np.log(_OBJECT_DEPTH_RANGE[1])
        band = (hi - lo) / max(K, 1)
        band_index = rng.permutation(K)
        mid_depth = np.exp(lo + (band_index + 0.5) * band)
        scale_amp = min(cfg.object_scale_change, 0.45 * band) * rng.uniform(0, 1, (K, 1))
        log_scale = scale_amp * _smooth_unit(rng, K, T)  # (K, T)
        self.object_depth = mid_depth[:, None] * np.exp(-log_scale)
        self.near_to_far = np.argsort(band_index) + 1  # layer ids, nearest first
        position = np.stack(
            [rng.uniform(-0.45 * W, 0.45 * W, K), rng.uniform(-0.45 * H, 0.45 * H, K)], -1
        )[:, None] + path(rng, K, T, cfg.object_speed)  # (K, T, 2) world
        spin = rng.uniform(0, 2 * math.pi, (K, 1)) + rng.uniform(
            -cfg.object_rotation, cfg.object_rotation, (K, 1)
        ) * np.arange(T)
        parallax = (_BACKGROUND_NOMINAL_DEPTH / mid_depth) ** cfg.parallax

        # Layer l maps canonical q to image A[l, t] q + b[l, t].
        A = np.empty((K + 1, T, 2, 2))
        b = np.empty((K + 1, T, 2))
        A[0] = cam
        b[0] = centre - np.einsum("tij,tj->ti", cam, pan)
        A[1:] = np.exp(log_scale)[..., None, None] * np.einsum("tij,ktjl->ktil", cam,
                                                               _rotation(spin))
        b[1:] = centre + np.einsum("tij,ktj->kti", cam, position - parallax[:, None, None] * pan)
        det = A[..., 0, 0] * A[..., 1, 1] - A[..., 0, 1] * A[..., 1, 0]
        inv = np.stack([np.stack([A[..., 1, 1], -A[..., 0, 1]], -1),
                        np.stack([-A[..., 1, 0], A[..., 0, 0]], -1)], -2) / det[..., None, None]
        self.A, self.b, self.inv = A, b, inv

        # Outlines and textures; canonical units are texels, about one pixel at scale 1.
        # The background tile is 1.5x the widest view (at the strongest zoom-out), so a
        # frame never shows the texture repeating.
        self.shapes: list[_Shape] = []
        view = max(H, W) * math.exp(cfg.camera_zoom)
        texture = _texture if cfg.domain == "default" else _plaid_texture
        self.textures = [texture(rng, _next_pow2(1.5 * view, 64))]
        self.texture_offset = [np.zeros(2)]
        for _ in range(K):
            radius = rng.uniform(cfg.min_object_size, cfg.max_object_size) * min(H, W)
            kind = _SHAPES[int(rng.integers(len(_SHAPES)))]
            harmonics = np.zeros(0, complex)
            if kind == "blob":
                harmonics = rng.uniform(0, 0.12, 3) * np.exp(1j * rng.uniform(0, 2 * math.pi, 3))
            shape = _Shape(a=radius, b=radius * rng.uniform(0.55, 1.0),
                           power=6 if kind == "rounded_rectangle" else 2, harmonics=harmonics)
            self.shapes.append(shape)
            size = _next_pow2(2 * max(shape.extent) + 2, 32)
            self.textures.append(texture(rng, size))
            self.texture_offset.append(rng.uniform(0, size, 2))

        if cfg.colour_classes:
            self._assign_colour_classes(cfg, seed)

        # Background depth: a smoothly tilted plane exp(g . world). Its exponent is affine
        # in pixel coordinates, so its minimum over the frames sits at a frame corner; scale
        # it so that the nearest visible part is at _BACKGROUND_MIN_DEPTH or farther.
        tilt_dir = rng.uniform(0, 2 * math.pi)
        self.depth_tilt = rng.uniform(0, 0.6) / max(H, W) * np.array(
            [math.cos(tilt_dir), math.sin(tilt_dir)])
        corners = np.array([[0, 0], [W - 1, 0], [0, H - 1], [W - 1, H - 1]], np.float64)
        cu, cv = _to_canonical(inv[0][:, None], b[0][:, None], corners[:, 0], corners[:, 1])
        nearest = np.exp(self.depth_tilt[0] * cu + self.depth_tilt[1] * cv).min()
        self.depth_base = _BACKGROUND_MIN_DEPTH * rng.uniform(1.0, 1.4) / nearest

    def _assign_colour_classes(self, cfg: SyntheticConfig, seed: int) -> None:
        """Recolour every layer by its class (see SyntheticConfig.colour_classes). Its own random
        stream, so geometry, motion and tracks are the same with or without classes."""
        rng = np.random.default_rng([seed, 2])
        layers = len(self.textures)
        self.layer_class = rng.integers(0, cfg.colour_classes, layers)
        chroma = rng.uniform(*_CLASS_CHROMA, layers)
        self.signature_gain = cfg.class_signature * rng.uniform(0.0, 1.0, (layers, self.num_frames))
        self.textures = [
            _class_texture(texture, 2 * math.pi * c / cfg.colour_classes, chroma[layer])
            for layer, (texture, c) in enumerate(zip(self.textures, self.layer_class))
        ]

    def background_depth(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.depth_base * np.exp(self.depth_tilt[0] * u + self.depth_tilt[1] * v)

    def point_depth(self, layer: int, canon: np.ndarray) -> np.ndarray:
        """Depth (T, M) of canonical points (M, 2) on `layer`."""
        shape = (self.num_frames, len(canon))
        if layer == 0:
            return np.broadcast_to(self.background_depth(canon[:, 0], canon[:, 1]), shape)
        return np.broadcast_to(self.object_depth[layer - 1][:, None], shape)


def _render(scene: _Scene, cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8, hard layer map (T, H, W) uint8 and depth (T, H, W)."""
    T, H, W = cfg.num_frames, cfg.height, cfg.width
    x = np.arange(W, dtype=np.float64)[None, None, :]
    y = np.arange(H, dtype=np.float64)[:, None]
    layers = np.zeros((T, H, W), np.uint8)
    colour = np.empty((T, H, W, 3), np.float32)

    bu, bv = _to_canonical(scene.inv[0][:, None, None], scene.b[0][:, None, None], x, y)
    depth = scene.background_depth(bu, bv).astype(np.float32)

    # Nearest first: a pixel still at 0 is not covered by any nearer object. Each object
    # is only evaluated inside the bounding box of everywhere it goes during the clip.
    for layer in scene.near_to_far:
        shape = scene.shapes[layer - 1]
        ex, ey = shape.extent
        corners = np.array([[-ex, -ey], [ex, -ey], [-ex, ey], [ex, ey]])
        reach = np.einsum("tij,cj->tci", scene.A[layer], corners) + scene.b[layer][:, None]
        c0, r0 = np.maximum(np.floor(reach.min((0, 1))), 0).astype(int)
        c1, r1 = np.minimum(np.ceil(reach.max((0, 1))) + 1, [W, H]).astype(int)
        if c0 >= c1 or r0 >= r1:
            continue
        box = (slice(None), slice(r0, r1), slice(c0, c1))
        qx, qy = _to_canonical(scene.inv[layer][:, None, None], scene.b[layer][:, None, None],
                               x[..., c0:c1], y[r0:r1])
        mine = shape.contains(qx, qy) & (layers[box] == 0)
        layers[box][mine] = layer
        offset = scene.texture_offset[layer]
        texels = _sample_texture(scene.textures[layer], qx[mine] + offset[0], qy[mine] + offset[1])
        if cfg.colour_classes:
            texels += _class_grating(scene, layer, qx + offset[0])[mine][:, None]
        colour[box][mine] = texels
        depth[box] = np.where(mine, scene.object_depth[layer - 1][:, None, None], depth[box])
    background = layers == 0
    colour[background] = _sample_texture(scene.textures[0], bu[background], bv[background])
    if cfg.colour_classes:
        colour[background] += _class_grating(scene, 0, bu)[background][:, None]
    if cfg.haze > 0:
        veil = (1.0 - np.exp(-cfg.haze * depth / _BACKGROUND_NOMINAL_DEPTH))[..., None]
        colour = colour * (1.0 - veil) + veil * _HAZE_COLOUR
    if cfg.frame_noise > 0:
        # Its own stream, so the scene (and every ground truth) is the same with or without noise.
        colour = colour + np.random.default_rng([scene.seed, 1]).normal(0.0, cfg.frame_noise, colour.shape)
    frames = np.clip(np.rint(colour), 0, 255).astype(np.uint8)
    return frames, layers, depth


def _candidates(rng: np.random.Generator, scene: _Scene, cfg: SyntheticConfig, layer: int,
                count: int) -> np.ndarray:
    """Canonical points (M, 2) on `layer`: background points are pixels of a random frame
    pulled back to the plane (so each is in the frame once); object points are drawn
    uniformly inside the outline."""
    if layer == 0:
        t = rng.integers(0, cfg.num_frames, count)
        px = rng.uniform(0, cfg.width - 1, count)
        py = rng.uniform(0, cfg.height - 1, count)
        return np.stack(_to_canonical(scene.inv[0, t], scene.b[0, t], px, py), -1)
    shape = scene.shapes[layer - 1]
    ex, ey = shape.extent
    box = rng.uniform(-1, 1, (2 * count, 2)) * np.array([ex, ey])
    return box[shape.contains(box[:, 0], box[:, 1], shrink=_SUPPORT_MARGIN)][:count]


def _follow(scene: _Scene, cfg: SyntheticConfig, layers: np.ndarray, layer: np.ndarray,
            canon: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tracks (T, M, 2), visibility (T, M) and usable (M,) for canonical points on `layer`.

    Usable: visible at least once and, for object points, the nearest pixel centre is on
    the point's own (shrunk) outline whenever the point is in the frame. Tracks are
    rounded to float32 first so that the visibility rule holds exactly on stored values.
    """
    A = np.swapaxes(scene.A[layer], 0, 1)  # (T, M, 2, 2)
    tracks = np.einsum("tmij,mj->tmi", A, canon) + np.swapaxes(scene.b[layer], 0, 1)
    tracks = tracks.astype(np.float32)
    x, y = tracks[..., 0], tracks[..., 1]
    in_frame = (x >= 0) & (x <= cfg.width - 1) & (y >= 0) & (y <= cfg.height - 1)
    nx = np.clip(np.floor(x + 0.5), 0, cfg.width - 1).astype(np.int64)
    ny = np.clip(np.floor(y + 0.5), 0, cfg.height - 1).astype(np.int64)
    t = np.arange(cfg.num_frames)[:, None]
    visible = in_frame & (layers[t, ny, nx] == layer)
    covered = np.ones(len(layer), bool)
    for obj in np.unique(layer[layer > 0]):
        cols = np.nonzero(layer == obj)[0]
        qx, qy = _to_canonical(scene.inv[obj][:, None], scene.b[obj][:, None],
                               nx[:, cols].astype(np.float64), ny[:, cols].astype(np.float64))
        on_own = scene.shapes[obj - 1].contains(qx, qy, shrink=_SUPPORT_MARGIN)
        covered[cols] = (on_own | ~in_frame[:, cols]).all(0)
    return tracks, visible, covered & visible.any(0)


def render_clip(seed: int, cfg: SyntheticConfig | None = None) -> SyntheticClip:
    """Render clip `seed` with its exact ground truth, including per-pixel layer ids.

    Deterministic: everything is drawn from `np.random.default_rng(seed)`, so the result
    does not depend on global RNG state or on which clips were generated before.
    """
    cfg = cfg or SyntheticConfig()
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    scene = _Scene(rng, cfg, seed)
    frames, layers, depth = _render(scene, cfg)

    # Per-layer quotas; tracks an object cannot supply (hidden, off-screen) go to the
    # background, which always has plenty of usable points.
    n_objects = cfg.num_tracks - round(cfg.num_tracks * cfg.background_fraction)
    area = np.array([s.a * s.b for s in scene.shapes])
    quota = rng.multinomial(n_objects, area / area.sum()) if scene.num_objects else []
    picked: list[tuple[np.ndarray, ...]] = []

    def take(layer: int, want: int, oversample: int) -> int:
        canon = _candidates(rng, scene, cfg, layer, oversample * want)
        ids = np.full(len(canon), layer)
        tracks, visible, usable = _follow(scene, cfg, layers, ids, canon)
        keep = np.nonzero(usable)[0][:want]
        texel = canon[keep] + scene.texture_offset[layer]
        colour = _sample_texture(scene.textures[layer], texel[:, 0], texel[:, 1])
        picked.append((tracks[:, keep], visible[:, keep], ids[keep],
                       scene.point_depth(layer, canon[keep]), colour))
        return len(keep)

    need = cfg.num_tracks
    for obj, want in enumerate(quota, start=1):
        if want:
            need -= take(obj, int(want), 4)
    for _ in range(50):
        if need == 0:
            break
        need -= take(0, need, 2)
    if need:
        raise RuntimeError(f"seed {seed}: could not place {cfg.num_tracks} visible tracks")

    order = rng.permutation(cfg.num_tracks)
    tracks = np.concatenate([p[0] for p in picked], 1)[:, order]
    visible = np.concatenate([p[1] for p in picked], 1)[:, order]
    track_layer = np.concatenate([p[2] for p in picked])[order]
    track_depth = np.concatenate([p[3] for p in picked], 1)[:, order]
    track_colour = np.concatenate([p[4] for p in picked])[order]
    meta = {
        "source": "synthetic",
        "seed": int(seed),
        "height": cfg.height,
        "width": cfg.width,
        "num_frames": cfg.num_frames,
        "num_tracks": cfg.num_tracks,
        "fps": cfg.fps,
        "depth_kind": "depth",
        "num_objects": scene.num_objects,
        "config": asdict(cfg),
    }
    if cfg.colour_classes:
        meta["layer_class"] = [int(c) for c in scene.layer_class]  # index 0: the background
    return SyntheticClip(
        frames=frames,
        tracks=tracks,
        visible=visible,
        depth=depth,
        depth_valid=np.ones(depth.shape, bool),
        track_depth=track_depth.astype(np.float32),
        track_layer=track_layer.astype(np.int64),
        track_colour=track_colour,
        layers=layers,
        meta=meta,
    )


def generate_clip(seed: int, cfg: SyntheticConfig | None = None) -> dict[str, Any]:
    """Clip `seed` as numpy arrays: frames uint8 (T, H, W, 3), tracks float32 (T, N, 2),
    visible bool (T, N), depth float32 (T, H, W), depth_valid bool (T, H, W), and a
    JSON-serialisable meta dict. See `render_clip` for the extra ground truth."""
    clip = render_clip(seed, cfg)
    return {
        "frames": clip.frames,
        "tracks": clip.tracks,
        "visible": clip.visible,
        "depth": clip.depth,
        "depth_valid": clip.depth_valid,
        "meta": clip.meta,
    }
