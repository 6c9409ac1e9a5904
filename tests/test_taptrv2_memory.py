"""TAPTRv2's memory-lean attentions compute what the previous implementations computed (float32, 1e-6).

The references below are the earlier code: every level's samples stacked into one
(N, M, D, Q, L * P) tensor, and spatial self-attention under an explicit (B * heads, N, N) mask.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import models.deformable_attention as deformable
import models.taptrv2_layers as layers
from models.deformable_attention import KeyAwareMSDeformAttn, _locations, ms_deform_attn
from models.taptrv2 import TaptrV2, TaptrV2Config
from models.taptrv2_layers import grouped_self_attention
from tools.parity_taptrv2 import TINY

SHAPES = [(6, 7), (3, 4), (2, 2)]


def reference_sample_levels(maps, spatial_shapes, locations):
    n, _, heads, dim = maps.shape
    _, queries, _, levels, points, _ = locations.shape
    grids = 2 * locations - 1
    per_level = maps.split([h * w for h, w in spatial_shapes], dim=1)
    samples = []
    for level, (h, w) in enumerate(spatial_shapes):
        image = per_level[level].flatten(2).transpose(1, 2).reshape(n * heads, dim, h, w)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    return torch.stack(samples, dim=-2).flatten(-2).view(n, heads, dim, queries, levels * points)


def reference_ms_deform_attn(value, spatial_shapes, locations, weights):
    n, queries, heads, levels, points = weights.shape
    sampled = reference_sample_levels(value, spatial_shapes, locations)
    w = weights.transpose(1, 2).reshape(n, heads, 1, queries, levels * points)
    return (sampled * w).sum(-1).flatten(1, 2).transpose(1, 2).contiguous()


def reference_key_aware_forward(self, query, reference_xy, memory, spatial_shapes):
    n, q, _ = query.shape
    m, levels, points = self.n_heads, self.n_levels, self.n_points
    d = self.d_model // m
    key_value = torch.cat([self.key_proj(memory).view(n, -1, m, d), self.value_proj(memory).view(n, -1, m, d)], -1)
    offsets = self.sampling_offsets(query).view(n, q, m, levels, points, 2)
    sampled = reference_sample_levels(key_value, spatial_shapes, _locations(reference_xy, offsets, spatial_shapes))
    keys, values = sampled.split(d, dim=2)
    q_heads = self.query_proj(query).view(n, q, m, d).transpose(1, 2)
    logits = torch.einsum("nmqd,nmdqk->nmqk", q_heads, keys) / math.sqrt(d)
    out = torch.einsum("nmqk,nmdqk->nqmd", logits.softmax(-1), values).flatten(2)
    return self.output_proj(out), logits.transpose(1, 2).flatten(2), offsets


def reference_grouped_self_attention(attn, qk, value, groups):
    heads = attn.num_heads
    mask = groups[:, :, None] != groups[:, None, :]  # True = blocked
    mask = mask[:, None].expand(-1, heads, -1, -1).reshape(-1, groups.shape[1], groups.shape[1])
    return attn(qk, qk, value, attn_mask=mask, need_weights=False)[0]


def _relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setattr(deformable, "_SAMPLE_BUDGET", 500)  # several query chunks even on tiny inputs


def test_ms_deform_attn_matches_the_stacked_reference(small_budget):
    g = torch.Generator().manual_seed(0)
    tokens = sum(h * w for h, w in SHAPES)
    value = torch.randn(2, tokens, 4, 8, generator=g)
    locations = torch.rand(2, 37, 4, len(SHAPES), 3, 2, generator=g) * 1.2 - 0.1
    weights = torch.rand(2, 37, 4, len(SHAPES), 3, generator=g).softmax(-1)
    assert _relative(ms_deform_attn(value, SHAPES, locations, weights),
                     reference_ms_deform_attn(value, SHAPES, locations, weights)) < 1e-6


def test_key_aware_attention_matches_the_stacked_reference(small_budget):
    torch.manual_seed(0)
    attn = KeyAwareMSDeformAttn(d_model=32, n_levels=len(SHAPES), n_heads=4, n_points=3)
    memory = torch.randn(2, sum(h * w for h, w in SHAPES), 32)
    query = torch.randn(2, 29, 32)
    ref_xy = torch.rand(2, 29, 1, 2).expand(2, 29, len(SHAPES), 2)
    ours = attn(query, ref_xy, memory, SHAPES)
    theirs = reference_key_aware_forward(attn, query, ref_xy, memory, SHAPES)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert _relative(a, b) < 1e-6
    # gradients flow as before
    (ours[0].square().sum() + ours[1].sum()).backward()
    grads = [p.grad.clone() for p in attn.parameters()]
    attn.zero_grad()
    (theirs[0].square().sum() + theirs[1].sum()).backward()
    for a, p in zip(grads, attn.parameters()):
        assert _relative(a, p.grad) < 1e-5


@pytest.mark.parametrize("case", ["mixed", "uniform", "one_group_empty"])
def test_grouped_self_attention_matches_the_masked_module(case):
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(16, 4)
    L, B = 23, 3
    qk, value = torch.randn(L, B, 16), torch.randn(L, B, 16)
    groups = torch.rand(B, L) < 0.6
    if case == "uniform":
        groups[:] = True
    elif case == "one_group_empty":
        groups[0] = False
        groups[1] = True
    out = grouped_self_attention(attn, qk, value, groups)
    assert _relative(out, reference_grouped_self_attention(attn, qk, value, groups)) < 1e-6


def test_taptrv2_outputs_match_the_previous_implementation(monkeypatch):
    """Float32 tiny model, queries at several frames (so spatial attention mixes groups): the lean
    attentions against the previous ones."""
    torch.manual_seed(0)
    model = TaptrV2(TaptrV2Config(**TINY)).eval()
    g = torch.Generator().manual_seed(1)
    frames, (H, W) = 12, TINY["model_resolution"]
    video = torch.rand(1, frames, 3, H, W, generator=g) * 255
    queries = torch.cat([torch.randint(0, 6, (1, 10, 1), generator=g).float(),
                         torch.rand(1, 10, 2, generator=g) * (W - 1)], -1)
    with torch.no_grad():
        ours = model(video, queries)
        monkeypatch.setattr(deformable, "ms_deform_attn", reference_ms_deform_attn)
        monkeypatch.setattr(KeyAwareMSDeformAttn, "forward", reference_key_aware_forward)
        monkeypatch.setattr(layers, "grouped_self_attention", reference_grouped_self_attention)
        theirs = model(video, queries)
    for name in ("layer_tracks", "layer_apu_tracks", "layer_vis_logits"):
        assert _relative(getattr(ours, name), getattr(theirs, name)) < 1e-6, name
