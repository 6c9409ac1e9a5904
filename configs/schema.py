"""Typed configuration schema. Every YAML key and command-line override is checked here.

Family-specific sections (`model`, `data`) are chosen by their discriminator key
(`model.family`, `data.kind`), so each family gets its own strict dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class FsdpConfig:
    """`trainer.strategy=fsdp` (CUDA, or CPU over gloo): each instance of these classes becomes its own FSDP unit."""

    wrap: list[str] = field(default_factory=lambda: [
        "models.dinov2.Block",  # DINOv2 / Depth Anything encoder blocks: the bulk of ViT-L/G parameters
        "models.tracktention.Tracktention",
        "models.cotracker3_layers.SelfAttentionBlock",
        "models.cotracker3_layers.CrossAttentionBlock",
    ])
    sharding: str = "FULL_SHARD"  # FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD | NO_SHARD
    activation_checkpointing: bool = False  # recompute each wrapped block in the backward pass


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    # int, a list of device ids, or "auto": under torchrun / srun the launcher's processes per node,
    # otherwise every visible device.
    devices: Any = 1
    num_nodes: Any = 1  # int, or "auto": the launcher's node count under torchrun / srun (else 1)
    strategy: str = "auto"  # "auto" -> ddp when devices x nodes > 1; "fsdp" -> FSDP with `fsdp` below
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)
    slurm_auto_requeue: bool = True  # under srun: on SIGUSR1 Lightning checkpoints and requeues the job
    precision: str = "auto"  # "auto" -> bf16-mixed on GPUs that support it, else 32-true
    max_steps: int = 2000
    # Stop training after this much wall time, "DD:HH:MM:SS" (Lightning's max_time: validation runs at
    # the stop, and a resumed run continues the clock saved in its checkpoint); None: no limit.
    max_time: Optional[str] = None
    val_check_interval: int = 250  # training batches between validations
    limit_val_batches: Optional[float] = None
    gradient_clip_val: Optional[float] = 1.0
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    num_sanity_val_steps: int = 0  # sanity runs would pollute torchmetrics state
    deterministic: bool = False
    enable_progress_bar: bool = True
    # torch.compile the family's network in place (nn.Module.compile: state-dict keys unchanged,
    # so checkpoints stay interchangeable with uncompiled runs).
    compile: bool = False
    # Convert the family's network to channels-last memory format (models/memory_format.py): faster
    # convolutions on GPU tensor cores; state-dict keys and values unchanged.
    channels_last: bool = False


@dataclass
class CheckpointConfig:
    monitor: Optional[str] = "val/aj"
    mode: str = "max"
    save_top_k: int = 2
    every_n_steps: int = 100  # last.ckpt cadence: bounds work lost to a killed run


@dataclass
class WandbConfig:
    project: str = "tracklight"
    entity: Optional[str] = None
    # None: honour WANDB_MODE, else "online" when an API key is configured, else "offline".
    mode: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    log_media_every_n_validations: int = 1


@dataclass
class AugmentConfig:
    """CoTracker3-style augmentation, sizes as fractions of the crop so they scale with resolution.

    CoTracker3 at 384x512: offset drift 15 px (~0.03), occluder side 2-100 px (~0.005-0.2).
    """

    enabled: bool = True
    color_jitter_p: float = 0.25
    blur_p: float = 0.25
    flip_h_p: float = 0.5
    flip_v_p: float = 0.5
    scale_min: float = 0.75
    scale_max: float = 1.25
    aspect_jitter: float = 0.05  # x and y zoom differ by up to this fraction
    scale_drift: float = 0.05  # per-frame AR(0.8) jitter of the zoom
    offset_drift: float = 0.03  # per-frame AR(0.8) jitter of the crop centre, fraction of crop size
    occluder_p: float = 0.5  # per frame after the first
    max_occluders: int = 10
    occluder_min_size: float = 0.02
    occluder_max_size: float = 0.2


@dataclass
class SyntheticDataConfig:
    """The embedded Kubric-like dataset, generated into `cache_dir` on first use."""

    cache_dir: str = ".cache/synthetic"
    num_train_clips: int = 400
    num_val_clips: int = 16
    height: int = 64
    width: int = 64
    num_frames: int = 24
    num_tracks: int = 256
    seed: int = 0
    clips_per_shard: int = 50
    haze: float = 0.0  # aerial-perspective depth cue (datamodules/synthetic.py)
    frame_noise: float = 0.0  # per-frame pixel noise std, 0..255 units
    colour_classes: int = 0  # > 0: class hues + per-frame luminance signature (colorization)
    class_signature: float = 24.0  # that signature's peak amplitude, 0..255 units
    domain: str = "default"  # default | plaid (a shifted domain: datamodules/synthetic.py DOMAINS)


@dataclass
class TrackingDataConfig:
    kind: str = "tracking"
    train_shards: Optional[str] = None  # brace pattern / glob / directory; None -> synthetic
    val_shards: Optional[str] = None
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    clip_len: int = 24
    num_queries: int = 64
    random_query_fraction: float = 0.25  # share of tracks queried at a random visible frame
    crop_hw: Optional[list[int]] = None  # training crop (H, W); None keeps the stored size
    val_clip_len: Optional[int] = None  # None -> clip_len
    val_num_queries: Optional[int] = None  # None -> num_queries
    batch_size: int = 1
    num_workers: int = 2
    shuffle_buffer: int = 32
    batches_per_epoch: int = 500
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TapVidDataConfig:
    kind: str = "tapvid"
    path: str = "???"
    dataset: str = "davis"  # davis | rgb_stacking | kinetics | robotap
    query_mode: str = "first"  # first | strided
    resize: list[int] = field(default_factory=lambda: [256, 256])
    max_videos: Optional[int] = None
    num_workers: int = 0


@dataclass
class RootConfig:
    name: str = "default"
    experiment: Optional[str] = None
    run_dir: str = "runs/${name}"
    seed: int = 42
    resume: Optional[str] = None  # fit: "auto" (last.ckpt of run_dir if any) | path to a .ckpt
    ckpt: Optional[str] = None  # validate / test / predict: a Lightning .ckpt to evaluate
    logger: str = "wandb"  # wandb | csv | tensorboard | none
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    model: Any = None  # replaced by the family's dataclass (configs/loader.py: typed_schema)
    data: Any = None  # replaced by the data kind's dataclass (configs/loader.py: typed_schema)

