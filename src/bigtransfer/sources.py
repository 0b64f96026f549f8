"""Where a checkpoint comes from: transformers directories and Hub repos, original .npz files, timm weights, zoo names.

Every source ends as (BitConfig, state dict in transformers' key layout); labels are attached
when the head's dataset is known.
"""

from __future__ import annotations

import difflib
import math
import os
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from .checkpoints import read_state_dict
from .config import BitConfig
from .convert import config_from_timm_state_dict, is_timm_state_dict, timm_to_bit_state_dict
from .convert.npz import config_from_npz, npz_to_bit_state_dict, read_npz
from .download import cache_dir, download
from .hub import hub_download, resolve_config_file, resolve_weight_files
from .io import read_json
from .labels import id2label_for
from .processing_base import IMPLIED_SETTINGS
from .zoo import UPSTREAM_224, ZOO, ZooEntry, entry_for_file, find_entry

STATE_DICT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
BUNDLED_MODELS = {  # name: what it was pre-trained on (bigtransfer/bundled/README.md)
    "bit-tiny-fashion5": "Fashion-MNIST, 5 classes (in the package)",
    "bit-tiny-glyphs": "printed letters, 39 classes (in the package)",
}
TIMM_PREFIX = "timm/"


def _with_labels(config: BitConfig, label_set: str | None, overrides: dict[str, Any]) -> BitConfig:
    if "num_labels" in overrides or "id2label" in overrides:
        return config
    generic = all(name == f"LABEL_{i}" for i, name in config.id2label.items())
    names = id2label_for(config.num_labels, label_set) if generic else None
    if names:
        config.id2label, config.label2id = names, {name: i for i, name in names.items()}
    return config


def _from_npz(path: Path, entry: ZooEntry | None, config: BitConfig | None, overrides: dict) -> tuple:
    arrays = read_npz(path)
    config = config or _with_labels(config_from_npz(arrays, **overrides), entry and entry.label_set, overrides)
    return config, npz_to_bit_state_dict(arrays)


def _from_state_dict_file(path: Path, config: BitConfig | None, overrides: dict) -> tuple:
    state_dict = read_state_dict(path)
    if is_timm_state_dict(state_dict):
        config = config or _with_labels(config_from_timm_state_dict(state_dict, **overrides), None, overrides)
        return config, timm_to_bit_state_dict(state_dict)
    if config is None:
        beside = path.parent / "config.json"
        if not beside.is_file():
            raise FileNotFoundError(
                f"{path} holds transformers-layout weights without a config.json beside it: pass its directory with "
                "config.json, or pass config=BitConfig(...)."
            )
        config = BitConfig.from_dict(read_json(beside), **overrides)
    return config, state_dict


def _from_timm_hub(repo_id: str, config: BitConfig | None, overrides: dict, hub_options: dict) -> tuple:
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = hub_download(repo_id, filename, "", **hub_options)
        if path is not None:
            return _from_state_dict_file(path, config, overrides)
    raise FileNotFoundError(f"{repo_id} has neither model.safetensors nor pytorch_model.bin.")


def _from_transformers(name_or_path, config: BitConfig | None, overrides: dict, subfolder: str, hub_options: dict):
    if config is None:
        config_file = resolve_config_file(name_or_path, subfolder, **hub_options)
        config = BitConfig.from_dict(read_json(config_file), **overrides)
    state_dict: dict[str, torch.Tensor] = {}
    for path in resolve_weight_files(name_or_path, subfolder, **hub_options):
        state_dict.update(read_state_dict(path))
    return config, state_dict


def bundled_model(name: str) -> Path | None:
    """A model shipped inside the package (see bigtransfer/bundled/README.md), by name."""
    if name not in BUNDLED_MODELS:
        return None
    return Path(str(files("bigtransfer") / "bundled" / name))


def zoo_file(entry: ZooEntry) -> Path:
    """The entry's .npz in the local cache, downloaded (with a progress bar) on first use."""
    return download(entry.url, cache_dir() / entry.file, size=entry.size_bytes, sha256=entry.sha256)


def load_checkpoint(
    name_or_path: str | os.PathLike,
    config: BitConfig | None,
    overrides: dict[str, Any],
    subfolder: str = "",
    hub_options: dict[str, Any] | None = None,
) -> tuple[BitConfig, dict[str, torch.Tensor]]:
    hub_options = hub_options or {}
    path = Path(name_or_path).expanduser()
    if path.is_file():
        if path.suffix == ".npz":
            return _from_npz(path, entry_for_file(path), config, overrides)
        if path.suffix in STATE_DICT_SUFFIXES:
            return _from_state_dict_file(path, config, overrides)
        raise ValueError(
            f"{path} is not a checkpoint file (.npz, .safetensors, .pth, .bin): pass its directory, or the weights file."
        )
    bundled = bundled_model(str(name_or_path))
    if bundled is not None:
        return _from_transformers(bundled, config, overrides, subfolder, hub_options)
    entry = find_entry(str(name_or_path)) if not path.exists() else None
    if entry is not None:
        return _from_npz(zoo_file(entry), entry, config, overrides)
    if path.suffix in (".npz", *STATE_DICT_SUFFIXES) and not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: check the path (zoo models are named without a suffix, e.g. BiT-M-R50x1; "
            "`bigtransfer models` lists them)."
        )
    if str(name_or_path).lower().startswith("bit-"):
        close = difflib.get_close_matches(str(name_or_path), list(ZOO), n=3, cutoff=0.6)
        raise ValueError(
            f"Unknown BiT model name {str(name_or_path)!r}"
            + (f"; did you mean {', '.join(close)}?" if close else ".")
            + " `bigtransfer models` lists the names."
        )
    if str(name_or_path).startswith(TIMM_PREFIX):
        return _from_timm_hub(str(name_or_path), config, overrides, hub_options)
    return _from_transformers(name_or_path, config, overrides, subfolder, hub_options)


def preprocessing_for(name_or_path: str | os.PathLike, hub_options: dict[str, Any]) -> dict[str, Any] | None:
    """Processor settings implied by a bundled model, a zoo name, an original .npz file or a timm Hub id."""
    name = str(name_or_path)
    bundled = bundled_model(name)
    if bundled is not None:
        return read_json(bundled / "preprocessor_config.json")
    entry = find_entry(name) or (entry_for_file(name) if name.endswith(".npz") else None)
    if entry is not None:
        return entry.preprocessing.processor_settings()
    if name.endswith(".npz"):  # an unnamed original checkpoint: BiT's upstream evaluation
        return UPSTREAM_224.processor_settings()
    if str(name_or_path).startswith(TIMM_PREFIX) and not Path(name_or_path).exists():
        config_file = hub_download(str(name_or_path), "config.json", "", **hub_options)
        return timm_processor_settings(read_json(config_file)) if config_file else None
    return None


def timm_processor_settings(timm_config: dict[str, Any]) -> dict[str, Any]:
    """timm's eval transform (resize to floor(size / crop_pct), center crop) in our processor's terms."""
    pretrained = timm_config.get("pretrained_cfg", timm_config)
    size = pretrained.get("input_size", [3, 224, 224])[-1]
    crop_pct = pretrained.get("crop_pct", 0.875)
    return dict(
        size={"shortest_edge": math.floor(size / crop_pct)},
        crop_size=size,
        resample={"bilinear": 2, "bicubic": 3, "nearest": 0}.get(pretrained.get("interpolation", "bilinear"), 2),
        image_mean=list(pretrained.get("mean", [0.5] * 3)),
        image_std=list(pretrained.get("std", [0.5] * 3)),
    )


IMPLIED_SETTINGS.append(preprocessing_for)
