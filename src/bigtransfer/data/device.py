"""The layout a model runs in on its device, and getting 8-bit batches there without stalling the host (which
device: `_util.device.resolve_device`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .workers import LoadedImages


def use_channels_last(channels_last: bool | None, device: torch.device) -> bool:
    """The layout asked for; by default channels-last on CUDA (the workers' 8-bit layout, what compiled
    kernels prefer; eager on an H200 within 1 % of contiguous), contiguous on CPU (R50x1 trained slightly
    slower channels-last on 2 cores)."""
    return channels_last if channels_last is not None else device.type == "cuda"


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without blocking the host: pinned first when the target is a GPU."""
    if device.type == "cuda":
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    return tensor.to(device)


def gather_pixels(loaded: Sequence[LoadedImages], device: torch.device) -> torch.Tensor | None:
    """The uint8 pixels of several worker results as one N×H×W×3 batch on `device` (joined there)."""
    parts = [to_device(item.pixels, device) for item in loaded if item.pixels is not None]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else torch.cat(parts)
