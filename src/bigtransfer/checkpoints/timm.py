"""timm `ResNetV2` state dicts (`stem.conv`, `stages.N.blocks.M`, `head.fc`) → transformers/bigtransfer keys."""

from __future__ import annotations

import torch

from .weights import config_from_state_dict


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


def config_from_timm_state_dict(state_dict: dict[str, torch.Tensor]) -> dict:
    """BitConfig settings inferred from the tensors themselves: depths, width factor, layout and head size (read
    after renaming the keys to ours, as for a weights-only transformers directory)."""
    return config_from_state_dict(timm_to_bit_state_dict(state_dict))
