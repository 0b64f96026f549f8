"""timm `ResNetV2` state dicts (`stem.conv`, `stages.N.blocks.M`, `head.fc`) → transformers/bigtransfer keys."""

from __future__ import annotations

import re

import torch

from ..config import BitConfig


def is_timm_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    return "stem.conv.weight" in state_dict


def timm_to_bit_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename keys and flatten the 1×1-conv head to a Linear weight."""
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("stem.conv."):
            new_key = "bit.embedder.convolution." + key[len("stem.conv.") :]
        elif key.startswith("stem.norm."):
            new_key = "bit.embedder.norm." + key[len("stem.norm.") :]
        elif key.startswith("stages."):
            new_key = "bit.encoder." + key.replace(".blocks.", ".layers.")
        elif key.startswith("norm."):
            new_key = "bit." + key
        elif key.startswith("head.fc."):
            new_key = "classifier.1." + key[len("head.fc.") :]
            value = value.flatten(1) if value.ndim == 4 else value
        else:
            raise ValueError(f"Unexpected key {key!r} in a timm ResNetV2 state dict; is this a BiT checkpoint?")
        converted[new_key] = value
    return converted


def config_from_timm_state_dict(state_dict: dict[str, torch.Tensor], **overrides) -> BitConfig:
    """Infer depths, width factor, layout and head size from the tensors themselves."""
    depths: dict[int, int] = {}
    for key in state_dict:
        match = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", key)
        if match:
            stage, block = int(match[1]), int(match[2])
            depths[stage] = max(depths.get(stage, 0), block + 1)
    stem_width = state_dict["stem.conv.weight"].shape[0]
    stage_widths = [state_dict[f"stages.{s}.blocks.0.conv3.weight"].shape[0] for s in sorted(depths)]
    width_factor = max(1, stem_width // 64)
    preact = "norm.weight" in state_dict
    head = state_dict.get("head.fc.weight")
    arguments = dict(
        depths=[depths[s] for s in sorted(depths)],
        embedding_size=stem_width // width_factor,
        hidden_sizes=[w // width_factor for w in stage_widths],
        width_factor=width_factor,
        layer_type="preactivation" if preact else "bottleneck",
        num_labels=0 if head is None else head.shape[0],
    )
    if not preact:
        arguments.update(global_padding="same", embedding_dynamic_padding=True)
    return BitConfig(**{**arguments, **overrides})
