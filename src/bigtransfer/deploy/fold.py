"""An inference copy of a BiT model whose weight standardisation is folded into plain convolutions."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..models.layers import WeightStandardizedConv2d


def plain_convolution(conv: WeightStandardizedConv2d) -> nn.Module:
    """The same convolution with its kernel standardised once: (dynamic "SAME" pad →) nn.Conv2d."""
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, bias=False, device=conv.weight.device, dtype=conv.weight.dtype)  # fmt: skip
    with torch.no_grad():
        folded.weight.copy_(conv.standardized_weight(conv.weight.dtype))
    return folded if conv.pad is None else nn.Sequential(conv.pad, folded)


def fold_weight_standardization(model: nn.Module) -> nn.Module:
    """A copy of `model` for inference: every weight-standardised conv becomes a plain conv holding the
    standardised kernel, so an exported graph runs no standardisation. The original is untouched; the copy
    is in eval mode and must not be trained (its kernels are no longer constrained)."""
    folded = copy.deepcopy(model).eval()
    for parent in list(folded.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, WeightStandardizedConv2d):
                setattr(parent, name, plain_convolution(child))
    return folded
