"""Shared test helpers: tiny configs, random-but-realistic weights, timm import shim, output comparison."""

from __future__ import annotations

import torch

TINY = dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 2, 1], num_groups=1, num_labels=3, embedding_size=16)
HYBRID = dict(
    layer_type="bottleneck",
    global_padding="same",
    embedding_dynamic_padding=True,
    depths=[3, 4, 9],
    out_features=["stage1", "stage2", "stage3"],
)


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """GroupNorm affine params away from 1/0, so a mixed-up norm cannot hide behind the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                noise = torch.randn(param.shape, generator=generator) * 0.2
                param.copy_(noise + (1.0 if name.endswith("weight") else 0.0))
    return model


def max_abs_diff(a, b) -> float:
    """Largest difference between two (nested tuples of) tensors; shapes must agree."""
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b), f"length {len(a)} != {len(b)}"
        return max((max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return (a.float() - b.float()).abs().max().item()


def import_timm():
    """timm, importable thanks to the torchvision operator shim in conftest.py."""
    import timm

    return timm
