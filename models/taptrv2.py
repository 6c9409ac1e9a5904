"""TAPTRv2 point tracker: DETR-style point queries with attention-based position update.

Reimplementation of TAPTRv2 (Li et al., NeurIPS 2024; IDEA-Research/TAPTR branch ``v2``,
commit a57063403581). Conventions (DESIGN.md): video (B, T, 3, H, W) float 0..255 RGB,
queries (B, N, 3) as (t, x, y) in pixels of ``video``; tracks in the same pixels.

Pipeline: the video is resized to ``model_resolution`` (bilinear, corners aligned, so a
point keeps its normalised position x / (W - 1)), ImageNet-normalised, and encoded frame by
frame: ResNet-50 stages (strides 4/8/16/32) -> 1x1 conv + GroupNorm to d_model -> deformable
encoder. A point query's content is the start frame's features sampled at the point on
every level, concatenated and projected; its position is the inverse sigmoid of the
normalised (x, y) with a fixed (w, h) = 0.5. Every frame starts from the query frame's
state. Sliding windows (8 frames, stride 4, the last one shifted back to end on the last
frame) run the decoder; after each window the positions and visibility logits of the
frames it updated are written to the track state, the last frame's state is copied to all
later frames, and the content features are updated by the between-window MLP.

State dict: identical keys and shapes to the official checkpoint, including the duplicated
``transformer.decoder.{bbox,class}_embed`` entries (the heads are shared modules there too).

Differences from the reference code, all invisible on square inputs and batch size 1
(the only setting the reference was trained and evaluated in):
- Non-square inputs: the reference scales a query's normalised x by (H - 1) when sampling
  its initial feature, and divides the APU's x offsets by the level height. We use the
  width for x (and the height for y) in both places.
- Batch > 1: the reference's per-layer update mask broadcast assumes batch size 1; we
  apply each sample's own mask.
- Queries: the reference takes integer query frames; ``t`` is rounded here. A query is
  assumed visible at its frame (initial visibility one-hot class 1), as in the reference's
  data pipelines.
- Clips shorter than ``window_len`` frames are rejected (the reference indexes before
  frame 0 for them).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.checkpoint_io import CheckpointMismatchError, load_checkpoint_file, load_strict, read_state_dict
from models.deformable_attention import SpatialShapes
from models.resnet import ResNet
from models.taptrv2_layers import (
    MLP,
    SINE_FEATS,
    DecoderLayer,
    Encoder,
    inverse_sigmoid,
    relu_mlp,
    sine_embed_position,
    sine_position_map,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_VIS_CLASSES = 3  # labels are occluded + 1: class 1 = visible, class 2 = occluded, class 0 unused
VISIBLE_CLASS = 1


@dataclass
class TaptrV2Config:
    """Hyper-parameters; the defaults are the published TAPTRv2 ones (config/TAPTRv2.py)."""

    d_model: int = 256
    nheads: int = 8
    num_levels: int = 4  # the last `num_levels` ResNet stages are used
    enc_points: int = 4
    dec_points: int = 4
    enc_layers: int = 2
    dec_layers: int = 5
    dim_feedforward: int = 2048
    backbone_depths: tuple[int, ...] = (3, 4, 6, 3)  # ResNet-50
    backbone_width: int = 64
    window_len: int = 8
    window_stride: int = 4
    model_resolution: tuple[int, int] = (512, 512)  # (H, W) the network runs at
    pe_temperature: float = 10.0  # feature-map and query sine encodings
    window_update_dropout: float = 0.6  # on the between-window content update (training only)
    frames_per_chunk: int = 24  # backbone + encoder batch at a time (memory only)
    long_video_len: int = 24  # reference rule: longer clips at eval forward-pad content every T // 24 windows
    norm_groups: int = 32  # GroupNorm groups of the input projections

    def __post_init__(self) -> None:
        self.backbone_depths = tuple(int(d) for d in self.backbone_depths)
        self.model_resolution = tuple(int(v) for v in self.model_resolution)
        if len(self.model_resolution) != 2 or min(self.model_resolution) < 32:
            raise ValueError(f"model_resolution must be (H, W) with both >= 32, got {self.model_resolution}")
        if not 1 <= self.num_levels <= 4:
            raise ValueError(f"num_levels must be 1..4 (ResNet stages), got {self.num_levels}")
        if self.d_model % self.nheads or self.d_model % self.norm_groups or self.d_model % 2:
            raise ValueError(
                f"d_model {self.d_model} must be even and divisible by nheads {self.nheads} "
                f"and norm_groups {self.norm_groups}"
            )
        if self.window_len < 2 or not 1 <= self.window_stride <= self.window_len:
            raise ValueError(
                "need window_len >= 2 and 1 <= window_stride <= window_len, "
                f"got {self.window_len}, {self.window_stride}"
            )
        if self.dec_layers < 1 or self.enc_layers < 0:
            raise ValueError(f"need dec_layers >= 1 and enc_layers >= 0, got {self.dec_layers}, {self.enc_layers}")


@dataclass
class TaptrV2Output:
    tracks: Tensor  # (B, T, N, 2) pixels of the input video, last layer
    visible: Tensor  # (B, T, N) bool: sigmoid(vis_logits[..., 1]) > 0.5
    vis_logits: Tensor  # (B, T, N, 3) last layer; class 1 = visible, 2 = occluded
    layer_tracks: Tensor  # (L, B, T, N, 2) every decoder layer's final positions (after bbox_embed)
    layer_apu_tracks: Tensor  # (L, B, T, N, 2) positions right after the APU (before bbox_embed)
    layer_vis_logits: Tensor  # (L, B, T, N, 3)


class ResNetBackbone(nn.Module):
    """Holds the ResNet as ``body`` (official key prefix ``backbone.0.body``)."""

    def __init__(self, depths: tuple[int, ...], width: int) -> None:
        super().__init__()
        self.body = ResNet(depths, width)

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.body(x)


class Decoder(nn.Module):
    """Decoder layers plus the query-position head, inter-layer content updater and APU-aware fuser."""

    def __init__(self, cfg: TaptrV2Config, bbox_embed: nn.ModuleList, class_embed: nn.ModuleList) -> None:
        super().__init__()
        c = cfg.d_model
        self.layers = nn.ModuleList(
            DecoderLayer(c, cfg.dim_feedforward, cfg.num_levels, cfg.nheads, cfg.dec_points, cfg.pe_temperature)
            for _ in range(cfg.dec_layers)
        )
        self.pe_temperature = cfg.pe_temperature
        self.ref_point_head = MLP(4 * SINE_FEATS, c, c, 2)
        self.ca_update_fuser = relu_mlp(c + 2 * SINE_FEATS, c, c, c)
        self.bbox_embed = bbox_embed  # shared with TaptrV2 (both key prefixes exist in the checkpoint)
        self.class_embed = class_embed
        self.query_updater = relu_mlp(2 * c, c, c)

    def forward(
        self,
        content: Tensor,
        reference: Tensor,
        update_mask: Tensor,
        memory: Tensor,
        spatial_shapes: SpatialShapes,
        temporal_mask: Tensor,
        tracked: Tensor,
        window: int,
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """content (B*W, N, C); reference (B*W, N, 4) boxes in [0, 1]; update_mask (B*W, N, 1).

        Per layer: fused output (feeds the heads), bbox_embed output (masked), APU position (in [0, 1]).
        """
        output, initial = content, content
        fused_list, deltas, apu_positions = [], [], []
        for layer_id, layer in enumerate(self.layers):
            query_pos = self.ref_point_head(sine_embed_position(reference, self.pe_temperature))
            if layer_id > 0:
                output = output + self.query_updater(torch.cat([output, initial], dim=-1))
            output, reference, delta_xy = layer(
                output, query_pos, reference, update_mask, memory, spatial_shapes, temporal_mask, tracked, window
            )
            fused = self.ca_update_fuser(torch.cat([output, sine_embed_position(delta_xy, self.pe_temperature)], -1))
            delta = self.bbox_embed[layer_id](fused) * update_mask
            fused_list.append(fused)
            deltas.append(delta)
            apu_positions.append(inverse_sigmoid(reference).sigmoid())
            # the next layer starts from the refined box; no gradient through the reference points
            reference = (delta + inverse_sigmoid(reference)).sigmoid().detach()
        return fused_list, deltas, apu_positions


class Transformer(nn.Module):
    def __init__(self, cfg: TaptrV2Config, bbox_embed: nn.ModuleList, class_embed: nn.ModuleList) -> None:
        super().__init__()
        c = cfg.d_model
        self.level_embed = nn.Parameter(torch.randn(cfg.num_levels, c))
        self.encoder = Encoder(cfg.enc_layers, c, cfg.dim_feedforward, cfg.num_levels, cfg.nheads, cfg.enc_points)
        self.decoder = Decoder(cfg, bbox_embed, class_embed)
        self.query_feature_initializer = nn.Linear(cfg.num_levels * c, c)


def window_ranges(num_frames: int, window_len: int, stride: int) -> list[tuple[int, int]]:
    """(first, last) frame of each window: starts 0, stride, 2*stride, ...; the last one ends on the last frame."""
    if num_frames < window_len:
        raise ValueError(f"TAPTRv2 needs at least window_len={window_len} frames, got {num_frames}")
    count = (num_frames - window_len) // stride + 1
    if window_len + (count - 1) * stride < num_frames:
        count += 1
    ranges = []
    for index in range(count):
        last = min(index * stride + window_len - 1, num_frames - 1)
        ranges.append((last - window_len + 1, last))
    return ranges


def write_window(state: Tensor, first: int, last: int, window: Tensor, pad_future: bool) -> Tensor:
    """state (B, T, ...) with frames first..last replaced by `window`, later frames copied from `last` if asked."""
    after = state[:, last + 1:]
    if pad_future:
        after = window[:, -1:].expand_as(after)
    return torch.cat([state[:, :first], window, after], dim=1)


def merge_window(state: Tensor, first: int, last: int, new: Tensor, mask: Tensor, pad_future: bool) -> Tensor:
    """write_window of `new` where mask is 1; frames a point is not updated on (mask 0) keep their state."""
    return write_window(state, first, last, state[:, first:last + 1] * (1 - mask) + new * mask, pad_future)


class TaptrV2(nn.Module):
    def __init__(self, cfg: TaptrV2Config | None = None) -> None:
        super().__init__()
        cfg = cfg or TaptrV2Config()
        self.cfg = cfg
        c = cfg.d_model
        self.backbone = nn.ModuleList([ResNetBackbone(cfg.backbone_depths, cfg.backbone_width)])
        stage_channels = self.backbone[0].body.num_channels[4 - cfg.num_levels:]
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ch, c, kernel_size=1), nn.GroupNorm(cfg.norm_groups, c)) for ch in stage_channels
        )
        self.bbox_embed = nn.ModuleList(MLP(c, c, 4, 3) for _ in range(cfg.dec_layers))
        self.class_embed = nn.ModuleList(nn.Linear(c, NUM_VIS_CLASSES) for _ in range(cfg.dec_layers))
        self.transformer = Transformer(cfg, self.bbox_embed, self.class_embed)
        self.query_between_window_updater = relu_mlp(3 * c, c, c)
        self.window_update_dropout = nn.Dropout(cfg.window_update_dropout)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """The reference initialisation.

        Xavier for the transformer's matrices except the modules the reference adds after that
        step (which keep PyTorch defaults); Deformable DETR init for the encoder attention; zero
        last box layers; prior-probability 0.01 visibility bias.
        """
        added_later = (
            "decoder.bbox_embed.", "decoder.class_embed.", "decoder.query_updater.", "query_feature_initializer."
        )
        for name, p in self.transformer.named_parameters():
            if p.dim() > 1 and not name.startswith(added_later):
                nn.init.xavier_uniform_(p)
        for layer in self.transformer.encoder.layers:
            layer.self_attn.reset_parameters()
        nn.init.normal_(self.transformer.level_embed)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        for head in self.bbox_embed:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        prior = 0.01
        for head in self.class_embed:
            nn.init.constant_(head.bias, -math.log((1 - prior) / prior))

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """The ResNet's parameters (trained with their own, lower learning rate)."""
        return self.backbone.parameters()

    # ----------------------------------------------------------------------------------
    # video features

    def _preprocess(self, video: Tensor) -> Tensor:
        frames = video.flatten(0, 1)
        if tuple(frames.shape[-2:]) != self.cfg.model_resolution:
            frames = F.interpolate(frames, size=self.cfg.model_resolution, mode="bilinear", align_corners=True)
        # constants made in the input's dtype: a float64 run gets exact ImageNet statistics
        mean, std = frames.new_tensor(IMAGENET_MEAN), frames.new_tensor(IMAGENET_STD)
        return (frames / 255 - mean[:, None, None]) / std[:, None, None]

    def _encode_chunk(self, frames: Tensor) -> tuple[Tensor, list[tuple[int, int]]]:
        stages = self.backbone[0](frames)[4 - self.cfg.num_levels:]
        srcs, pos, shapes = [], [], []
        for level, (proj, stage) in enumerate(zip(self.input_proj, stages)):
            src = proj(stage)
            h, w = src.shape[-2:]
            shapes.append((h, w))
            srcs.append(src.flatten(2).transpose(1, 2))
            level_pos = sine_position_map(h, w, self.cfg.d_model, self.cfg.pe_temperature, src)
            pos.append(level_pos.flatten(2).transpose(1, 2) + self.transformer.level_embed[level])
        src = torch.cat(srcs, 1)
        pos = torch.cat(pos, 1).expand_as(src)
        return self.transformer.encoder(src, pos, shapes), shapes

    def encode(self, frames: Tensor) -> tuple[Tensor, list[tuple[int, int]]]:
        """Normalised frames (F, 3, H, W) -> encoder memory (F, S, C) and the level shapes."""
        chunks = [self._encode_chunk(chunk) for chunk in frames.split(self.cfg.frames_per_chunk)]
        return torch.cat([memory for memory, _ in chunks]), chunks[0][1]

    def _query_content(self, memory: Tensor, shapes: SpatialShapes, batch: int, frames: Tensor, xy: Tensor) -> Tensor:
        """Start-frame features at the query points on every level (trilinear, corners aligned, border) -> (B, N, C)."""
        num_frames = memory.shape[0] // batch
        samples = []
        for level_map in memory.split([h * w for h, w in shapes], dim=1):
            h, w = shapes[len(samples)]
            volume = level_map.view(batch, num_frames, h, w, -1).permute(0, 4, 1, 2, 3)  # B, C, T, h, w
            # pixel coordinates of the level, then grid units (the reference's order of operations)
            pix = torch.stack([xy[..., 0] * (w - 1), xy[..., 1] * (h - 1), frames.to(xy.dtype)], -1)
            scale = xy.new_tensor([2 / max(w - 1, 1), 2 / max(h - 1, 1), 2 / max(num_frames - 1, 1)])
            grid = (pix * scale - 1)[:, None, :, None, :]  # B, 1, N, 1, 3
            sampled = F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=True)
            samples.append(sampled[:, :, 0, :, 0].transpose(1, 2))
        return self.transformer.query_feature_initializer(torch.cat(samples, dim=-1))

    # ----------------------------------------------------------------------------------
    # tracking

    def _check_inputs(self, video: Tensor, queries: Tensor) -> None:
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be (B, T, 3, H, W), got {tuple(video.shape)}")
        if queries.dim() != 3 or queries.shape[-1] != 3 or queries.shape[0] != video.shape[0]:
            raise ValueError(
                f"queries must be (B, N, 3) as (t, x, y) with B={video.shape[0]}, got {tuple(queries.shape)}"
            )
        if queries.shape[1] == 0:
            raise ValueError("queries must hold at least one point")
        t = queries[..., 0].round()
        if (t < 0).any() or (t > video.shape[1] - 1).any():
            raise ValueError(
                f"query frames must lie in [0, {video.shape[1] - 1}], "
                f"got {queries[..., 0].min().item()}..{queries[..., 0].max().item()}"
            )

    def forward(self, video: Tensor, queries: Tensor) -> TaptrV2Output:
        self._check_inputs(video, queries)
        cfg = self.cfg
        batch, num_frames, _, height, width = video.shape
        ranges = window_ranges(num_frames, cfg.window_len, cfg.window_stride)
        memory, shapes = self.encode(self._preprocess(video))
        size = video.new_tensor([width - 1, height - 1])
        xy = queries[..., 1:] / size
        query_frames = queries[..., 0].round().long()  # B, N
        content = self._query_content(memory, shapes, batch, query_frames, xy)

        num_points, channels = content.shape[1], content.shape[2]
        time = torch.arange(num_frames, device=video.device)
        tracking = time[None, None] >= query_frames[..., None]  # B, N, T: frames the point is tracked on
        updating = time[None, None] > query_frames[..., None]  # ... except its query frame, which stays fixed
        box = torch.cat([inverse_sigmoid(xy), torch.zeros_like(xy)], dim=-1)  # (w, h) = 0.5 -> logit 0
        box = box[:, None].expand(batch, num_frames, num_points, 4)
        onehot = F.one_hot(torch.full_like(query_frames, VISIBLE_CLASS), NUM_VIS_CLASSES).to(video.dtype)
        num_layers = cfg.dec_layers
        boxes = [box] * num_layers  # per layer, logit space (B, T, N, 4)
        apu_boxes = [box] * num_layers
        vis = [onehot[:, None].expand(batch, num_frames, num_points, 3)] * num_layers
        initial = content[:, None].expand(batch, num_frames, num_points, channels)
        features = initial

        memory = memory.view(batch, num_frames, *memory.shape[1:])
        for index, (first, last) in enumerate(ranges):
            window_update = updating[:, :, first:last + 1]  # B, N, W
            if not window_update.any():
                continue  # no point moves in this window (the reference skips it entirely)
            outputs = self._decode_window(
                memory[:, first:last + 1].flatten(0, 1), shapes, features[:, first:last + 1],
                boxes[-1][:, first:last + 1], tracking[:, :, first:last + 1], window_update,
            )
            fused, coords, apu_coords, logits, mask = outputs
            pad = index < len(ranges) - 1
            boxes = [merge_window(b, first, last, c, mask, pad) for b, c in zip(boxes, coords)]
            apu_boxes = [merge_window(b, first, last, c, mask, pad) for b, c in zip(apu_boxes, apu_coords)]
            vis = [merge_window(v, first, last, c, mask, pad) for v, c in zip(vis, logits)]
            step = self.query_between_window_updater(
                torch.cat([initial[:, first:last + 1], features[:, first:last + 1], fused], dim=-1)
            )
            step = self.window_update_dropout(step * mask)
            if not self.training and num_frames > cfg.long_video_len:
                pad = index % (num_frames // cfg.long_video_len) == 0
            features = write_window(features, first, last, features[:, first:last + 1] + step, pad)

        layer_tracks = torch.stack(boxes).sigmoid()[..., :2] * size
        layer_vis = torch.stack(vis)
        return TaptrV2Output(
            tracks=layer_tracks[-1],
            visible=layer_vis[-1][..., VISIBLE_CLASS].sigmoid() > 0.5,
            vis_logits=layer_vis[-1],
            layer_tracks=layer_tracks,
            layer_apu_tracks=torch.stack(apu_boxes).sigmoid()[..., :2] * size,
            layer_vis_logits=layer_vis,
        )

    def _decode_window(
        self, memory: Tensor, shapes: SpatialShapes, features: Tensor, boxes: Tensor, tracking: Tensor, updating: Tensor
    ) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor], Tensor]:
        """One window through the decoder.

        memory (B*W, S, C); features (B, W, N, C); boxes (B, W, N, 4) logits; tracking/updating (B, N, W) bool.
        Returns the last layer's fused output (B, W, N, C), per-layer box logits after bbox_embed and right
        after the APU, per-layer visibility logits (each (B, W, N, .)), and the update mask (B, W, N, 1).
        """
        batch, window, num_points, channels = features.shape
        heads = self.cfg.nheads
        # frames where a point is tracked and frames where it is not yet tracked do not attend to each other
        temporal_mask = tracking[..., :, None] != tracking[..., None, :]  # B, N, W, W
        temporal_mask = temporal_mask[:, :, None].expand(-1, -1, heads, -1, -1).reshape(-1, window, window)
        tracked = tracking.transpose(1, 2).reshape(batch * window, num_points)  # spatial attention groups
        mask = updating.transpose(1, 2).reshape(batch * window, num_points, 1).to(features.dtype)

        fused, deltas, apu_positions = self.transformer.decoder(
            features.flatten(0, 1), boxes.flatten(0, 1).sigmoid(), mask, memory, shapes,
            temporal_mask, tracked, window,
        )
        unflat = lambda x: x.view(batch, window, num_points, x.shape[-1])  # noqa: E731
        apu_logits = [inverse_sigmoid(p) for p in apu_positions]
        coords = [unflat(d + a) for d, a in zip(deltas, apu_logits)]
        logits = [unflat(head(f)) for head, f in zip(self.class_embed, fused)]
        return unflat(fused[-1]), coords, [unflat(a) for a in apu_logits], logits, unflat(mask)


