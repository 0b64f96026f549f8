"""Weights IO: read and write state dicts safely, infer the architecture they hold, and match their keys to a model."""

from __future__ import annotations

import logging
import pickle
import re
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .._util.files import atomic_path

logger = logging.getLogger(__name__)

HEAD_PREFIX = "classifier."
BASE_PREFIX = "bit."
BIT_GROUPS = 32  # BitConfig.num_groups, which GroupNorm weights do not record
_STAGE_BLOCK = re.compile(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors or torch pickle file (the latter with weights_only, so no code runs)."""
    return materialize(read_state_dict_lazily(path))


DAMAGED = "the file is truncated, corrupt or not a checkpoint: delete it and save or download it again."


def damaged_zip_member(path: Path) -> str | None:
    """Why the zip archive at `path` (a torch file, a torch.export program) is damaged, or None when every member
    passes its CRC check: torch reads such archives without checking, so a flipped bit loads as a wrong weight."""
    try:
        with zipfile.ZipFile(path) as archive:
            failed = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:  # the last: an unknown method
        return f"not a readable zip archive: {error}"
    return None if failed is None else f"{failed} fails its CRC check"


def load_torch_file(path: Path, mmap: bool = False, verify: bool = False) -> Any:
    """A torch pickle file, unpickled with weights_only: tensors and plain containers only, never code. A file
    that holds anything else is refused as such (without torch's advice to lift the restriction, which would
    run whatever the file contains). `verify` checks every member's CRC first (the whole file is read)."""
    damage = damaged_zip_member(path) if verify and path.is_file() else None
    if damage:
        raise ValueError(f"Could not read {path} ({damage}); {DAMAGED}")
    try:
        with warnings.catch_warnings():  # torch's notice of a foreign pickle protocol would precede the refusal
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{path} holds Python objects or code besides tensors, so it was refused: a pickle file can run code "
            "when it is loaded. Use a safetensors file, or re-save the weights from a source you trust."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise ValueError(f"Could not read {path} ({type(error).__name__}: {error}); {DAMAGED}") from None


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


class LazyTensor:
    """A tensor of a safetensors file, known from the header only: a checkpoint's names and shapes are compared
    with the model before any data is read (a hostile 10-GB file costs nothing until then)."""

    def __init__(self, path: Path, key: str, shape: tuple[int, ...], dtype: torch.dtype):
        self.path, self.key, self.shape, self.dtype = path, key, torch.Size(shape), dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point


def read_state_dict_lazily(path: Path) -> dict[str, Any]:
    """A weights file's tensors by name: a safetensors file's as `LazyTensor`s (header only, read by
    `materialize`), a torch pickle's read whole (with weights_only)."""
    if path.suffix != ".safetensors":
        return load_torch_file(path)
    try:
        with safe_open(path, "pt") as weights:
            slices = {key: weights.get_slice(key) for key in weights.keys()}  # noqa: SIM118 (not iterable)
            return {key: LazyTensor(path, key, part.get_shape(), SAFETENSORS_DTYPES.get(part.get_dtype(), torch.float32))
                    for key, part in slices.items()}  # fmt: skip
    except (SafetensorError, OSError) as error:
        raise ValueError(f"Could not read weights from {path} ({error}); {DAMAGED}") from None


def materialize(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Read the data of every `LazyTensor` (each file opened once); tensors pass through."""
    by_file: dict[Path, list[str]] = {}
    for key, value in state_dict.items():
        if isinstance(value, LazyTensor):
            by_file.setdefault(value.path, []).append(key)
    loaded = dict(state_dict)
    for path, keys in by_file.items():
        try:
            with safe_open(path, "pt") as weights:
                loaded.update({key: weights.get_tensor(state_dict[key].key) for key in keys})
        except (SafetensorError, RuntimeError, OSError, ValueError) as error:
            raise ValueError(f"Could not read weights from {path} ({error}); {DAMAGED}") from None
    return loaded


def write_state_dict(state_dict: dict[str, torch.Tensor], path: Path, safe: bool = True) -> None:
    """Write weights atomically: the target is only replaced once the file is complete."""
    tensors = {key: value.detach().contiguous().cpu() for key, value in state_dict.items()}
    with atomic_path(path) as tmp:
        if safe:
            save_file(tensors, tmp, metadata={"format": "pt"})
        else:
            torch.save(tensors, tmp)


def config_from_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """BitConfig settings that a transformers-layout state dict implies (blocks per stage, widths, layout, head).

    GroupNorm weights do not record their group count, so `num_groups` is BiT's 32, and weights whose norms
    cannot be split into 32 groups are refused rather than guessed; the bottleneck layout is the
    ViT/DPT-hybrid one (SAME padding, dynamic stem padding), as for timm weights.
    """
    body = {key.removeprefix(BASE_PREFIX): value for key, value in state_dict.items()}
    if "embedder.convolution.weight" not in body:
        raise ValueError(
            "These weights are not a BiT state dict in transformers' layout (no embedder.convolution.weight): save "
            "the model's config.json beside them, or pass config=BitConfig(...)."
        )
    norm_widths = sorted({value.shape[0] for key, value in body.items() if ".norm" in f".{key}" and value.ndim == 1})
    if any(width % BIT_GROUPS for width in norm_widths):
        raise ValueError(
            f"These weights come without a config, and their GroupNorm widths {norm_widths} do not split into BiT's "
            f"{BIT_GROUPS} groups, so the architecture cannot be read from them: pass config=BitConfig(...) (the "
            "model's own), or save it beside the weights with `model.config.save_pretrained(DIR)`."
        )
    depths: dict[int, int] = {}
    for key in body:
        match = _STAGE_BLOCK.match(key)
        if match:
            depths[int(match[1])] = max(depths.get(int(match[1]), 0), int(match[2]) + 1)
    stem_width = body["embedder.convolution.weight"].shape[0]
    width_factor = max(1, stem_width // 64)
    preactivation = "norm.weight" in body
    head = body.get("classifier.1.weight")
    settings = dict(
        depths=[depths[stage] for stage in sorted(depths)],
        embedding_size=stem_width // width_factor,
        hidden_sizes=[
            body[f"encoder.stages.{s}.layers.0.conv3.weight"].shape[0] // width_factor for s in sorted(depths)
        ],
        width_factor=width_factor,
        num_channels=body["embedder.convolution.weight"].shape[1],
        layer_type="preactivation" if preactivation else "bottleneck",
        num_labels=0 if head is None else head.shape[0],
    )
    if not preactivation:
        settings.update(global_padding="same", embedding_dynamic_padding=True)
    return settings


def adapt_prefix(
    state_dict: dict[str, torch.Tensor], model_keys: set[str], prefix: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Add or strip the base-model prefix so a classifier checkpoint loads into a bare model and back.

    Returns the adapted state dict and the head keys dropped because the target model has no head.
    """
    marker = prefix + "."
    model_has_prefix = any(key.startswith(marker) for key in model_keys)
    checkpoint_has_prefix = any(key.startswith(marker) for key in state_dict)
    if model_has_prefix and not checkpoint_has_prefix:  # keys the model has no place for keep their own names
        return {(marker + key if marker + key in model_keys else key): value for key, value in state_dict.items()}, []
    if checkpoint_has_prefix and not model_has_prefix:
        stripped = {key[len(marker) :]: value for key, value in state_dict.items() if key.startswith(marker)}
        dropped = [key for key in state_dict if not key.startswith(marker)]
        return stripped, dropped
    return state_dict, []


def _summarise(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" … and {len(keys) - limit} more" if len(keys) > limit else "")


class CheckpointMismatchError(ValueError, RuntimeError):
    """A checkpoint whose tensors do not fit the model. A ValueError as everywhere in bigtransfer, and a
    RuntimeError as transformers raises for a size mismatch, so either `except` catches it."""


def match_state_dict(
    model: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    ignore_mismatched_sizes: bool,
    source: str,
    strict: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Check a checkpoint against a model; return what to load and transformers' loading info (the sets of
    missing, unexpected and mismatched keys). With `strict`, body weights that are missing or unexpected raise
    (a wrong checkpoint, not a new head); without it they are reported, and missing ones stay initialised."""
    expected = model.state_dict()
    state_dict, dropped_head = adapt_prefix(state_dict, set(expected), getattr(model, "base_model_prefix", "bit"))
    unexpected = [key for key in state_dict if key not in expected]
    unexpected_outside_head = [key for key in unexpected if not key.startswith(HEAD_PREFIX)]
    missing = [key for key in expected if key not in state_dict]
    shapes = {
        key: (state_dict[key].shape, expected[key].shape)
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    }
    mismatched = [f"{key}: checkpoint {tuple(ours)} vs model {tuple(theirs)}" for key, (ours, theirs) in shapes.items()]
    missing_outside_head = [key for key in missing if not key.startswith(HEAD_PREFIX)]
    if strict and (unexpected_outside_head or missing_outside_head):
        raise CheckpointMismatchError(
            f"The checkpoint {source} does not match this {type(model).__name__} config"
            + (f"; missing keys: {_summarise(missing_outside_head)}" if missing_outside_head else "")
            + (f"; unexpected keys: {_summarise(unexpected_outside_head)}" if unexpected_outside_head else "")
            + ". Load it with the config.json saved beside it (do not override depths/hidden_sizes/layer_type), "
            "or pick the model class that matches the checkpoint; output_loading_info=True loads it anyway and "
            "returns the keys that did not fit."
        )
    if mismatched and not ignore_mismatched_sizes:
        raise CheckpointMismatchError(
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
        logger.log(
            logging.WARNING if unexpected_outside_head else logging.INFO,
            "Unused weights in %s: %s",
            source,
            _summarise(dropped_head + unexpected),
        )
    # sets, as transformers 5 reports them (its tests compare with set() and call set methods)
    info = {"missing_keys": set(missing), "unexpected_keys": set(dropped_head + unexpected), "error_msgs": [],
            "mismatched_keys": {(key, tuple(shapes[key][0]), tuple(shapes[key][1])) for key in shapes}}  # fmt: skip
    return {key: value for key, value in state_dict.items() if key in expected}, info


def as_dtype(value: Any) -> torch.dtype | None:
    """A dtype given as a torch dtype or by name ("float16"; transformers 4 wrote "torch.float16")."""
    if value is None or isinstance(value, torch.dtype):
        return value
    resolved = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"Unknown dtype {value!r}: use 'float32', 'float16' or 'bfloat16' ('auto' when loading).")
    return resolved


def resolve_dtype(torch_dtype: Any, state_dict: dict[str, torch.Tensor], config: Any) -> torch.dtype | None:
    """Interpret `torch_dtype`: None keeps float32, "auto" follows the checkpoint, strings name a dtype."""
    if torch_dtype is None:
        return None
    if torch_dtype == "auto":
        floating = [value.dtype for value in state_dict.values() if value.is_floating_point()]
        if floating:
            return floating[0]
        torch_dtype = getattr(config, "dtype", None) or torch.float32
    return as_dtype(torch_dtype)
