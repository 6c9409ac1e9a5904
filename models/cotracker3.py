"""CoTracker3 point tracker (online sliding-window and offline variants).

Reimplementation of the architecture published in facebookresearch/co-tracker
(CoTracker3). Conventions (see DESIGN.md): video (B, T, 3, H, W) float in 0..255,
queries (B, N, 3) as (t, x, y) in pixels of the given tensor, tracks (B, T, N, 2) in
the same pixels. H and W must be multiples of ``stride``; the predictor in
``models/cotracker3_predictor.py`` resizes arbitrary videos to ``model_resolution``.

Three entry points share one refinement core:
- ``forward``: inference; online = sliding windows (16 frames, step 8) computed through a
  :class:`CoTrackerThreeStream`, offline = one window over the clip.
- ``stream``: online tracking with frames pushed chunk by chunk; memory holds one window.
- ``forward_train``: the unrolled training forward, per-window per-iteration predictions;
  with ``activation_checkpointing`` its peak memory does not grow with the clip length.

Query frames may be anywhere in the clip (truncated to integers, as the reference does).
The online model only tracks forwards: before a track's query frame its predictions come
from windows that had not yet seen the query (zeroed support features, the query point as
initial position, zero initial logits) and carry no meaning; training masks them out and
the predictor's ``backward_tracking`` replaces them. The offline model is trained on all
frames and tracks in both directions.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.checkpoint_io import CheckpointMismatchError, load_strict
from models.cotracker3_layers import FeatureEncoder, Mlp, UpdateTransformer
from models.track_ops import bilinear_sample, fourier_encode, patch_offsets, sample_at_frames, sincos_embedding_1d

VARIANTS = ("online", "offline")


@dataclass
class CoTrackerThreeConfig:
    """Hyper-parameters; the defaults are the published CoTracker3 ones."""

    variant: str = "online"
    window_len: int | None = None  # None: 16 online, 60 offline (the checkpoints' time_emb length)
    stride: int = 4
    latent_dim: int = 128
    corr_levels: int = 4
    corr_radius: int = 3
    corr_hidden_dim: int = 384
    corr_out_dim: int = 256
    hidden_size: int = 384
    num_heads: int = 8
    time_depth: int = 3
    space_depth: int = 3
    mlp_ratio: float = 4.0
    num_virtual_tracks: int = 64
    posenc_freqs: int = 10
    model_resolution: tuple[int, int] = (384, 512)  # (H, W); also scales the displacement encoding
    fmaps_chunk_size: int = 200  # frames per CNN call at inference
    activation_checkpointing: bool = True  # forward_train: recompute instead of storing activations
    detach_logits_between_windows: bool = False  # forward_train: cut the vis/conf gradient between windows

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        self.model_resolution = tuple(int(v) for v in self.model_resolution)
        if len(self.model_resolution) != 2:
            raise ValueError(f"model_resolution must be (H, W), got {self.model_resolution}")
        if self.resolved_window_len < 2:
            raise ValueError(f"window_len must be >= 2, got {self.window_len}")
        if self.latent_dim % 4:
            raise ValueError(f"latent_dim must be a multiple of 4, got {self.latent_dim}")

    @property
    def resolved_window_len(self) -> int:
        if self.window_len is not None:
            return self.window_len
        return 16 if self.variant == "online" else 60

    @property
    def input_dim(self) -> int:
        """Width of a track token: vis, conf, correlation features, encoded displacements."""
        return 2 + self.corr_levels * self.corr_out_dim + 4 * (1 + 2 * self.posenc_freqs)


@dataclass
class TrackerOutput:
    """Per-frame predictions. Logits are kept; probabilities are derived."""

    tracks: Tensor  # (B, T, N, 2) pixels of the model input
    vis_logits: Tensor  # (B, T, N)
    conf_logits: Tensor  # (B, T, N)

    @property
    def vis(self) -> Tensor:
        return torch.sigmoid(self.vis_logits)

    @property
    def conf(self) -> Tensor:
        return torch.sigmoid(self.conf_logits)


@dataclass
class WindowPrediction:
    """One window of the unrolled forward; lists hold one entry per refinement iteration.

    Frames ``start .. start + num_frames - 1`` of the clip; the online model's padded tail
    frames are already removed. Coordinates are pixels of the model input.
    """

    start: int
    coords: list[Tensor]  # (B, S, N, 2)
    vis_logits: list[Tensor]  # (B, S, N)
    conf_logits: list[Tensor]  # (B, S, N)

    @property
    def num_frames(self) -> int:
        return self.coords[-1].shape[1]


def _float_dtype(video: Tensor) -> torch.dtype:
    """Working dtype: the video's if floating point (uint8 frames are normalised to float)."""
    return video.dtype if video.is_floating_point() else torch.get_default_dtype()


