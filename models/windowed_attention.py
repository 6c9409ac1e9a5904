"""Tracktention's point <-> grid attentions computed on local windows: the dense function, exactly.

Both attentions of a Tracktention layer have logits ``q.k / sqrt(d) - ||p_q - p_k||^2 / (2 sigma^2)``
between a set of points (tracks) and a token grid. With sigma = 1/2 token the Gaussian term makes
the softmax local, so each query only needs the keys near it; this module computes the same
softmax as the dense (points x tokens) attention from local windows, with memory and compute
proportional to tracks x window instead of tracks x tokens.

The truncation bound (what "the same function" rests on). Let B bound every content logit,
|q.k| / sqrt(d) <= B. By Cauchy-Schwarz B = max ||q|| * max ||k|| / sqrt(d) (:func:`logit_bound`),
and with QK LayerNorm (gain g, bias b, head width d) ||q|| <= max|g| sqrt(d) + ||b|| whatever the
input (:func:`layernorm_logit_bound`, what Tracktention uses: it needs no pass over the data), so
B = sqrt(d) at initialisation (5.7 for d = 32, 6.9 for d = 48): logits are bounded, not small. The mass of
the attention that falls outside a window W of query j is

    eps_j = sum_{k not in W} w_jk <= sum_{k not in W} exp(l_k - l_c) <= exp(2B) sum_{k not in W} exp(b_k - b_c)

for any key c inside W (b = Gaussian term), and dropping it moves the output by at most
2 eps_j max|v|. The sigma = 1/2 bias alone is -18 at 3 tokens, but exp(2B) is ~1e5-1e6 here:
a 3-token window can leave ~3e-5 of the mass (B = sqrt(48), a point near a cell corner,
adversarial logits), not float32-exact. The radius is therefore chosen per call from B
(:func:`window_radius`, 4 tokens at initialisation) so that the bound is <= ``tol`` (1e-7).

- Sampling (:func:`points_attend_grid`): track queries, grid keys. A track's nearest token c and
  every token within ``radius`` of c (Chebyshev) are in its window. For a token at integer offset
  delta from c, ||p - x||^2 - ||p - c||^2 >= sum_axes |delta|(|delta| - 1) (also for tracks outside
  the image, whose nearest token is on the border), which bounds the excluded mass in closed form
  (:func:`excluded_mass_bound`) for every track at once.
- Splatting (:func:`grid_attends_points`): grid queries, track keys. A grid cell far from every
  track attends to the nearest tracks however far they are, so no fixed window is exact. Each
  cell takes the tracks within ``radius`` of its tile; the tracks left out are at least e_j
  tokens away, so eps_j <= n_tracks exp(2B - e_j^2 / (2 sigma^2) - b_j), b_j the largest Gaussian
  term among the tracks it took, checked per cell. Cells that fail (far from all tracks) are
  computed densely over all tracks, a bounded number of (cells x tracks) pairs at a time.

Both run as fused attention (``scaled_dot_product_attention`` with the Gaussian term as a float
mask) on batches: sampling batches the tracks whose nearest tokens lie in the same block of
token rows (stacked over frames) against those rows widened by ``radius``, every column; the
key rows of a batch are a view of k and v at a fixed stride (``unfold``), not a copy. Splatting
batches the ``TILE`` x ``TILE`` cells of a tile against the tracks near it. A batch width is at
most about twice the mean count; blocks with more tracks take extra passes, tiles with more go
dense. Tensors are token-major: (frames, length, heads, head_dim).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TILE = 8  # grid cells per splatting tile side
DEFAULT_TOL = 1e-7  # bound on the softmax mass a window may leave out
_FALLBACK_PAIRS = 1 << 18  # (cells x tracks) per dense fallback call


def logit_bound(q: Tensor, k: Tensor) -> float:
    """B with |q.k| / sqrt(d) <= B for every query/key pair: max ||q|| * max ||k|| / sqrt(d)."""
    if q.numel() == 0 or k.numel() == 0:
        return 0.0
    norms = q.detach().float().norm(dim=-1).amax() * k.detach().float().norm(dim=-1).amax()
    return float(norms) / math.sqrt(q.shape[-1])


def layernorm_logit_bound(q_norm: nn.LayerNorm, k_norm: nn.LayerNorm) -> float:
    """B for queries and keys that leave LayerNorms over the head width d (then maybe rotated by
    RoPE, which keeps norms): ||LN(x)|| <= max|gain| sqrt(d) + ||bias||, because the normalised
    vector has norm sqrt(d var / (var + eps)) < sqrt(d). Needs no pass over the data."""
    def largest(norm: nn.LayerNorm) -> Tensor:
        d = norm.normalized_shape[-1]
        gain = norm.weight.detach().abs().amax() if norm.weight is not None else torch.ones(())
        bias = norm.bias.detach().float().norm() if norm.bias is not None else torch.zeros(())
        return gain.float().cpu() * math.sqrt(d) + bias.cpu()

    d = q_norm.normalized_shape[-1]
    return float(largest(q_norm) * largest(k_norm)) / math.sqrt(d)


def _g(k: int, sigma: float) -> float:
    return math.exp(-k * (k - 1) / (2.0 * sigma * sigma))


def _series(first: int, sigma: float) -> float:
    """sum_{k >= first} g(k), to double precision (terms decay faster than geometrically)."""
    total, k = 0.0, first
    while True:
        term = _g(k, sigma)
        total += term
        if term <= total * 1e-17 or term < 1e-300:
            return total
        k += 1


def excluded_mass_bound(radius: int, bound: float, sigma: float) -> float:
    """Upper bound on the sampling softmax mass outside a track's window of Chebyshev ``radius``.

    exp(2B) * 2 axes * 2 sides * sum_{k > radius} g(k) * sum_{k in Z} g(|k|), g(k) = exp(-k(k-1)/(2 sigma^2)).
    """
    tail = _series(radius + 1, sigma)
    if tail == 0.0:
        return 0.0
    across = 1.0 + 2.0 * _series(1, sigma)
    return math.exp(min(2.0 * bound + math.log(4.0 * across * tail), 700.0))


def window_radius(bound: float, sigma: float, tol: float = DEFAULT_TOL, limit: int = 1 << 12) -> int:
    """Smallest radius whose :func:`excluded_mass_bound` is <= tol (``limit`` if none is)."""
    for radius in range(1, limit):
        if excluded_mass_bound(radius, bound, sigma) <= tol:
            return radius
    return limit


def nearest_cell(points: Tensor, grid_hw: tuple[int, int]) -> Tensor:
    """(..., 2) points in token units -> (..., 2) long (x, y) of the nearest token (clamped to the grid)."""
    h, w = grid_hw
    cell = points.detach().round().long()
    return torch.stack([cell[..., 0].clamp(0, w - 1), cell[..., 1].clamp(0, h - 1)], dim=-1)


def _pack(key: Tensor, num_keys: int, width: int, skip: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Lay items out in a (num_keys, width) table by key, in order, taking the items of rank
    skip .. skip + width - 1 within their key.

    Returns table (item index, 0 in empty slots), used (bool), the flat slot of every item (-1 if
    not taken) and the item count of every key.
    """
    counts = torch.bincount(key, minlength=num_keys)
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    rank = torch.arange(key.numel(), device=key.device) - (torch.cumsum(counts, 0) - counts)[sorted_key] - skip
    slot = torch.full_like(key, -1)
    slot[order] = torch.where((rank >= 0) & (rank < width), sorted_key * width + rank, -1)
    taken = slot >= 0
    table = torch.zeros(num_keys * width, dtype=torch.long, device=key.device)
    used = torch.zeros(num_keys * width, dtype=torch.bool, device=key.device)
    table[slot[taken]] = taken.nonzero()[:, 0]
    used[slot[taken]] = True
    return table.view(num_keys, width), used.view(num_keys, width), slot, counts


