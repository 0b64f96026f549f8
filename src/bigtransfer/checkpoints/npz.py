"""Google's original BiT `.npz` checkpoints (flat TF variable names, HWIO kernels) → our state dicts and configs."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

ROOT_KERNEL = "root_block/standardized_conv2d/kernel"
BASE_WIDTHS = [256, 512, 1024, 2048]
# Some released files number their conv scopes ("standardized_conv2d_3"); the rest of the name is standard.
_NUMBERED_CONV = re.compile(r"/standardized_conv2d_\d+/")
_UNIT = re.compile(r"block(\d+)/unit(\d+)/")


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz, with the numbered-conv naming quirk normalised away."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {_NUMBERED_CONV.sub("/standardized_conv2d/", key): archive[key] for key in archive.files}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as error:
        raise ValueError(
            f"Cannot read {path} as a BiT .npz checkpoint ({type(error).__name__}: {error}); the file is truncated "
            "or corrupt: delete it and download it again."
        ) from None
    if not any(key.endswith(ROOT_KERNEL) for key in arrays):
        raise ValueError(f"{path} is an .npz file but not a BiT checkpoint: it has no '…/{ROOT_KERNEL}' array.")
    return arrays


def _prefix(arrays: dict[str, np.ndarray]) -> str:
    return next(key[: -len(ROOT_KERNEL)] for key in arrays if key.endswith(ROOT_KERNEL))


def config_from_npz(arrays: dict[str, np.ndarray]) -> dict:
    """BitConfig settings inferred from the arrays: units per block → depths, root width → width factor, head →
    labels."""
    prefix = _prefix(arrays)
    depths: dict[int, int] = {}
    for key in arrays:
        match = _UNIT.match(key[len(prefix) :])
        if match:
            depths[int(match[1])] = max(depths.get(int(match[1]), 0), int(match[2]))
    stem_width = arrays[prefix + ROOT_KERNEL].shape[-1]
    width_factor = max(1, stem_width // 64)
    head = arrays.get(prefix + "head/conv2d/kernel")
    return dict(
        depths=[depths[block] for block in sorted(depths)],
        hidden_sizes=BASE_WIDTHS[: len(depths)],
        embedding_size=stem_width // width_factor,
        width_factor=width_factor,
        num_labels=0 if head is None else head.shape[-1],
    )


def _to_torch(array: np.ndarray) -> torch.Tensor:
    """HWIO → OIHW for kernels; 1-D arrays unchanged."""
    array = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def npz_to_bit_state_dict(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    prefix = _prefix(arrays)
    state = {"bit.embedder.convolution.weight": _to_torch(arrays[prefix + ROOT_KERNEL])}
    parts = {"a": "1", "b": "2", "c": "3"}
    for key, array in arrays.items():
        name = key[len(prefix) :]
        match = _UNIT.match(name)
        if match:
            layer = f"bit.encoder.stages.{int(match[1]) - 1}.layers.{int(match[2]) - 1}."
            rest = name[match.end() :]
            if rest == "a/proj/standardized_conv2d/kernel":
                state[layer + "downsample.conv.weight"] = _to_torch(array)
            elif rest.endswith("/standardized_conv2d/kernel"):
                state[layer + f"conv{parts[rest[0]]}.weight"] = _to_torch(array)
            elif rest.endswith("/group_norm/gamma"):
                state[layer + f"norm{parts[rest[0]]}.weight"] = _to_torch(array)
            elif rest.endswith("/group_norm/beta"):
                state[layer + f"norm{parts[rest[0]]}.bias"] = _to_torch(array)
        elif name == "group_norm/gamma":
            state["bit.norm.weight"] = _to_torch(array)
        elif name == "group_norm/beta":
            state["bit.norm.bias"] = _to_torch(array)
        elif name == "head/conv2d/kernel":
            state["classifier.1.weight"] = _to_torch(array[0, 0].T)
        elif name == "head/conv2d/bias":
            state["classifier.1.bias"] = _to_torch(array)
    return state
