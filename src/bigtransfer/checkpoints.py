"""Checkpoint IO: find files (local directory or Hugging Face Hub), read/write weights, match keys to a model."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .io import atomic_path, read_json

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
WEIGHT_CANDIDATES = (SAFE_WEIGHTS, SAFE_INDEX, TORCH_WEIGHTS, TORCH_INDEX)
HEAD_PREFIX = "classifier."


class HubUnavailableError(OSError):
    """The Hub could not be reached and the file is not in the local cache."""


def _looks_like_local_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep + os.sep in name or name.count("/") > 1 or "\\" in name


def hub_download(repo_id: str, filename: str, subfolder: str, **hub_options: Any) -> Path | None:
    """Download (or find in the HF cache) one file; None when the repo has no such file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo_id, filename, subfolder=subfolder or None, **hub_options))
    except GatedRepoError as error:
        raise OSError(
            f"{repo_id} is gated on the Hub: accept its terms and log in (`hf auth login`). {error}"
        ) from None
    except RepositoryNotFoundError:
        raise OSError(
            f"{repo_id!r} is neither a local directory nor a model repository on the Hugging Face Hub: "
            "check the spelling, or pass the path of a directory holding config.json and model.safetensors."
        ) from None
    except RevisionNotFoundError:
        raise OSError(
            f"Revision {hub_options.get('revision')!r} does not exist in {repo_id}: pass an existing branch, tag or commit."
        ) from None
    except HFValidationError:
        raise FileNotFoundError(
            f"{repo_id!r} is not an existing local path, nor a valid Hub id ('org/name'): check the path."
        ) from None
    except LocalEntryNotFoundError:
        raise HubUnavailableError(
            f"Could not reach the Hugging Face Hub for {repo_id!r} ({filename} is not in the local cache either): "
            f"download the model on a connected machine with `model.save_pretrained(dir)` or `hf download {repo_id} "
            "--local-dir DIR`, copy DIR here, and pass that directory path instead of the Hub id."
        ) from None
    except EntryNotFoundError:
        return None


def resolve_file(
    name_or_path: str | os.PathLike, filename: str, subfolder: str = "", **hub_options: Any
) -> Path | None:
    """Path of `filename` in a local directory or Hub repo, or None when that checkpoint lacks it."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        candidate = local / subfolder / filename
        return candidate if candidate.is_file() else None
    name = str(name_or_path)
    if local.exists() or _looks_like_local_path(name):
        raise FileNotFoundError(f"{name} is not a directory: pass a directory holding {CONFIG_NAME} and the weights.")
    return hub_download(name, filename, subfolder, **hub_options)


HUB_OPTIONS = ("revision", "cache_dir", "local_files_only", "token")


def pop_hub_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the Hub download options out of `from_pretrained` keyword arguments."""
    return {key: kwargs.pop(key) for key in HUB_OPTIONS if key in kwargs}


def resolve_json(
    name_or_path: str | os.PathLike, filename: str, subfolder: str = "", **hub_options: Any
) -> Path | None:
    """A checkpoint's settings file: the path itself when it is a .json file, else `filename` inside it."""
    local = Path(name_or_path).expanduser()
    if local.is_file() and local.suffix == ".json":
        return local
    return resolve_file(name_or_path, filename, subfolder, **hub_options)


def resolve_config_file(name_or_path: str | os.PathLike, subfolder: str = "", **hub_options: Any) -> Path:
    path = resolve_json(name_or_path, CONFIG_NAME, subfolder, **hub_options)
    if path is None:
        raise FileNotFoundError(
            f"{name_or_path} has no {CONFIG_NAME}: a BiT checkpoint needs one (save it with `save_pretrained`)."
        )
    return path


def resolve_weight_files(name_or_path: str | os.PathLike, subfolder: str = "", **hub_options: Any) -> list[Path]:
    """The weight files of a checkpoint, preferring safetensors; shards are listed via their index."""
    for filename in WEIGHT_CANDIDATES:
        path = resolve_file(name_or_path, filename, subfolder, **hub_options)
        if path is None:
            continue
        if not filename.endswith(".index.json"):
            return [path]
        weight_map = read_json(path)["weight_map"]
        shard_names = sorted(set(weight_map.values()))
        shards = [resolve_file(name_or_path, shard, subfolder, **hub_options) for shard in shard_names]
        missing = [name for name, shard in zip(shard_names, shards) if shard is None]
        if missing:
            raise FileNotFoundError(f"{path} lists shards that are missing: {missing}; copy or download them too.")
        return shards
    message = f"{name_or_path} has no weights: expected one of {', '.join(WEIGHT_CANDIDATES)}."
    if (Path(name_or_path) / "export.json").is_file():
        message += (
            " It is an export directory (`bigtransfer export`): run it with predict, evaluate or pipeline(), "
            "and load PyTorch weights from the model it was exported from."
        )
    raise FileNotFoundError(message)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors or torch pickle file (the latter with weights_only, so no code runs)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError) as error:
        raise ValueError(
            f"Could not read weights from {path} ({type(error).__name__}: {error}); the file is truncated, corrupt "
            "or not a checkpoint: delete it and save or download it again."
        ) from None