def _bnt(x: Tensor) -> Tensor:
    """Swap the frame and track axes: (B, S, N, ...) <-> (B, N, S, ...)."""
    return x.transpose(1, 2)


def window_starts(num_frames: int, window_len: int) -> list[int]:
    """Start frames of the online windows covering ``num_frames`` frames (step window_len // 2).

    At least one window even for clips shorter than a step (the published code
    returns no window, hence all-zero tracks, when T <= step).
    """
    step = window_len // 2
    count = max(1, -(-(num_frames - window_len) // step) + 1)
    return [i * step for i in range(count)]


class CoTrackerThree(nn.Module):
    """CoTracker3 with ``variant`` "online" (sliding windows) or "offline" (one window)."""

    def __init__(self, config: CoTrackerThreeConfig | None = None, **overrides: object) -> None:
        super().__init__()
        config = dataclasses.replace(config or CoTrackerThreeConfig(), **overrides)
        self.config = config
        c = config
        # time_emb is saved in the official checkpoints; as the module's own buffer it leads the state_dict
        self.register_buffer("time_emb", sincos_embedding_1d(c.input_dim, c.resolved_window_len))
        self.fnet = FeatureEncoder(c.latent_dim, c.stride)
        self.updateformer = UpdateTransformer(
            c.input_dim, c.hidden_size, c.num_heads, c.time_depth, c.space_depth, c.num_virtual_tracks, c.mlp_ratio)
        patch = (2 * c.corr_radius + 1) ** 2
        self.corr_mlp = Mlp(patch * patch, c.corr_hidden_dim, c.corr_out_dim)
        self.register_buffer("offsets", patch_offsets(c.corr_radius), persistent=False)

    # ------------------------------------------------------------------ construction / loading
    @classmethod
    def from_config(cls, cfg: Mapping[str, object]) -> CoTrackerThree:
        """Build from a plain mapping (e.g. an OmegaConf node converted to a dict).

        Unknown keys raise a ValueError that names the closest valid key.
        """
        names = [f.name for f in dataclasses.fields(CoTrackerThreeConfig)]
        for key in cfg:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown CoTracker3 config key {key!r}{hint}")
        return cls(CoTrackerThreeConfig(**dict(cfg)))

    def load_official(self, source: str | os.PathLike | Mapping[str, Tensor]) -> None:
        """Strictly load an official CoTracker3 ``.pth`` (or a state_dict / training checkpoint).

        The stored ``time_emb`` fixes the window length: online files need window_len 16,
        offline files 60 (resized to the clip length at run time, as the reference does).
        A tracklight ``.ckpt`` of a CoTracker3 family (keys ``model.*``) loads the same way.
        Anything else (a CoTracker2 file, another model) raises CheckpointMismatchError
        naming every missing, unexpected or mis-shaped key.
        """
        def strip_ddp(sd: dict[str, Tensor], _: nn.Module) -> dict[str, Tensor]:
            for prefix in ("module.", "model."):  # DDP-wrapped reference files; our Lightning checkpoints
                if sd and all(k.startswith(prefix) for k in sd):
                    return {k[len(prefix):]: v for k, v in sd.items()}
            return sd

        try:
            load_strict(self, source, adapt=strip_ddp, what="CoTracker3 checkpoint")
        except CheckpointMismatchError as err:
            hint = ("\n  hint: the checkpoint's time_emb length is its window length "
                    "(16 = online, 60 = offline); build the model with that window_len")
            raise CheckpointMismatchError(str(err) + (hint if "time_emb" in str(err) else "")) from None

    @property
    def window_len(self) -> int:
        return self.config.resolved_window_len

    @property
    def step(self) -> int:
        return self.window_len // 2

    def inference_bytes_per_point(self) -> int:
        """A lower bound of the activation memory one tracked point takes during a window at inference,
        in float32: per frame, one level's 4D correlation and its MLP (levels run one after the other),
        every level's correlation features, the track token and a few transformer widths."""
        c = self.config
        patch = (2 * c.corr_radius + 1) ** 2
        per_frame = patch * patch + c.corr_hidden_dim + c.corr_levels * c.corr_out_dim + c.input_dim + 4 * c.hidden_size
        return 4 * per_frame * self.window_len

    # ------------------------------------------------------------------ shared core
    def _check_inputs(self, video: Tensor, queries: Tensor) -> None:
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be (B, T, 3, H, W), got {tuple(video.shape)}")
        B, T, _, H, W = video.shape
        s = self.config.stride
        if H % s or W % s:
            raise ValueError(f"video height and width must be multiples of stride {s}, got {H}x{W}")
        self._check_queries(queries, B, T)

    @staticmethod
    def _check_queries(queries: Tensor, batch: int, num_frames: int | None) -> None:
        if queries.dim() != 3 or queries.shape[0] != batch or queries.shape[2] != 3:
            raise ValueError(f"queries must be (B={batch}, N, 3) as (t, x, y), got {tuple(queries.shape)}")
        if not torch.isfinite(queries).all():
            raise ValueError("queries contain NaN or inf")
        t = queries[..., 0]
        if (t < 0).any() or (num_frames is not None and (t >= num_frames).any()):
            raise ValueError(f"query frames must lie in [0, {num_frames}), got range "
                             f"[{t.min().item()}, {t.max().item()}]")

    def _split_queries(self, queries: Tensor) -> tuple[Tensor, Tensor]:
        """Frame index (truncated like the reference) and xy in feature-map units."""
        return queries[..., 0].long(), queries[..., 1:3] / self.config.stride

    def _encode(self, frames: Tensor) -> list[Tensor]:
        """Frames (B, T, 3, H, W) in [-1, 1] -> feature pyramid, level l: (B, T, C, H/s/2^l, W/s/2^l)."""
        B, T = frames.shape[:2]
        flat = frames.reshape(B * T, *frames.shape[2:])
        chunk = max(1, self.config.fmaps_chunk_size) * B
        if flat.shape[0] > chunk:
            fmap = torch.cat([self.fnet(part) for part in flat.split(chunk)])
        else:
            fmap = self.fnet(flat)
        fmap = fmap / torch.sqrt(torch.clamp(fmap.square().sum(1, keepdim=True), min=1e-12))
        pyramid = [fmap]
        for _ in range(self.config.corr_levels - 1):
            fmap = F.avg_pool2d(fmap, 2, stride=2)
            pyramid.append(fmap)
        return [level.view(B, T, *level.shape[1:]) for level in pyramid]

    def _support(self, pyramid: list[Tensor], frames: Tensor, xy: Tensor) -> list[Tensor]:
        """Query support patches per level, (B, N, P, C), sampled at local frame ``frames`` (B, N)."""
        out = []
        for level, fmap in enumerate(pyramid):
            points = (xy / 2**level).unsqueeze(2) + self.offsets.to(xy.dtype)
            out.append(sample_at_frames(fmap, frames.clamp(0, fmap.shape[1] - 1), points))
        return out

    def _time_embedding(self, length: int, dtype: torch.dtype) -> Tensor:
        if length == self.time_emb.shape[1]:
            return self.time_emb
        # the offline checkpoint stores 60 slots; other lengths are linearly resampled
        emb = F.interpolate(self.time_emb.float().transpose(1, 2), size=length, mode="linear")
        return emb.transpose(1, 2).to(dtype)

    def _correlation(self, fmap: Tensor, centers: Tensor, support: Tensor) -> Tensor:
        """4D correlation of the patch around every estimate with the query's support patch.

        fmap (B, S, C, h, w); centers (B, N, S, 2) at this level; support (B, N, P, C)
        -> (B, N, S, P * P), flattened (estimate offset, support offset).
        """
        B, S, C, h, w = fmap.shape
        N, P = centers.shape[1], self.offsets.shape[0]
        points = _bnt(centers).unsqueeze(3) + self.offsets.to(centers.dtype)  # (B, S, N, P, 2)
        patches = bilinear_sample(fmap.reshape(B * S, C, h, w), points.reshape(B * S, N, P, 2))
        patches = patches.view(B, S, C, N, P).permute(0, 3, 1, 4, 2).reshape(B, N, S * P, C)
        return torch.matmul(patches, support.transpose(2, 3)).view(B, N, S, P * P)

    def _update(self, pyramid: list[Tensor], support: list[Tensor], coords: Tensor, vis: Tensor, conf: Tensor,
                time_emb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One refinement step: (B, N, S) state -> deltas of xy (stride units), vis and conf logits."""
        corr = [self.corr_mlp(self._correlation(fmap, coords / 2**lvl, sup))
                for lvl, (fmap, sup) in enumerate(zip(pyramid, support))]
        forward_disp = F.pad(coords[:, :, :-1] - coords[:, :, 1:], (0, 0, 0, 1))
        backward_disp = F.pad(coords[:, :, 1:] - coords[:, :, :-1], (0, 0, 1, 0))
        res_h, res_w = self.config.model_resolution
        scale = coords.new_tensor([res_w, res_h]) / self.config.stride
        motion = fourier_encode(torch.cat([forward_disp / scale, backward_disp / scale], dim=-1),
                                self.config.posenc_freqs)
        tokens = torch.cat([vis.unsqueeze(-1), conf.unsqueeze(-1), *corr, motion], dim=-1) + time_emb.unsqueeze(1)
        delta_xy, delta_vc = self.updateformer(tokens)
        return delta_xy, delta_vc[..., 0], delta_vc[..., 1]

    def _refine(self, pyramid: list[Tensor], support: list[Tensor], coords: Tensor, vis: Tensor, conf: Tensor,
                iters: int, checkpoint_steps: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Iterate updates over one window.

        coords (B, N, S, 2) in stride units, vis/conf logits (B, N, S). Returns per-iteration
        stacks: coords (I, B, N, S, 2) in pixels, vis and conf logits (I, B, N, S). Coordinates
        are detached before each step; logits keep their gradient.
        """
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        levels = len(pyramid)
        time_emb = self._time_embedding(pyramid[0].shape[1], coords.dtype)

        def step(*args: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return self._update(list(args[:levels]), list(args[levels:2 * levels]), *args[2 * levels:], time_emb)

        all_coords, all_vis, all_conf = [], [], []
        for _ in range(iters):
            coords = coords.detach()
            args = (*pyramid, *support, coords, vis, conf)
            if checkpoint_steps:
                d_xy, d_vis, d_conf = checkpoint(step, *args, use_reentrant=False)
            else:
                d_xy, d_vis, d_conf = step(*args)
            coords, vis, conf = coords + d_xy, vis + d_vis, conf + d_conf
            all_coords.append(coords * float(self.config.stride))
            all_vis.append(vis)
            all_conf.append(conf)
        return torch.stack(all_coords), torch.stack(all_vis), torch.stack(all_conf)

    def _window_init(self, start: int, q_frames: Tensor, q_xy: Tensor, prev: tuple[Tensor, Tensor, Tensor] | None
                     ) -> tuple[Tensor, Tensor, Tensor]:
        """Initial (coords, vis, conf) of the window at ``start`` in (B, N, S) layout.

        Tracks queried before the overlap copy the previous window's last ``overlap``
        frames and repeat the final one; later tracks start at their query point with
        zero logits.
        """
        B, N = q_frames.shape
        S = self.window_len
        coords = q_xy.unsqueeze(2).expand(B, N, S, 2)
        vis = q_xy.new_zeros(B, N, S)
        conf = q_xy.new_zeros(B, N, S)
        if prev is None:
            return coords, vis, conf
        overlap = S - self.step

        def carry(x: Tensor) -> Tensor:
            kept = x[:, :, self.step:]
            return torch.cat([kept, kept[:, :, -1:].expand(*kept.shape[:2], S - overlap, *kept.shape[3:])], dim=2)

        copy = (q_frames < start + overlap).view(B, N, 1)
        prev_coords, prev_vis, prev_conf = prev
        return (torch.where(copy.unsqueeze(-1), carry(prev_coords / self.config.stride), coords),
                torch.where(copy, carry(prev_vis), vis),
                torch.where(copy, carry(prev_conf), conf))

    @staticmethod
    def _mask_support(support: list[Tensor], q_frames: Tensor, end: int) -> list[Tensor]:
        """Zero the support of tracks whose query frame is at or after ``end`` (not yet seen)."""
        seen = (q_frames < end).to(support[0].dtype)[:, :, None, None]
        return [s * seen for s in support]

    # ------------------------------------------------------------------ inference
    def forward(self, video: Tensor, queries: Tensor, iters: int = 4) -> TrackerOutput:
        """Track ``queries`` through ``video``; see the module docstring for conventions."""
        self._check_inputs(video, queries)
        queries = queries.to(_float_dtype(video))
        if self.config.variant == "online":
            return self._forward_online(video, queries, iters)
        c, v, f = self._run_offline(video, queries, iters, checkpointed=False)
        return TrackerOutput(_bnt(c[-1]), _bnt(v[-1]), _bnt(f[-1]))

    def _forward_online(self, video: Tensor, queries: Tensor, iters: int) -> TrackerOutput:
        B, T = video.shape[:2]
        N = queries.shape[1]
        tracks = video.new_zeros(B, T, N, 2, dtype=queries.dtype)
        vis = video.new_zeros(B, T, N, dtype=queries.dtype)
        conf = torch.zeros_like(vis)
        stream = self.stream(queries, iters=iters)
        # feed window-sized chunks so at most two windows of feature maps are alive
        windows = [w for t in range(0, T, self.window_len) for w in stream.push(video[:, t:t + self.window_len])]
        for w in windows + stream.finish():
            end = w.start + w.num_frames
            tracks[:, w.start:end] = w.coords[-1]
            vis[:, w.start:end] = w.vis_logits[-1]
            conf[:, w.start:end] = w.conf_logits[-1]
        return TrackerOutput(tracks, vis, conf)

    def _run_offline(self, video: Tensor, queries: Tensor, iters: int, checkpointed: bool
                     ) -> tuple[Tensor, Tensor, Tensor]:
        """One window over the whole clip; the time embedding is resampled to its length."""
        q_frames, q_xy = self._split_queries(queries)
        frames = 2 * (video / 255.0) - 1.0
        pyramid = self._encode_checkpointed(frames) if checkpointed else self._encode(frames)
        support = self._support(pyramid, q_frames, q_xy)
        B, N = q_frames.shape
        T = video.shape[1]
        zeros = q_xy.new_zeros(B, N, T)
        return self._refine(pyramid, support, q_xy.unsqueeze(2).expand(B, N, T, 2), zeros, zeros, iters,
                            checkpoint_steps=checkpointed)

    def stream(self, queries: Tensor, iters: int = 4) -> CoTrackerThreeStream:
        """Start online tracking of ``queries`` over frames pushed later (online variant only)."""
        if self.config.variant != "online":
            raise ValueError("streaming needs the online variant")
        return CoTrackerThreeStream(self, queries, iters)

    # ------------------------------------------------------------------ training
    def forward_train(self, video: Tensor, queries: Tensor, iters: int = 4) -> list[WindowPrediction]:
        """Unrolled training forward: every window of the clip, every refinement iteration.

        Online: windows at 0, step, 2*step, ... (video padded by repeating its last frame),
        each initialised from the previous window; vis/conf logits carry gradient from
        one window into the next unless ``detach_logits_between_windows``. Offline: one
        window over the whole clip. With ``activation_checkpointing`` each window (online)
        or each iteration and CNN chunk (offline) is recomputed during backward, and no
        full-clip feature map is kept, so peak memory does not grow with the number of
        windows; gradients equal those of the plain path up to float rounding.
        """
        self._check_inputs(video, queries)
        queries = queries.to(_float_dtype(video))
        if self.config.variant == "offline":
            c, v, f = self._run_offline(video, queries, iters, checkpointed=self.config.activation_checkpointing)
            return [WindowPrediction(0, [_bnt(x) for x in c], [_bnt(x) for x in v], [_bnt(x) for x in f])]
        if self.config.activation_checkpointing:
            return self._train_online_checkpointed(video, queries, iters)
        return self._train_online_plain(video, queries, iters)

    def _encode_checkpointed(self, video: Tensor) -> list[Tensor]:
        """CNN in frame chunks whose activations are recomputed in backward (outputs are kept)."""
        chunk = self.window_len
        parts = [checkpoint(self._encode, video[:, t:t + chunk], use_reentrant=False)
                 for t in range(0, video.shape[1], chunk)]
        return [torch.cat(level, dim=1) for level in zip(*parts)]

    def _carry(self, c: Tensor, v: Tensor, f: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.config.detach_logits_between_windows:
            return c[-1], v[-1].detach(), f[-1].detach()
        return c[-1], v[-1], f[-1]

    def _to_window(self, start: int, num_frames: int, c: Tensor, v: Tensor, f: Tensor) -> WindowPrediction:
        return WindowPrediction(start, [_bnt(x[:, :, :num_frames]) for x in c],
                                [_bnt(x[:, :, :num_frames]) for x in v], [_bnt(x[:, :, :num_frames]) for x in f])

    def _train_online_plain(self, video: Tensor, queries: Tensor, iters: int) -> list[WindowPrediction]:
        """Reference-style unroll: one CNN pass over the clip, all activations kept."""
        T, S = video.shape[1], self.window_len
        q_frames, q_xy = self._split_queries(queries)
        pyramid = self._encode(2 * (video / 255.0) - 1.0)
        support = self._support(pyramid, q_frames, q_xy)
        out, prev = [], None
        for start in window_starts(T, S):
            frames = torch.arange(start, start + S, device=video.device).clamp(max=T - 1)
            window = [fmap[:, frames] for fmap in pyramid]
            init = self._window_init(start, q_frames, q_xy, prev)
            c, v, f = self._refine(window, self._mask_support(support, q_frames, start + S), *init, iters)
            prev = self._carry(c, v, f)
            out.append(self._to_window(start, min(S, T - start), c, v, f))
        return out

    def _train_online_checkpointed(self, video: Tensor, queries: Tensor, iters: int) -> list[WindowPrediction]:
        """Same math as the plain unroll with bounded memory.

        Each window encodes its own frames inside its checkpoint. A query's support patch
        is first needed by the first window that contains its frame, so that window samples
        it and returns it as a compact (queries, P, C) output; later windows rebuild the
        support tensor from those pieces inside their own checkpoints. Between windows only
        the pieces, the carried predictions and the per-iteration outputs stay alive.
        """
        T, S = video.shape[1], self.window_len
        q_frames, q_xy = self._split_queries(queries)
        B, N = q_frames.shape
        flat_frames = q_frames.reshape(-1)
        levels = self.config.corr_levels

        def run_window(start: int, new: Tensor, old: list[Tensor], clip: Tensor, *args: Tensor
                       ) -> tuple[Tensor, ...]:
            pyramid = self._encode(2 * (clip / 255.0) - 1.0)
            if clip.shape[1] < S:  # padding frames repeat the last frame, so repeat its features
                index = torch.arange(S, device=clip.device).clamp(max=clip.shape[1] - 1)
                pyramid = [fmap[:, index] for fmap in pyramid]
            init, pieces = args[:3], args[3:]
            fresh = [s.reshape(B * N, *s.shape[2:])[new] for s in self._support(pyramid, q_frames - start, q_xy)]
            support = []
            for level in range(levels):
                rows = fresh[level].new_zeros(B * N, *fresh[level].shape[1:])
                for index, piece in zip([*old, new], [*pieces[level::levels], fresh[level]]):
                    rows = rows.index_copy(0, index, piece)
                support.append(rows.view(B, N, *rows.shape[1:]))
            return (*self._refine(pyramid, support, *init, iters), *fresh)

        out, prev, seen = [], None, 0
        indices: list[Tensor] = []
        pieces: list[Tensor] = []  # per window, per level: support rows of the queries it saw first
        for start in window_starts(T, S):
            end = min(start + S, T)
            new = ((flat_frames >= seen) & (flat_frames < end)).nonzero().squeeze(1)
            init = self._window_init(start, q_frames, q_xy, prev)
            c, v, f, *fresh = checkpoint(run_window, start, new, list(indices), video[:, start:start + S], *init,
                                         *pieces, use_reentrant=False)
            indices.append(new)
            pieces.extend(fresh)
            seen = end
            prev = self._carry(c, v, f)
            out.append(self._to_window(start, end - start, c, v, f))
        return out


class CoTrackerThreeStream:
    """Online tracking over frames that arrive in chunks (any size, typically 8).

    ``push`` encodes new frames once and runs every window that is complete; ``finish``
    runs the last, padded window. Each returns the windows it ran as WindowPrediction
    (one entry per iteration); later windows overwrite the overlapping frames of earlier
    ones, so writing them in order reproduces ``CoTrackerThree.forward`` exactly. State
    is one window of feature maps, the query support patches and the previous window's
    predictions: memory does not grow with the video length.
    """

    def __init__(self, model: CoTrackerThree, queries: Tensor, iters: int = 4) -> None:
        model._check_queries(queries, queries.shape[0], None)
        self.model = model
        self.iters = iters
        self.q_frames, self.q_xy = model._split_queries(queries)
        self.start = 0  # first frame of the next window
        self.frames_seen = 0
        self.frame_size: torch.Size | None = None
        self.covered = 0  # end frame of the last window run
        self.cache: list[Tensor] | None = None  # pyramid of frames start .. frames_seen - 1
        self.support: list[Tensor] | None = None
        self.prev: tuple[Tensor, Tensor, Tensor] | None = None
        self.finished = False

    def push(self, frames: Tensor) -> list[WindowPrediction]:
        """Add frames (B, t, 3, H, W) in 0..255; returns the windows completed by them."""
        if self.finished:
            raise RuntimeError("stream already finished")
        if frames.dim() != 5 or frames.shape[0] != self.q_frames.shape[0] or frames.shape[2] != 3:
            raise ValueError(f"frames must be (B={self.q_frames.shape[0]}, t, 3, H, W), got {tuple(frames.shape)}")
        if frames.shape[1] == 0:
            return []
        s = self.model.config.stride
        if frames.shape[-2] % s or frames.shape[-1] % s:
            raise ValueError(f"frame height and width must be multiples of stride {s}")
        if self.frame_size not in (None, frames.shape[-2:]):
            raise ValueError(f"frames changed size from {tuple(self.frame_size)} to {tuple(frames.shape[-2:])}")
        self.frame_size = frames.shape[-2:]
        self.q_xy = self.q_xy.to(_float_dtype(frames))
        pyramid = self.model._encode(2 * (frames / 255.0) - 1.0)
        new = self.model._support(pyramid, self.q_frames - self.frames_seen, self.q_xy)
        inside = ((self.q_frames >= self.frames_seen) & (self.q_frames < self.frames_seen + frames.shape[1]))
        new = [p * inside.to(p.dtype)[:, :, None, None] for p in new]
        self.support = new if self.support is None else [a + b for a, b in zip(self.support, new)]
        self.cache = pyramid if self.cache is None else [torch.cat(x, dim=1) for x in zip(self.cache, pyramid)]
        self.frames_seen += frames.shape[1]
        out = []
        while self.cache[0].shape[1] >= self.model.window_len:
            out.append(self._run(self.model.window_len))
        return out

    def finish(self) -> list[WindowPrediction]:
        """Run the final window, padded by repeating the last frame, if frames remain uncovered."""
        if self.finished:
            raise RuntimeError("stream already finished")
        self.finished = True
        if self.frames_seen == 0:
            raise ValueError("no frames were pushed")
        if self.q_frames.max() >= self.frames_seen:
            raise ValueError(f"query frames must be < {self.frames_seen}, the number of frames pushed")
        if self.covered >= self.frames_seen:
            return []
        S, have = self.model.window_len, self.cache[0].shape[1]
        self.cache = [torch.cat([x, x[:, -1:].expand(-1, S - have, *x.shape[2:])], dim=1) for x in self.cache]
        return [self._run(have)]

    def _run(self, valid: int) -> WindowPrediction:
        m, S = self.model, self.model.window_len
        window = [x[:, :S] for x in self.cache]
        init = m._window_init(self.start, self.q_frames, self.q_xy, self.prev)
        c, v, f = m._refine(window, m._mask_support(self.support, self.q_frames, self.start + S), *init, self.iters)
        self.prev = (c[-1], v[-1], f[-1])
        out = m._to_window(self.start, valid, c, v, f)
        self.cache = [x[:, m.step:] for x in self.cache]
        self.covered = self.start + S
        self.start += m.step
        return out
