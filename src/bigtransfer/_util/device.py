"""Which device a model runs on: the one asked for, else CUDA when torch sees a GPU."""

from __future__ import annotations

import torch


def resolve_device(name: str | int | torch.device | None) -> torch.device:
    """The device asked for (an int is a CUDA index, -1 the CPU, as in transformers' pipelines), else CUDA when
    there is one; a clear error for CUDA where torch sees none."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device("cpu" if name == -1 else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: this PyTorch ({torch.__version__}) sees no CUDA GPU; use --device cpu, or install "
            "a CUDA build of PyTorch on a machine with an NVIDIA driver."
        )
    return device
