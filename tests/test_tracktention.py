"""Tests for models/tracktention.py: coordinates, identity at init, locality, masking, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.tracktention import (
    Tracktention,
    TracktentionSet,
    TrackTransformer,
    gaussian_bias,
    grid_positions,
    grid_to_pixels,
    pixels_to_grid,
    rope_2d,
)

B, T, M, C, HEADS = 2, 4, 6, 32, 4
GRID = (4, 5)
PATCH = 14
IMAGE = (GRID[0] * PATCH, GRID[1] * PATCH)  # ViT patch-14 image


def _inputs(seed: int = 0, grid=GRID, image=IMAGE, prefix: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, T, prefix + grid[0] * grid[1], C, generator=g)
    scale = torch.tensor([image[1] - 1, image[0] - 1], dtype=torch.float32)
    tracks = torch.rand(B, T, M, 2, generator=g) * scale
    visible = torch.rand(B, T, M, generator=g) > 0.3
    return tokens, tracks, visible


def _perturb_out(layer: Tracktention, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.out_proj.weight.copy_(torch.randn(layer.out_proj.weight.shape, generator=g) * 0.1)
        layer.out_proj.bias.copy_(torch.randn(layer.out_proj.bias.shape, generator=g) * 0.1)


def _zero_query(attn: nn.Module) -> None:
    # q = LN(0) = LayerNorm bias = 0, so the logits are the Gaussian bias alone.
    with torch.no_grad():
        attn.q.weight.zero_()
        attn.q.bias.zero_()


def _token_centre_pixels(i: int, j: int, image_hw, grid_hw) -> tuple[float, float]:
    H, W = image_hw
    h, w = grid_hw
    return (j + 0.5) * W / w - 0.5, (i + 0.5) * H / h - 0.5


# ---------------------------------------------------------------- coordinates


@pytest.mark.parametrize(
    "image_hw, grid_hw",
    [((4 * 14, 5 * 14), (4, 5)), ((37 * 14, 37 * 14), (37, 37)), ((24, 32), (6, 8))],  # ViT/14, DA-V2 518², stride 4
)
def test_token_centre_pixels_map_exactly_to_token_indices(image_hw, grid_hw) -> None:
    h, w = grid_hw
    centres = torch.tensor(
        [[_token_centre_pixels(i, j, image_hw, grid_hw) for j in range(w)] for i in range(h)]
    ).reshape(-1, 2)
    assert torch.equal(pixels_to_grid(centres, image_hw, grid_hw), grid_positions(grid_hw))
    assert torch.equal(grid_to_pixels(grid_positions(grid_hw), image_hw, grid_hw), centres)


def test_pixel_centre_formula_for_patch14_and_stride4() -> None:
    # Patch j of a /14 ViT covers pixels 14j..14j+13 (centre 14j+6.5); a stride-4 cell 4j..4j+3 (centre 4j+1.5).
    assert _token_centre_pixels(2, 3, (56, 70), (4, 5)) == (3 * 14 + 6.5, 2 * 14 + 6.5)
    assert _token_centre_pixels(2, 3, (24, 32), (6, 8)) == (3 * 4 + 1.5, 2 * 4 + 1.5)
    # Image edges (-0.5 and W-0.5 in pixels) are the grid edges (-0.5 and w-0.5 in tokens).
    edges = pixels_to_grid(torch.tensor([[-0.5, -0.5], [69.5, 55.5]]), (56, 70), (4, 5))
    assert torch.equal(edges, torch.tensor([[-0.5, -0.5], [4.5, 3.5]]))


# ---------------------------------------------------------------- identity at init


@pytest.mark.parametrize("rope", [False, True])
def test_identity_at_zero_init_on_tokens(rope: bool) -> None:
    torch.manual_seed(0)
    layer = Tracktention(C, num_heads=HEADS, rope=rope)
    tokens, tracks, visible = _inputs(prefix=1)
    out = layer(tokens, tracks, GRID, IMAGE, visible, num_prefix_tokens=1)
    assert out.shape == tokens.shape
    assert torch.equal(out, tokens)
    flat = tokens.flatten(0, 1)
    assert torch.equal(layer(flat, tracks, GRID, IMAGE, visible, num_prefix_tokens=1), flat)


def test_identity_at_zero_init_on_maps() -> None:
    torch.manual_seed(0)
    layer = Tracktention(C, num_heads=HEADS, inner_dim=16)
    grid, image = (6, 8), (24, 32)  # stride-4 ConvNet
    _, tracks, visible = _inputs(grid=grid, image=image)
    maps = torch.randn(B, T, C, *grid)
    assert torch.equal(layer.forward_map(maps, tracks, image, visible), maps)
    assert torch.equal(layer.forward_map(maps.flatten(0, 1), tracks, image, visible), maps.flatten(0, 1))


def test_output_changes_after_perturbing_out_proj_and_prefix_passes_through() -> None:
    torch.manual_seed(0)
    layer = Tracktention(C, num_heads=HEADS)
    _perturb_out(layer)
    tokens, tracks, visible = _inputs(prefix=5)  # cls + 4 registers
    out = layer(tokens, tracks, GRID, IMAGE, visible, num_prefix_tokens=5)
    assert torch.equal(out[:, :, :5], tokens[:, :, :5])
    assert (out[:, :, 5:] - tokens[:, :, 5:]).abs().max() > 1e-3
    # The map path is the token path on (h*w, C)-flattened maps.
    maps = tokens[:, :, 5:].transpose(-1, -2).unflatten(-1, GRID)
    out_map = layer.forward_map(maps, tracks, IMAGE, visible)
    torch.testing.assert_close(out_map.flatten(-2).transpose(-1, -2), out[:, :, 5:])


# ---------------------------------------------------------------- sampling / splatting locality


def test_gaussian_bias_values_and_transpose() -> None:
    a, b = torch.rand(3, 2) * 4, torch.rand(5, 2) * 4
    bias = gaussian_bias(a, b, 0.5)
    expected = -((a[:, None] - b[None]) ** 2).sum(-1) / (2 * 0.25)
    torch.testing.assert_close(bias, expected)
    assert torch.equal(gaussian_bias(b, a, 0.5), bias.T)


def test_sampling_is_local_with_gaussian_weights() -> None:
    torch.manual_seed(0)
    grid, image = (6, 8), (24, 32)  # stride-4 ConvNet
    layer = Tracktention(C, num_heads=HEADS, sigma=0.5)
    _zero_query(layer.sampling)
    feats = torch.randn(1, grid[0] * grid[1], C)  # random but fixed
    i, j = 2, 3
    pt = torch.tensor([[_token_centre_pixels(i, j, image, grid)]])
    points = pixels_to_grid(pt, image, grid)
    _, weights = layer.sample(feats, points, grid, return_weights=True)
    w = weights[0, :, 0]  # (heads, h*w)
    d2 = ((grid_positions(grid) - torch.tensor([j, i], dtype=torch.float32)) ** 2).sum(-1)
    expected = torch.softmax(-d2 / (2 * 0.5**2), dim=0)
    for head in w:
        torch.testing.assert_close(head, expected)
    own = i * grid[1] + j
    assert int(w[0].argmax()) == own
    # Decay exp(-d^2 / 2 sigma^2): e^-2 one token away, e^-8 two tokens away.
    torch.testing.assert_close(w[0, own + 1] / w[0, own], torch.tensor(math.exp(-2.0)))
    torch.testing.assert_close(w[0, own + 2] / w[0, own], torch.tensor(math.exp(-8.0)))
    assert w[0, own] > 0.6  # sigma = 1/2 puts ~62 % on the own token, 8.5 % on each 4-neighbour
    layer_narrow = Tracktention(C, num_heads=HEADS, sigma=0.25)
    _zero_query(layer_narrow.sampling)
    _, w_narrow = layer_narrow.sample(feats, points, grid, return_weights=True)
    assert w_narrow[0, :, 0, own].min() > 0.9
    # Sampled track token = the weighted sum of the projected image tokens.
    tok, _ = layer.sample(feats, points, grid)
    torch.testing.assert_close(tok[0, 0], expected @ layer.sampling.project(feats)[0])


def test_weights_path_matches_sdpa_path() -> None:
    torch.manual_seed(0)
    layer = Tracktention(C, num_heads=HEADS, rope=True)
    tokens, tracks, visible = _inputs()
    feats = tokens.flatten(0, 1)
    points = pixels_to_grid(tracks, IMAGE, GRID).flatten(0, 1)
    a, _ = layer.sample(feats, points, GRID)
    b, w = layer.sample(feats, points, GRID, return_weights=True)
    torch.testing.assert_close(a, b)
    assert w.shape == (B * T, HEADS, M, GRID[0] * GRID[1])
    tt = torch.randn(B * T, M, C)
    a, _ = layer.splat(tt, points, GRID, visible.flatten(0, 1))
    b, w = layer.splat(tt, points, GRID, visible.flatten(0, 1), return_weights=True)
    torch.testing.assert_close(a, b)
    assert w.shape == (B * T, HEADS, GRID[0] * GRID[1], M)


def test_splatting_writes_into_the_token_under_the_track() -> None:
    torch.manual_seed(0)
    grid = (6, 8)
    layer = Tracktention(C, num_heads=HEADS)
    _perturb_out(layer)
    _zero_query(layer.splatting)
    cells = [(1, 1), (1, 5), (4, 2), (4, 6)]  # >= 3 tokens apart
    points = torch.tensor([[[float(j), float(i)] for i, j in cells]])
    tt = torch.randn(1, len(cells), C)
    _, weights = layer.splat(tt, points, grid, return_weights=True)
    # Transposed bias: each grid token's weights over tracks are softmax_m(-||pos_j - p_m||^2 / 2 sigma^2).
    expected = torch.softmax(gaussian_bias(grid_positions(grid), points[0], 0.5), dim=-1)
    torch.testing.assert_close(weights[0, 0], expected)
    under = [i * grid[1] + j for i, j in cells]
    for m, tok in enumerate(under):
        assert weights[0, :, tok, m].min() > 0.99
    # Changing track 0's token changes the token under it (almost fully) and not the token under track 1.
    base, _ = layer.splat(tt, points, grid)
    tt2 = tt.clone()
    tt2[0, 0] += torch.randn(C)
    moved, _ = layer.splat(tt2, points, grid)
    delta = (moved - base)[0].norm(dim=-1)
    assert delta[under[1]] < 1e-3 * delta[under[0]]
    assert delta[under[0]] > 0.99 * delta.max()


# ---------------------------------------------------------------- track transformer


def test_no_attention_across_tracks() -> None:
    torch.manual_seed(0)
    tt = TrackTransformer(C, HEADS, num_layers=2)
    x = torch.randn(B, T, M, C)
    y = tt(x)
    x2 = x.clone()
    x2[:, :, 2] += torch.randn(B, T, C)
    y2 = tt(x2)
    others = [k for k in range(M) if k != 2]
    torch.testing.assert_close(y2[:, :, others], y[:, :, others], rtol=0, atol=1e-6)
    assert (y2[:, :, 2] - y[:, :, 2]).abs().max() > 1e-2


def test_invisible_steps_are_masked_in_time_attention() -> None:
    torch.manual_seed(0)
    tt = TrackTransformer(C, HEADS, num_layers=2)
    x = torch.randn(B, T, M, C)
    visible = torch.rand(B, T, M) > 0.4
    visible[:, 0] = True  # every track has a visible step
    x2 = torch.where(visible[..., None], x, torch.randn(B, T, M, C))
    y, y2 = tt(x, visible), tt(x2, visible)
    torch.testing.assert_close(y2[visible], y[visible], rtol=0, atol=1e-6)
    # Without masking the invisible steps leak into the visible ones.
    assert (tt(x2)[visible] - tt(x)[visible]).abs().max() > 1e-2


def test_time_encoding_makes_the_transformer_order_aware() -> None:
    torch.manual_seed(0)
    tt = TrackTransformer(C, HEADS, num_layers=1)
    x = torch.randn(1, 1, M, C).expand(1, T, M, C)  # the same token at every step
    y = tt(x)
    assert (y[:, 0] - y[:, 1]).abs().max() > 1e-3


def test_invisible_points_do_not_affect_the_layer_output() -> None:
    torch.manual_seed(0)
    layer = Tracktention(C, num_heads=HEADS)
    _perturb_out(layer)
    tokens, tracks, visible = _inputs()
    moved = torch.where(visible[..., None], tracks, torch.rand(B, T, M, 2) * 50)
    out = layer(tokens, tracks, GRID, IMAGE, visible)
    torch.testing.assert_close(layer(tokens, moved, GRID, IMAGE, visible), out, rtol=0, atol=1e-5)
    layer.mask_invisible = False  # the visibility flags are then ignored
    assert torch.equal(layer(tokens, tracks, GRID, IMAGE, visible), layer(tokens, tracks, GRID, IMAGE))
    assert (layer(tokens, moved, GRID, IMAGE, visible) - layer(tokens, tracks, GRID, IMAGE)).abs().max() > 1e-4


def test_all_invisible_track_and_frame_are_finite() -> None:
    torch.manual_seed(0)
    layer = Tracktention(C, num_heads=HEADS)
    _perturb_out(layer)
    tokens, tracks, visible = _inputs()
    visible[:, :, 0] = False  # track 0 never visible
    visible[0, 1] = False  # frame 1 of clip 0 has no visible track
    tokens.requires_grad_(True)
    out = layer(tokens, tracks, GRID, IMAGE, visible)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0, 1], tokens[0, 1])  # nothing to splat: no update
    out.square().sum().backward()
    assert torch.isfinite(tokens.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    # A track with no visible step attends over all its steps, as if unmasked.
    x = torch.randn(B, T, M, C)
    y = layer.track_transformer(x, visible)
    torch.testing.assert_close(y[:, :, 0], layer.track_transformer(x)[:, :, 0])
    y = layer.track_transformer(x, torch.zeros(B, T, M, dtype=torch.bool))
    assert torch.isfinite(y).all()


# ---------------------------------------------------------------- gradients, widths, chunking


@pytest.mark.parametrize("rope", [False, True])
def test_gradients_reach_every_parameter(rope: bool) -> None:
    torch.manual_seed(0)
    layer = Tracktention(C, num_heads=HEADS, inner_dim=16, rope=rope)
    tokens, tracks, visible = _inputs()
    layer(tokens, tracks, GRID, IMAGE, visible).sum().backward()  # W_out = 0: only W_out learns at step 0
    assert all(p.grad.abs().sum() == 0 for n, p in layer.named_parameters() if not n.startswith("out_proj"))
    layer.zero_grad()
    _perturb_out(layer)
    layer(tokens, tracks, GRID, IMAGE, visible).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_frame_chunking_matches_one_pass() -> None:
    torch.manual_seed(0)
    layer = Tracktention(C, num_heads=HEADS)
    _perturb_out(layer)
    chunked = Tracktention(C, num_heads=HEADS, frame_chunk=3)
    chunked.load_state_dict(layer.state_dict())
    tokens, tracks, visible = _inputs()
    torch.testing.assert_close(chunked(tokens, tracks, GRID, IMAGE, visible), layer(tokens, tracks, GRID, IMAGE, visible))


def test_rope_dot_products_depend_on_relative_position_only() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 3, 16, generator=g), torch.randn(1, 2, 4, 16, generator=g)
    pq, pk = torch.rand(1, 3, 2, generator=g) * 10, torch.rand(1, 4, 2, generator=g) * 10
    shift = torch.tensor([2.5, -1.25])
    a = rope_2d(q, pq) @ rope_2d(k, pk).transpose(-1, -2)
    b = rope_2d(q, pq + shift) @ rope_2d(k, pk + shift).transpose(-1, -2)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (a - q @ k.transpose(-1, -2)).abs().max() > 1e-2


def test_bad_inputs_raise_clear_errors() -> None:
    layer = Tracktention(C, num_heads=HEADS)
    tokens, tracks, visible = _inputs()
    with pytest.raises(ValueError, match="h\\*w"):
        layer(tokens, tracks, (5, 5), IMAGE)
    with pytest.raises(ValueError, match="bool"):
        layer(tokens, tracks, GRID, IMAGE, visible.float())
    with pytest.raises(ValueError, match="rows"):
        layer(tokens.flatten(0, 1)[:-1], tracks, GRID, IMAGE)
    with pytest.raises(ValueError, match="num_heads"):
        Tracktention(C, num_heads=5)


# ---------------------------------------------------------------- TracktentionSet


def test_tracktention_set_places_layers_after_chosen_blocks() -> None:
    torch.manual_seed(0)
    tset = TracktentionSet(C, block_indices=[2, 5], num_heads=HEADS)
    assert tset.block_indices == [2, 5] and 5 in tset and 3 not in tset
    assert any(k.startswith("layers.5.sampling.") for k in tset.state_dict())
    tokens, tracks, visible = _inputs(prefix=1)
    assert tset(3, tokens, tracks, GRID, IMAGE, visible, num_prefix_tokens=1) is tokens
    assert torch.equal(tset(2, tokens, tracks, GRID, IMAGE, visible, num_prefix_tokens=1), tokens)
    _perturb_out(tset.layers["2"])
    assert not torch.equal(tset(2, tokens, tracks, GRID, IMAGE, visible, num_prefix_tokens=1), tokens)
    # Per-stage widths for ConvNets.
    cset = TracktentionSet([16, 32], block_indices=[0, 1], num_heads=HEADS)
    maps = torch.randn(B, T, 16, 6, 8)
    assert torch.equal(cset.forward_map(0, maps, tracks, (24, 32), visible), maps)
    assert cset.forward_map(7, maps, tracks, (24, 32)) is maps
    with pytest.raises(ValueError, match="distinct"):
        TracktentionSet(C, block_indices=[1, 1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_autocast_matches_float32() -> None:
    torch.manual_seed(0)
    layer = Tracktention(C, num_heads=HEADS, frame_chunk=3).cuda()
    tokens, tracks, visible = (x.cuda() for x in _inputs(prefix=1))
    visible[:, :, 0] = False
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.equal(layer(tokens, tracks, GRID, IMAGE, visible, num_prefix_tokens=1), tokens)
    _perturb_out(layer)
    ref = layer(tokens, tracks, GRID, IMAGE, visible, num_prefix_tokens=1)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(tokens, tracks, GRID, IMAGE, visible, num_prefix_tokens=1)
    out.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
