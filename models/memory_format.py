"""`trainer.channels_last`: store a network's 4-d (convolution) weights in channels-last order.

On GPUs, cuDNN's convolution kernels for tensor cores (bf16 / tf32) run natively in NHWC; with
NCHW weights and activations each convolution pays for layout transposes. A convolution whose
weight is channels-last returns a channels-last output, so converting the weights once carries
the layout through the conv stacks without touching the inputs. Values, dtypes and state-dict
keys are unchanged (only strides differ), so checkpoints stay interchangeable.
"""

from __future__ import annotations

import torch
from torch import nn


def has_4d_weights(model: nn.Module) -> bool:
    """Whether any parameter is 4-d (conv kernels): the only tensors channels-last changes."""
    return any(p.dim() == 4 for p in model.parameters())


def to_channels_last(model: nn.Module) -> nn.Module:
    """Convert `model`'s 4-d parameters and buffers to torch.channels_last in place; returns `model`."""
    return model.to(memory_format=torch.channels_last)
