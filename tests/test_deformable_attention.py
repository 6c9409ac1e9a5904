"""Multi-scale deformable attention against explicit bilinear sampling, and the key-aware variant."""

import math

import torch

from models.deformable_attention import KeyAwareMSDeformAttn, MSDeformAttn, ms_deform_attn

SHAPES = [(3, 4), (2, 5)]  # (H, W) per level: non-square, different per level


def bilinear_by_hand(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """image (H, W, D); (x, y) normalised with 0 / 1 at the outer pixel edges; zero outside."""
    h, w, d = image.shape
    u, v = x * w - 0.5, y * h - 0.5  # pixel centres at integers
    u0, v0 = math.floor(u), math.floor(v)
    out = torch.zeros(d, dtype=image.dtype)
    for dv in (0, 1):
        for du in (0, 1):
            cu, cv = u0 + du, v0 + dv
            weight = (1 - abs(u - cu)) * (1 - abs(v - cv))
            if 0 <= cu < w and 0 <= cv < h:
                out += weight * image[cv, cu]
    return out


def level_image(value: torch.Tensor, level: int, head: int) -> torch.Tensor:
    start = sum(h * w for h, w in SHAPES[:level])
    h, w = SHAPES[level]
    return value[start:start + h * w, head].view(h, w, -1)


def test_ms_deform_attn_matches_hand_computed_bilinear_sum():
    g = torch.Generator().manual_seed(0)
    heads, dim, queries, points = 2, 3, 2, 2
    tokens = sum(h * w for h, w in SHAPES)
    value = torch.randn(1, tokens, heads, dim, generator=g, dtype=torch.float64)
    # some locations fall outside [0, 1]: those taps read zeros
    locations = torch.rand(1, queries, heads, len(SHAPES), points, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(1, queries, heads, len(SHAPES), points, generator=g, dtype=torch.float64)

    out = ms_deform_attn(value, SHAPES, locations, weights)

    expected = torch.zeros(1, queries, heads * dim, dtype=torch.float64)
    for q in range(queries):
        for m in range(heads):
            acc = torch.zeros(dim, dtype=torch.float64)
            for level in range(len(SHAPES)):
                for p in range(points):
                    x, y = locations[0, q, m, level, p].tolist()
                    acc += weights[0, q, m, level, p] * bilinear_by_hand(level_image(value[0], level, m), x, y)
            expected[0, q, m * dim:(m + 1) * dim] = acc
    assert torch.allclose(out, expected, atol=1e-12)


def test_msdeformattn_offsets_are_pixels_of_each_level():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=4, n_levels=2, n_heads=1, n_points=1).double()
    with torch.no_grad():
        # +1 pixel along x on level 0, -1 pixel along y on level 1
        attn.sampling_offsets.bias.copy_(torch.tensor([1.0, 0.0, 0.0, -1.0], dtype=torch.float64))
        for proj in (attn.value_proj, attn.output_proj):
            proj.weight.copy_(torch.eye(4, dtype=torch.float64))
            proj.bias.zero_()
    memory = torch.randn(1, sum(h * w for h, w in SHAPES), 4, dtype=torch.float64)
    ref = torch.tensor([0.3, 0.6], dtype=torch.float64).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    out = attn(torch.randn(1, 1, 4, dtype=torch.float64), ref, memory, SHAPES)
    # zero attention logits -> equal weights over the two taps
    tap0 = bilinear_by_hand(level_image(memory[0, :, None], 0, 0), 0.3 + 1 / SHAPES[0][1], 0.6)
    tap1 = bilinear_by_hand(level_image(memory[0, :, None], 1, 0), 0.3, 0.6 - 1 / SHAPES[1][0])
    assert torch.allclose(out[0, 0], (tap0 + tap1) / 2, atol=1e-12)


def test_ring_initialisation_of_offsets():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=8, n_points=3)
    bias = attn.sampling_offsets.bias.view(8, 2, 3, 2)
    assert torch.equal(attn.sampling_offsets.weight, torch.zeros_like(attn.sampling_offsets.weight))
    assert torch.allclose(bias[0, 1, 2], torch.tensor([3.0, 0.0]))  # head 0 points along +x, point k at k + 1
    assert torch.allclose(bias[2, 0, 0], torch.tensor([0.0, 1.0]), atol=1e-6)  # head 2 along +y
    assert torch.allclose(bias[1, 0, 1], torch.tensor([2.0, 2.0]))  # diagonal heads on the square ring


def test_key_aware_logits_weights_and_offsets_by_hand():
    g = torch.Generator().manual_seed(1)
    attn = KeyAwareMSDeformAttn(d_model=6, n_levels=2, n_heads=2, n_points=2).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    memory = torch.randn(1, sum(h * w for h, w in SHAPES), 6, generator=g, dtype=torch.float64)
    query = torch.randn(1, 3, 6, generator=g, dtype=torch.float64)
    ref = torch.rand(1, 3, 1, 2, generator=g, dtype=torch.float64).expand(1, 3, 2, 2)

    out, logits, offsets = attn(query, ref, memory, SHAPES)

    assert logits.shape == (1, 3, 2 * 2 * 2) and offsets.shape == (1, 3, 2, 2, 2, 2)
    assert torch.allclose(offsets, attn.sampling_offsets(query).view(1, 3, 2, 2, 2, 2))
    keys = attn.key_proj(memory)[0].view(-1, 2, 3)
    values = attn.value_proj(memory)[0].view(-1, 2, 3)
    q_heads = attn.query_proj(query)[0].view(3, 2, 3)
    expected = torch.zeros(3, 6, dtype=torch.float64)
    for q in range(3):
        for m in range(2):
            taps, k_logits = [], []
            for level, (h, w) in enumerate(SHAPES):
                for p in range(2):
                    x = ref[0, q, level, 0] + offsets[0, q, m, level, p, 0] / w
                    y = ref[0, q, level, 1] + offsets[0, q, m, level, p, 1] / h
                    k = bilinear_by_hand(level_image(keys, level, m), x.item(), y.item())
                    taps.append(bilinear_by_hand(level_image(values, level, m), x.item(), y.item()))
                    k_logits.append((q_heads[q, m] * k).sum() / math.sqrt(3))
            k_logits = torch.stack(k_logits)
            # raw logits head-major, then level, then point
            assert torch.allclose(logits[0, q, m * 4:(m + 1) * 4], k_logits, atol=1e-12)
            expected[q, m * 3:(m + 1) * 3] = (k_logits.softmax(0)[:, None] * torch.stack(taps)).sum(0)
    assert torch.allclose(out[0], attn.output_proj(expected), atol=1e-12)
