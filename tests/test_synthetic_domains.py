"""The synthetic generator's `domain` option: the default domain is unchanged, "plaid" differs."""

import hashlib

import numpy as np
import pytest

from datamodules.synthetic import SyntheticConfig, render_clip

# sha256 of (frames, tracks, visible, depth, layers) written by the generator before the
# domain option existed: the default domain must keep producing exactly these clips.
DEFAULT_DIGESTS = {
    (3, (32, 48, 8, 40)): "328012212d54248f09f312047f4a2425b8e4fd97d49fc6a3cbf94ab0c5709fb8",
    (11, (64, 64, 6, 64)): "bc9d20e479ac2c334f3041f69c56dda72a92c965b4a1188ca6c3910e51333762",
}


def _digest(clip) -> str:
    h = hashlib.sha256()
    for array in (clip.frames, clip.tracks, clip.visible, clip.depth, clip.layers):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("seed,size", list(DEFAULT_DIGESTS))
def test_default_domain_is_bit_identical_to_before(seed, size):
    height, width, frames, tracks = size
    cfg = SyntheticConfig(height=height, width=width, num_frames=frames, num_tracks=tracks)
    assert _digest(render_clip(seed, cfg)) == DEFAULT_DIGESTS[(seed, size)]


def test_plaid_domain_has_hard_edges_and_swinging_motion():
    base = dict(height=48, width=48, num_frames=24, num_tracks=64)
    default = render_clip(2, SyntheticConfig(**base))
    plaid = render_clip(2, SyntheticConfig(**base, domain="plaid"))
    assert plaid.frames.shape == default.frames.shape and plaid.tracks.shape == default.tracks.shape

    def hard_edges(clip):  # share of horizontal neighbours differing by > 40 in some channel
        diff = np.abs(np.diff(clip.frames.astype(np.int16), axis=2)).max(-1)
        return float((diff > 40).mean())

    # Measured on seeds 0-5: 0.07-0.11 for the default domain, 0.22-0.36 for plaid.
    assert hard_edges(plaid) > 2 * hard_edges(default)

    def reversals(clip):  # sign changes of each track's x velocity per track and clip
        vx = np.diff(clip.tracks[..., 0], axis=0)
        return float((np.diff(np.sign(vx), axis=0) != 0).sum(0).mean())

    assert reversals(plaid) > reversals(default)
    # Ground truth stays exact in the new domain: visible points are inside the frame.
    x, y = plaid.tracks[..., 0][plaid.visible], plaid.tracks[..., 1][plaid.visible]
    assert x.min() >= 0 and x.max() <= 47 and y.min() >= 0 and y.max() <= 47


def test_unknown_domain_is_refused():
    with pytest.raises(ValueError, match="domain must be one of"):
        SyntheticConfig(domain="kubric")