def _unwrap_official(obj: Mapping, prefer_ema: bool) -> dict[str, Tensor]:
    order = ("ema_model", "model") if prefer_ema else ("model", "ema_model")
    for key in order:
        if isinstance(obj.get(key), Mapping):
            # the EMA wrapper saves its inner model as "module."
            return {k.removeprefix("module."): v for k, v in obj[key].items()}
    if all(isinstance(v, Tensor) for v in obj.values()):
        return dict(obj)
    raise CheckpointMismatchError(
        f"no 'model' or 'ema_model' state dict in the checkpoint (top-level keys {list(obj)})"
    )


def load_taptrv2_checkpoint(model: TaptrV2, path: str | os.PathLike, prefer_ema: bool = True) -> None:
    """Load an official TAPTRv2 checkpoint (e.g. taptrv2.pth) strictly.

    Training checkpoints hold 'model' and 'ema_model' (the one the official evaluation uses,
    taken by default) plus optimiser state and the run's argparse namespace, which the
    weights-only loader is allowed to rebuild.
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = load_checkpoint_file(path)
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(f"{path} does not hold a dict")
    load_strict(model, _unwrap_official(obj, prefer_ema), what=f"TAPTRv2 checkpoint {path}")


def load_resnet50_imagenet(model: TaptrV2, path: str | os.PathLike) -> None:
    """Load an ImageNet ResNet state dict (conv1/bn1/layer1..4 layout) into the backbone; ``fc.*`` is ignored."""
    state = read_state_dict(path)
    state = {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    load_strict(model.backbone[0].body, state, what=f"ImageNet ResNet checkpoint {path}")

