"""Where the model runs, and getting 8-bit batches there without stalling the host."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .workers import LoadedImages


def parse_device(name: str | int | torch.device) -> torch.device:
    """A device by name (an int is a CUDA index, -1 the CPU, as in transformers' pipelines), whether or not this
    machine has it; what torch cannot read as a device is one line naming it, not torch's RuntimeError."""
    try:
        if isinstance(name, bool) or not isinstance(name, (str, int, torch.device)):
            raise RuntimeError(name)
        return torch.device("cpu" if name == -1 else name)
    except RuntimeError:
        if type(name) is int and name >= 0:  # torch finds no accelerator to index: `resolve_device` says so
            return torch.device("cuda", name)
        raise ValueError(
            f"--device {name!r} is not a device: use cpu, cuda or cuda:N (an int is a CUDA index, -1 the CPU)."
        ) from None


def resolve_device(name: str | int | torch.device | None) -> torch.device:
    """The device asked for (`parse_device`), else CUDA when there is one; a clear error for CUDA where torch sees
    none."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = parse_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: this PyTorch ({torch.__version__}) sees no CUDA GPU; use --device cpu, or install "
            "a CUDA build of PyTorch on a machine with an NVIDIA driver."
        )
    return device


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
