"""Which device a model runs on: the one asked for, else CUDA when torch sees a GPU."""

from __future__ import annotations

import torch


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
