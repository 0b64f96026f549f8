"""Converters from other BiT weight layouts (timm state dicts, original .npz files) to ours."""

from .timm import config_from_timm_state_dict, is_timm_state_dict, timm_to_bit_state_dict

__all__ = ["config_from_timm_state_dict", "is_timm_state_dict", "timm_to_bit_state_dict"]