def write_state_dict(state_dict: dict[str, torch.Tensor], path: Path, safe: bool = True) -> None:
    """Write weights atomically: the target is only replaced once the file is complete."""
    tensors = {key: value.detach().contiguous().cpu() for key, value in state_dict.items()}
    with atomic_path(path) as tmp:
        if safe:
            save_file(tensors, tmp, metadata={"format": "pt"})
        else:
            torch.save(tensors, tmp)


def adapt_prefix(
    state_dict: dict[str, torch.Tensor], model_keys: set[str], prefix: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Add or strip the base-model prefix so a classifier checkpoint loads into a bare model and back.

    Returns the adapted state dict and the head keys dropped because the target model has no head.
    """
    marker = prefix + "."
    model_has_prefix = any(key.startswith(marker) for key in model_keys)
    checkpoint_has_prefix = any(key.startswith(marker) for key in state_dict)
    if model_has_prefix and not checkpoint_has_prefix:
        return {marker + key: value for key, value in state_dict.items()}, []
    if checkpoint_has_prefix and not model_has_prefix:
        stripped = {key[len(marker) :]: value for key, value in state_dict.items() if key.startswith(marker)}
        dropped = [key for key in state_dict if not key.startswith(marker)]
        return stripped, dropped
    return state_dict, []


def _summarise(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" … and {len(keys) - limit} more" if len(keys) > limit else "")


def match_state_dict(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], ignore_mismatched_sizes: bool, source: str
) -> dict[str, torch.Tensor]:
    """Check a checkpoint against a model; return what to load, raising on any real disagreement."""
    expected = model.state_dict()
    state_dict, dropped_head = adapt_prefix(state_dict, set(expected), getattr(model, "base_model_prefix", "bit"))
    unexpected = [key for key in state_dict if key not in expected]
    unexpected_outside_head = [key for key in unexpected if not key.startswith(HEAD_PREFIX)]
    missing = [key for key in expected if key not in state_dict]
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    missing_outside_head = [key for key in missing if not key.startswith(HEAD_PREFIX)]
    if unexpected_outside_head or missing_outside_head:
        raise ValueError(
            f"The checkpoint {source} does not match this {type(model).__name__} config"
            + (f"; missing keys: {_summarise(missing_outside_head)}" if missing_outside_head else "")
            + (f"; unexpected keys: {_summarise(unexpected_outside_head)}" if unexpected_outside_head else "")
            + ". Load it with the config.json saved beside it (do not override depths/hidden_sizes/layer_type), "
            "or pick the model class that matches the checkpoint."
        )
    if mismatched and not ignore_mismatched_sizes:
        raise ValueError(
            f"Shapes in {source} differ from this model: {_summarise(mismatched)}. To put a new head on a "
            "pretrained body (e.g. 1000 → 10 classes), pass num_labels=… together with ignore_mismatched_sizes=True."
        )
    if mismatched:
        logger.warning("Newly initialised (shape differs from %s): %s", source, _summarise(mismatched))
        state_dict = {
            key: value for key, value in state_dict.items() if key in expected and value.shape == expected[key].shape
        }
    if missing:
        logger.warning("Newly initialised (absent from %s): %s", source, _summarise(missing))
    if dropped_head or unexpected:
        logger.info("Unused head weights in %s: %s", source, _summarise(dropped_head + unexpected))
    return {key: value for key, value in state_dict.items() if key in expected}


def resolve_dtype(torch_dtype: Any, state_dict: dict[str, torch.Tensor], config: Any) -> torch.dtype | None:
    """Interpret `torch_dtype`: None keeps float32, "auto" follows the checkpoint, strings name a dtype."""
    if torch_dtype is None:
        return None
    if torch_dtype == "auto":
        floating = [value.dtype for value in state_dict.values() if value.is_floating_point()]
        if floating:
            return floating[0]
        torch_dtype = getattr(config, "torch_dtype", None) or "float32"
    if isinstance(torch_dtype, str):
        resolved = getattr(torch, torch_dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"Unknown torch_dtype {torch_dtype!r}: use 'float32', 'float16', 'bfloat16' or 'auto'.")
        return resolved
    return torch_dtype