def _passes(key: Tensor, num_keys: int, width: int) -> list[tuple[Tensor | None, Tensor, Tensor, Tensor]]:
    """Tables of at most ``width`` items per key: the first over every key, then, while some key has
    items left, one over those keys only. Returns (picked keys or None for all, table, used, slot),
    slots counted from 0 within each table."""
    out, skip, max_count = [], 0, None
    while True:
        table, used, slot, counts = _pack(key, num_keys, width, skip)
        if max_count is None:
            max_count = int(counts.max()) if counts.numel() else 0
        if skip == 0:
            out.append((None, table, used, slot))
        else:
            pick = (counts > skip).nonzero()[:, 0]
            row_of = torch.full((num_keys,), -1, dtype=torch.long, device=key.device)
            row_of[pick] = torch.arange(pick.numel(), device=key.device)
            slot = torch.where(slot >= 0, row_of[slot.clamp_min(0) // width] * width + slot % width, -1)
            out.append((pick, table[pick], used[pick], slot))
        skip += width
        if skip >= max_count:
            return out


def _gather_passes(parts: list[Tensor], slots: list[Tensor]) -> Tensor:
    """Rows of the passes' outputs (each (rows * width, ...)) in item order: every item is in one pass."""
    offset, where = 0, torch.full_like(slots[0], -1)
    for part, slot in zip(parts, slots):
        where = torch.where(slot >= 0, slot + offset, where)
        offset += part.shape[0]
    return (parts[0] if len(parts) == 1 else torch.cat(parts))[where]


def _gaussian(query_pos: Tensor, key_pos: Tensor, sigma: float) -> Tensor:
    """(..., Q, 2), (..., K, 2) -> (..., Q, K) Gaussian term from coordinate differences (float32)."""
    diff = query_pos.float().unsqueeze(-2) - key_pos.float().unsqueeze(-3)
    return -(diff * diff).sum(-1) / (2.0 * sigma * sigma)


def _rows_per_block(tracks_per_frame: int, h: int, target: int = 64) -> int:
    """Rows of track cells per sampling block: about ``target`` tracks per block (1..8 rows)."""
    per_row = max(tracks_per_frame / h, 1e-9)
    return int(min(8, max(1, round(target / per_row))))


def points_attend_grid(
    q: Tensor, k: Tensor, v: Tensor, points: Tensor, grid_hw: tuple[int, int], sigma: float, radius: int,
    block_rows: int | None = None,
) -> Tensor:
    """Sampling: track queries q (N, M, H, d) attend to grid keys k, v (N, h*w, H, d).

    points (N, M, 2) in token units (token centres at integers). The frames' token rows are
    stacked (N * h rows) and cut into blocks of ``block_rows`` rows; tracks are batched by the
    block of their nearest token, and a batch attends to its block widened by ``radius`` rows on
    each side (every column, keys of other frames masked), which holds every track's window.
    Those key rows are a view of k and v at a fixed stride, not a copy. Returns (N, M, H, d).
    """
    N, M, H, d = q.shape
    h, w = grid_hw
    dev = q.device
    rows = block_rows or _rows_per_block(M, h)
    total = N * h
    blocks = -(-total // rows)
    span = min(rows + 2 * radius, total)
    # First key row of each block's window; blocks near the ends of the stack are shifted inside.
    start = (torch.arange(blocks, device=dev) * rows - radius).clamp(0, total - span)
    # Inner blocks (unshifted windows): b * rows - radius in [0, total - span].
    lo, hi = -(-radius // rows), min(blocks, (total - span + radius) // rows + 1)
    k_rows, v_rows = k.reshape(total, w, H, d).contiguous(), v.reshape(total, w, H, d).contiguous()

    def windows(x: Tensor, pick: Tensor) -> Tensor:
        """Key rows of the picked blocks (G, span * w, H, d): a view (unfold) where they are inner."""
        if pick.numel() and int(pick[0]) >= lo and int(pick[-1]) < hi and bool((pick.diff() == 1).all()):
            first = int(start[pick[0]])
            view = x[first:first + (pick.numel() - 1) * rows + span].unfold(0, span, rows)  # (G, w, H, d, span)
            return view.permute(0, 4, 1, 2, 3).flatten(1, 2)
        index = start[pick][:, None] + torch.arange(span, device=dev)
        return x[index].view(pick.numel(), span * w, H, d)

    cell = nearest_cell(points, grid_hw)
    block = ((torch.arange(N, device=dev)[:, None] * h + cell[..., 1]) // rows).reshape(-1)
    frame_of_track = torch.arange(N, device=dev).repeat_interleave(M)
    # At most about twice the mean per batch; a block with more tracks takes extra passes.
    width = max(1, min(int(torch.bincount(block, minlength=blocks).max()), 2 * math.ceil(N * M / blocks) + 8))
    q_flat, p_flat = q.reshape(N * M, H, d), points.reshape(N * M, 2).float()
    outs, slots = [], []
    for pick, table, _, slot in _passes(block, blocks, width):
        picked = torch.arange(blocks, device=dev) if pick is None else pick
        inner_mask = (picked >= lo) & (picked < hi)
        results = []
        for mask in (inner_mask, ~inner_mask):  # a strided view for inner blocks, gathered rows at the ends
            pos = mask.nonzero()[:, 0]
            if pos.numel() == 0:
                continue
            part, tab = picked[pos], table[pos]
            g = start[part][:, None] + torch.arange(span, device=dev)  # (G, span) stacked key rows
            p = p_flat[tab]  # (G, width, 2)
            # Gaussian term, separable: key rows (other frames masked) + key columns.
            same = (g // h)[:, None, :] == frame_of_track[tab][:, :, None]
            by = (-(p[..., 1:2] - (g % h)[:, None, :]) ** 2 / (2.0 * sigma * sigma)).masked_fill(~same, -math.inf)
            bx = -(p[..., 0:1] - torch.arange(w, device=dev).float()) ** 2 / (2.0 * sigma * sigma)
            bias = (by[..., :, None] + bx[..., None, :]).flatten(-2).unsqueeze(1)  # (G, 1, width, span * w)
            o = F.scaled_dot_product_attention(q_flat[tab].transpose(1, 2), windows(k_rows, part).transpose(1, 2),
                                               windows(v_rows, part).transpose(1, 2), attn_mask=bias.to(q.dtype))
            results.append((pos, o.transpose(1, 2)))
        if len(results) == 1:
            out = results[0][1]
        else:  # every row is written by one of the two parts
            out = q.new_empty(picked.numel(), width, H, d)
            for pos, o in results:
                out = out.index_copy(0, pos, o)
        outs.append(out.reshape(-1, H, d))
        slots.append(slot)
    return _gather_passes(outs, slots).view(N, M, H, d)


@functools.lru_cache(maxsize=64)
def _splat_geometry(grid_hw: tuple[int, int], tile: int, radius: int, device: torch.device) -> dict[str, Tensor]:
    """Per-grid constants of the splatting tiles (cached): cell token indices (T, tile^2) (0 past
    the grid edge), in-grid mask, the distance from each cell to the nearest track its tile's
    margin leaves out (inf if none can be), cell (x, y) per tile, and each token's place in the
    flattened (T * tile^2) tile layout. Made outside inference mode: a first call under validation's
    inference mode must not cache tensors that training's autograd then refuses."""
    with torch.inference_mode(False):
        return _make_splat_geometry(grid_hw, tile, radius, device)


def _make_splat_geometry(grid_hw: tuple[int, int], tile: int, radius: int, device: torch.device) -> dict[str, Tensor]:
    h, w = grid_hw
    tiles_y, tiles_x = -(-h // tile), -(-w // tile)
    a = torch.arange(tiles_y, device=device)[:, None, None, None]
    b = torch.arange(tiles_x, device=device)[None, :, None, None]
    y = a * tile + torch.arange(tile, device=device)[None, None, :, None]
    x = b * tile + torch.arange(tile, device=device)[None, None, None, :]
    inside = (y < h) & (x < w)
    index = torch.where(inside, y * w + x, torch.zeros_like(y))
    inf = torch.tensor(math.inf, device=device)
    # Tracks left out lie beyond the tile's cell range widened by `radius`: at least
    # (cell to tile edge) + radius + 1/2 tokens away on that side; no side past the grid border.
    top = torch.where(a * tile - radius > 0, (y - a * tile) + radius + 0.5, inf)
    bottom = torch.where(a * tile + tile - 1 + radius < h - 1, (a * tile + tile - 1 - y) + radius + 0.5, inf)
    left = torch.where(b * tile - radius > 0, (x - b * tile) + radius + 0.5, inf)
    right = torch.where(b * tile + tile - 1 + radius < w - 1, (b * tile + tile - 1 - x) + radius + 0.5, inf)
    excluded = torch.minimum(torch.minimum(top, bottom), torch.minimum(left, right)).float()
    T = tiles_y * tiles_x
    place = torch.empty(h * w, dtype=torch.long, device=device)
    place[index[inside]] = torch.arange(T * tile * tile, device=device).view(tiles_y, tiles_x, tile, tile)[inside]
    return dict(
        index=index.reshape(T, tile * tile), inside=inside.reshape(T, tile * tile),
        excluded=excluded.reshape(T, tile * tile),
        rows=y[..., 0].expand(tiles_y, tiles_x, tile).reshape(T, tile).float(),
        cols=x[..., 0, :].expand(tiles_y, tiles_x, tile).reshape(T, tile).float(),
        place=place, tiles=torch.tensor([tiles_y, tiles_x]),
    )


def grid_attends_points(
    q: Tensor, k: Tensor, v: Tensor, points: Tensor, key_valid: Tensor | None, grid_hw: tuple[int, int],
    sigma: float, radius: int, bound: float, tol: float = DEFAULT_TOL, tile: int = TILE,
) -> tuple[Tensor, int]:
    """Splatting: grid queries q (1 or N, h*w, H, d) attend to track keys k, v (N, M, H, d).

    points (N, M, 2) in token units; key_valid (N, M) bool (None = all keys valid). Frames with no
    valid key get zeros. Returns (N, h*w, H, d) and the number of cells computed densely.
    """
    N, M, H, d = k.shape
    h, w = grid_hw
    dev = k.device
    geo = _splat_geometry(tuple(grid_hw), tile, radius, dev)
    tiles_y, tiles_x = (int(t) for t in geo["tiles"])
    T, cells = tiles_y * tiles_x, tile * tile
    valid = torch.ones(N, M, dtype=torch.bool, device=dev) if key_valid is None else key_valid
    count = valid.sum(1)

    # (track, tile) pairs: tile rows a with a*tile - radius <= cell_y <= a*tile + tile - 1 + radius, same for cols.
    cell = nearest_cell(points, grid_hw)
    offsets = torch.arange(2 * radius // tile + 2, device=dev)
    a = torch.div(cell[..., 1] - radius, tile, rounding_mode="floor")[..., None] + offsets  # (N, M, span)
    b = torch.div(cell[..., 0] - radius, tile, rounding_mode="floor")[..., None] + offsets
    cy, cx = cell[..., 1:2], cell[..., 0:1]
    ok_a = (a >= 0) & (a < tiles_y) & (a * tile - radius <= cy) & (cy <= a * tile + tile - 1 + radius)
    ok_b = (b >= 0) & (b < tiles_x) & (b * tile - radius <= cx) & (cx <= b * tile + tile - 1 + radius)
    pairs = ok_a[..., :, None] & ok_b[..., None, :] & valid[..., None, None]
    n_idx, m_idx, i_idx, j_idx = pairs.nonzero(as_tuple=True)
    key = n_idx * T + a[n_idx, m_idx, i_idx] * tiles_x + b[n_idx, m_idx, j_idx]
    pair_counts = torch.bincount(key, minlength=N * T)
    mean = max(1.0, key.numel() / max(1, int((pair_counts > 0).sum())))
    # Tiles holding more tracks than this go dense (see below): memory stays bounded by tracks x window.
    width = max(1, min(int(pair_counts.max()), 2 * math.ceil(mean) + 16))
    table, used, _, _ = _pack(key, N * T, width)
    members = (n_idx * M + m_idx)[table]  # (N * T, width)
    empty = ~used.any(1)
    used = used | (empty[:, None] & (torch.arange(width, device=dev) == 0))  # a dummy key keeps rows finite

    q_tiles = q[:, geo["index"].view(-1)].view(q.shape[0], T * cells, H, d)
    q_tiles = q_tiles.expand(N, -1, -1, -1).reshape(N * T, cells, H, d)
    kv = torch.stack([k.reshape(N * M, H, d), v.reshape(N * M, H, d)], 1)[members]  # (N * T, width, 2, H, d)
    p = points.reshape(N * M, 2).float()[members]
    rows, cols = geo["rows"].repeat(N, 1), geo["cols"].repeat(N, 1)  # (N * T, tile)
    by = -(p[:, None, :, 1] - rows[:, :, None]) ** 2 / (2.0 * sigma * sigma)  # (N * T, tile, width)
    bx = -(p[:, None, :, 0] - cols[:, :, None]) ** 2 / (2.0 * sigma * sigma)
    bx = bx.masked_fill(~used[:, None, :], -math.inf)
    bias = (by[:, :, None, :] + bx[:, None, :, :]).view(N * T, 1, cells, width)
    out = F.scaled_dot_product_attention(q_tiles.transpose(1, 2), kv[:, :, 0].transpose(1, 2),
                                         kv[:, :, 1].transpose(1, 2), attn_mask=bias.to(q.dtype))
    out = out.transpose(1, 2).reshape(N, T * cells, H, d)[:, geo["place"]]  # (N, h*w, H, d)

    # Exactness per cell (module docstring): n exp(2B - e^2 / (2 sigma^2) - b_max) <= tol, b_max the
    # largest Gaussian term over the tracks the cell saw. Cells that fail, cells of tiles without
    # tracks and of tiles over `width` go dense; frames without valid tracks stay 0.
    threshold = torch.log(count.float())[:, None, None] + 2.0 * bound - math.log(tol) \
        - geo["excluded"] ** 2 / (2.0 * sigma * sigma)
    b_max = bias.view(N, T, cells, width).amax(-1)
    exact = (b_max >= threshold) & ~empty.view(N, T, 1) & (pair_counts <= width).view(N, T, 1)
    far = ~exact.view(N, T * cells)[:, geo["place"]] & (count > 0)[:, None]
    out = torch.where((count > 0)[:, None, None, None], out, torch.zeros((), dtype=out.dtype, device=dev))
    far_cells = int(far.sum())
    if far_cells:
        out = _dense_cells(out, far, q, k, v, points, valid, grid_hw, sigma)
    return out, far_cells


def _dense_cells(out: Tensor, far: Tensor, q: Tensor, k: Tensor, v: Tensor, points: Tensor, valid: Tensor,
                 grid_hw: tuple[int, int], sigma: float) -> Tensor:
    """Replace the rows of ``out`` (N, h*w, H, d) marked in ``far`` (N, h*w) by dense attention
    over all valid tracks, at most ``_FALLBACK_PAIRS`` (cells x tracks) per frame and call."""
    N, hw = far.shape
    M, H, d = k.shape[1:]
    w = grid_hw[1]
    frame, token = far.nonzero(as_tuple=True)
    width = max(1, min(_FALLBACK_PAIRS // max(M, 1), int(far.sum(1).max())))
    index, values = [], []
    for pick, table, used, _ in _passes(frame, N, width):
        if pick is None:  # frames with far cells only
            rows = used.any(1).nonzero()[:, 0]
            table, used = table[rows], used[rows]
        else:
            rows = pick
        cells = token[table]  # (R, width) token indices
        q_rows = rows if q.shape[0] == N else torch.zeros_like(rows)
        qr = q.reshape(-1, H, d)[q_rows[:, None] * hw + cells]  # (R, width, H, d)
        pos = torch.stack([cells % w, cells // w], -1).float()
        bias = _gaussian(pos, points[rows], sigma).masked_fill(~valid[rows][:, None, :], -math.inf)
        o = F.scaled_dot_product_attention(qr.transpose(1, 2), k[rows].transpose(1, 2), v[rows].transpose(1, 2),
                                           attn_mask=bias.unsqueeze(1).to(q.dtype))
        index.append((rows[:, None] * hw + cells)[used])
        values.append(o.transpose(1, 2)[used])
    flat = out.reshape(N * hw, H, d)
    return flat.index_put((torch.cat(index),), torch.cat(values).to(out.dtype)).view_as(out)
