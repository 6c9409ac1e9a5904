"""The windowed Tracktention attentions compute the dense function: parity, the truncation bound, memory."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from models.tracktention import Tracktention, gaussian_bias, grid_positions, pixels_to_grid, set_attention
from models.windowed_attention import (
    excluded_mass_bound,
    grid_attends_points,
    layernorm_logit_bound,
    logit_bound,
    points_attend_grid,
    window_radius,
)

C, HEADS = 32, 4


def _pair(seed: int = 0, **kw) -> tuple[Tracktention, Tracktention]:
    """A dense layer with random non-zero output projection and a windowed copy with the same weights."""
    torch.manual_seed(seed)
    dense = Tracktention(C, num_heads=HEADS, attention="dense", **kw)
    with torch.no_grad():
        dense.out_proj.weight.normal_(0, 0.3)
        dense.out_proj.bias.normal_(0, 0.3)
    windowed = Tracktention(C, num_heads=HEADS, attention="windowed", **kw)
    windowed.load_state_dict(dense.state_dict())
    return dense, windowed


def _clip(grid, patch, frames, tracks, seed=0, margin=0.0, visible=0.7, batch=1):
    g = torch.Generator().manual_seed(seed)
    h, w = grid
    image = (h * patch, w * patch)
    tokens = torch.randn(batch, frames, 1 + h * w, C, generator=g)
    lo = torch.tensor([-margin, -margin])
    hi = torch.tensor([image[1] - 1 + margin, image[0] - 1 + margin])
    points = lo + torch.rand(batch, frames, tracks, 2, generator=g) * (hi - lo)
    vis = torch.rand(batch, frames, tracks, generator=g) < visible
    return tokens, points, vis, image


def _update_error(dense, windowed, tokens, points, grid, image, vis):
    a = dense(tokens, points, grid, image, vis, num_prefix_tokens=1) - tokens
    b = windowed(tokens, points, grid, image, vis, num_prefix_tokens=1) - tokens
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.mark.parametrize("rope", [False, True])
def test_windowed_equals_dense_on_random_clips(rope: bool) -> None:
    dense, windowed = _pair(rope=rope)
    tokens, points, vis, image = _clip((13, 17), 4, frames=3, tracks=40, batch=2)
    with torch.no_grad():
        assert _update_error(dense, windowed, tokens, points, (13, 17), image, vis) < 1e-5


def test_windowed_equals_dense_near_borders_outside_the_image_and_occluded() -> None:
    dense, windowed = _pair(seed=1)
    grid, patch = (12, 20), 14
    tokens, points, vis, image = _clip(grid, patch, frames=4, tracks=60, seed=2, margin=30.0, visible=0.5)
    H, W = image
    # tracks on the image border, just outside it, far outside it, and exactly on token centres
    points[0, 0, :8] = torch.tensor([[0.0, 0.0], [W - 1, H - 1], [-0.49, 50.0], [W - 0.51, 3.0],
                                     [-200.0, 10.0], [5.0, H + 300.0], [6.5, 6.5], [20.5, 34.5]])
    vis[0, 1] = False  # a frame without any visible point: no update there
    vis[0, :, 5] = False  # a track never visible
    with torch.no_grad():
        assert _update_error(dense, windowed, tokens, points, grid, image, vis) < 1e-5
        out = windowed(tokens, points, grid, image, vis, num_prefix_tokens=1)
    assert torch.equal(out[0, 1], tokens[0, 1])


def test_windowed_equals_dense_for_clustered_and_sparse_tracks() -> None:
    """Tracks crowded into a corner leave most cells far from every track (the dense fallback of
    splatting) and put many tracks in one sampling block (extra passes)."""
    dense, windowed = _pair(seed=3)
    grid, patch = (20, 20), 4
    tokens, points, vis, image = _clip(grid, patch, frames=2, tracks=150, seed=4)
    points = 3.0 + torch.rand(points.shape, generator=torch.Generator().manual_seed(5)) * 6.0  # all near (3..9 px)
    points[0, 1, :140] = points[0, 1, :1]  # frame 1: 140 tracks on one point, a few elsewhere
    with torch.no_grad():
        assert _update_error(dense, windowed, tokens, points, grid, image, vis) < 1e-5
        single = torch.tensor([[[[40.0, 40.0]]]]).expand(1, 2, 1, 2)  # one track: every cell but a few is far
        assert _update_error(dense, windowed, tokens, single, grid, image, torch.ones(1, 2, 1, dtype=torch.bool)) < 1e-5


def test_windowed_frame_chunks_and_all_visible() -> None:
    dense, windowed = _pair(seed=6, frame_chunk=2)
    tokens, points, vis, image = _clip((9, 11), 8, frames=5, tracks=30, seed=7)
    with torch.no_grad():
        assert _update_error(dense, windowed, tokens, points, (9, 11), image, None) < 1e-5


def test_windowed_gradients_equal_dense() -> None:
    """Float64, so that rounding does not hide behind near-cancelling sums: every gradient agrees to
    the truncation tolerance (1e-7 of the softmax mass) relative to the largest gradient."""
    dense, windowed = (layer.double() for layer in _pair(seed=8))
    tokens, points, vis, image = _clip((10, 12), 4, frames=3, tracks=50, seed=9)
    grads = []
    for layer in (dense, windowed):
        x = tokens.double().requires_grad_(True)
        layer.zero_grad()
        layer(x, points.double(), (10, 12), image, vis, num_prefix_tokens=1).square().sum().backward()
        grads.append([x.grad] + [p.grad for p in layer.parameters()])
    scale = max(g.abs().max() for g in grads[0])
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= 1e-6 * scale


def test_set_attention_switches_the_implementation_with_the_same_weights() -> None:
    dense, windowed = _pair(seed=10)
    tokens, points, vis, image = _clip((8, 8), 4, frames=2, tracks=20, seed=11)
    set_attention(windowed, "dense")
    with torch.no_grad():
        switched = windowed(tokens, points, (8, 8), image, vis, 1)
        assert torch.equal(switched, dense(tokens, points, (8, 8), image, vis, 1))
    with pytest.raises(ValueError, match="attention"):
        set_attention(windowed, "sparse")
    with pytest.raises(ValueError, match="attention"):
        Tracktention(C, num_heads=HEADS, attention="sparse")


# ---------------------------------------------------------------- the truncation bound


def test_logit_bound_holds_and_is_sqrt_d_under_qk_layernorm() -> None:
    g = torch.Generator().manual_seed(0)
    d = 32
    ln = torch.nn.LayerNorm(d)
    with torch.no_grad():
        q, k = ln(torch.randn(2, 50, 4, d, generator=g)), ln(torch.randn(2, 70, 4, d, generator=g))
    bound = logit_bound(q, k)
    logits = torch.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(d)
    assert logits.abs().max() <= bound * (1 + 1e-6)
    assert bound == pytest.approx(math.sqrt(d), rel=1e-3)  # unit gain, zero bias: ||q|| = ||k|| = sqrt(d)
    aligned = q[:, :1].expand_as(q)  # a key equal to the query attains it
    assert (torch.einsum("nqhd,nkhd->nhqk", q, aligned) / math.sqrt(d)).max() == pytest.approx(bound, rel=1e-3)


def test_layernorm_bound_holds_for_any_input_and_learned_gains() -> None:
    """The bound Tracktention uses comes from the QK LayerNorm parameters alone."""
    g = torch.Generator().manual_seed(1)
    d = 48
    q_norm, k_norm = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
    assert layernorm_logit_bound(q_norm, k_norm) == pytest.approx(math.sqrt(d))
    with torch.no_grad():
        for norm in (q_norm, k_norm):
            norm.weight.copy_(torch.randn(d, generator=g) * 2)
            norm.bias.copy_(torch.randn(d, generator=g))
        q = q_norm(torch.randn(3, 40, 2, d, generator=g) * 50 + 7)
        k = k_norm(torch.randn(3, 60, 2, d, generator=g) ** 3)
    bound = layernorm_logit_bound(q_norm, k_norm)
    assert logit_bound(q, k) <= bound
    assert (torch.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(d)).abs().max() <= bound


def test_excluded_mass_bound_holds_for_adversarial_logits_and_three_tokens_are_not_enough() -> None:
    """Keys outside the window get the largest content logit +B and keys inside it -B (the worst
    case under |q.k| / sqrt(d) <= B): the mass outside a radius-r window, computed in float64, stays
    below the bound for points at, between and outside token centres. The bias alone is -18 at 3
    tokens, but with B = sqrt(48) (head width 48, QK LayerNorm) a 3-token window around a point near
    a cell corner leaves more than 1e-5 of the mass; the radius chosen from B leaves < 1e-7."""
    sigma = 0.5
    h = w = 25
    grid = grid_positions((h, w)).double()

    def excluded_mass(point, radius, bound):
        p = torch.tensor(point, dtype=torch.float64)
        cell = torch.stack([p[0].round().clamp(0, w - 1), p[1].round().clamp(0, h - 1)])
        inside = (grid - cell).abs().amax(-1) <= radius
        logits = torch.where(inside, -bound, bound) - ((grid - p) ** 2).sum(-1) / (2 * sigma**2)
        return torch.softmax(logits, 0)[~inside].sum().item()

    for bound in (math.sqrt(32), math.sqrt(48), 10.0):
        for point in ([12.0, 12.0], [12.49, 12.49], [12.3, 11.6], [-4.0, 12.2], [12.0, 30.0], [-0.5, -0.5]):
            for radius in (2, 3, 4, 5):
                assert excluded_mass(point, radius, bound) <= excluded_mass_bound(radius, bound, sigma)
    bound = math.sqrt(48)
    assert excluded_mass([12.49, 12.49], 3, bound) > 1e-5
    assert window_radius(bound, sigma) == 4  # the radius at initialisation for head widths 32 and 48: 9 x 9 windows
    assert window_radius(math.sqrt(32), sigma) == 4
    assert excluded_mass([12.49, 12.49], window_radius(bound, sigma), bound) < 1e-7
    assert window_radius(4 * bound, sigma) > 4  # larger logits widen the window
    assert excluded_mass_bound(window_radius(bound, sigma), bound, sigma) <= 1e-7


def test_windowed_stays_exact_when_learned_norms_enlarge_the_logits() -> None:
    dense, windowed = _pair(seed=12)
    with torch.no_grad():
        for layer in (dense, windowed):
            for attn in (layer.sampling, layer.splatting):
                attn.q_norm.weight.fill_(3.0)
                attn.k_norm.weight.fill_(3.0)
    tokens, points, vis, image = _clip((16, 16), 4, frames=2, tracks=40, seed=13)
    with torch.no_grad():
        assert _update_error(dense, windowed, tokens, points, (16, 16), image, vis) < 1e-5


# ---------------------------------------------------------------- kernels and memory


def test_splatting_kernel_counts_dense_cells_and_matches_the_dense_softmax() -> None:
    g = torch.Generator().manual_seed(0)
    grid, N, M, H, d = (24, 24), 2, 30, 2, 8
    q = torch.randn(1, 576, H, d, generator=g)
    k, v = torch.randn(N, M, H, d, generator=g), torch.randn(N, M, H, d, generator=g)
    q, k = torch.nn.functional.layer_norm(q, (d,)), torch.nn.functional.layer_norm(k, (d,))
    points = torch.rand(N, M, 2, generator=g) * 6  # every track in one corner
    valid = torch.rand(N, M, generator=g) < 0.8
    bound = logit_bound(q, k)
    out, dense_cells = grid_attends_points(q, k, v, points, valid, grid, 0.5, window_radius(bound, 0.5), bound)
    bias = gaussian_bias(grid_positions(grid)[None], points, 0.5).masked_fill(~valid[:, None], float("-inf"))
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2).expand(N, -1, -1, -1), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias[:, None])
    torch.testing.assert_close(out, ref.transpose(1, 2), rtol=1e-5, atol=1e-6)
    assert dense_cells > 0  # cells far from the corner went through the fallback


class _LargestTensor(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_windowed_memory_is_bounded_by_tracks_times_window_not_tokens() -> None:
    """On a 64 x 64 grid with 600 tracks the dense path holds a (frames, tracks, tokens) bias; the
    windowed path holds nothing larger than the grid features or tracks x a window of rows."""
    torch.manual_seed(0)
    grid, frames, tracks = (64, 64), 2, 600
    layer = Tracktention(C, num_heads=HEADS, inner_dim=16)
    tokens = torch.randn(1, frames, grid[0] * grid[1], C)
    points = torch.rand(1, frames, tracks, 2) * 255
    vis = torch.rand(1, frames, tracks) < 0.8
    sizes = {}
    for impl in ("dense", "windowed"):
        set_attention(layer, impl)
        with torch.no_grad(), _LargestTensor() as probe:
            layer(tokens, points, grid, (256, 256), vis)
        sizes[impl] = probe.largest
    tracks_x_tokens = frames * tracks * grid[0] * grid[1]
    assert sizes["dense"] >= tracks_x_tokens
    assert sizes["windowed"] < tracks_x_tokens / 4


def test_sampling_kernel_matches_dense_softmax_with_extra_passes() -> None:
    g = torch.Generator().manual_seed(1)
    grid, N, M, H, d = (10, 30), 3, 200, 2, 8
    q = torch.nn.functional.layer_norm(torch.randn(N, M, H, d, generator=g), (d,))
    k = torch.nn.functional.layer_norm(torch.randn(N, 300, H, d, generator=g), (d,))
    v = torch.randn(N, 300, H, d, generator=g)
    points = torch.rand(N, M, 2, generator=g) * torch.tensor([29.0, 9.0])
    points[1, :150, 1] = 4.2  # 150 tracks in one row of frame 1: more than one pass
    radius = window_radius(logit_bound(q, k), 0.5)
    out = points_attend_grid(q, k, v, points, grid, 0.5, radius, block_rows=1)
    bias = gaussian_bias(points, grid_positions(grid)[None], 0.5)
    ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           attn_mask=bias[:, None])
    torch.testing.assert_close(out, ref.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_pixels_on_token_centres_sample_their_own_token_in_both_paths() -> None:
    dense, windowed = _pair(seed=14)
    grid, image = (6, 8), (24, 32)
    points = pixels_to_grid(torch.tensor([[[5.5, 9.5], [1.5, 1.5]]]), image, grid)
    feats = torch.randn(1, 48, C)
    with torch.no_grad():
        a, _ = dense.sample(feats, points, grid)
        b, _ = windowed.sample(feats, points, grid)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_windowed_equals_dense_in_float32_and_runs_under_bf16() -> None:
    dense, windowed = (layer.cuda() for layer in _pair(seed=15))
    tokens, points, vis, image = (x.cuda() if isinstance(x, torch.Tensor) else x
                                  for x in _clip((37, 37), 14, frames=4, tracks=576, seed=16))
    with torch.no_grad():
        assert _update_error(dense, windowed, tokens, points, (37, 37), image, vis) < 1e-5
        with torch.autocast("cuda", dtype=torch.bfloat16):
            a = dense(tokens, points, (37, 37), image, vis, num_prefix_tokens=1).float() - tokens
            b = windowed(tokens, points, (37, 37), image, vis, num_prefix_tokens=1).float() - tokens
    assert torch.isfinite(b).all()
    assert (a - b).abs().max() <= 0.05 * a.abs().max()  # bf16 rounding, both paths


def test_cached_splat_geometry_made_under_inference_mode_serves_autograd_later():
    from models.windowed_attention import _splat_geometry

    _splat_geometry.cache_clear()
    with torch.inference_mode():
        first = _splat_geometry((5, 7), 4, 1, torch.device("cpu"))
    assert not any(t.is_inference() for t in first.values())  # validation first, then training steps
    _splat_geometry.cache_clear()
