"""`from_pretrained` / `save_pretrained` for the BiT models, in the transformers style."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoints.hub import SAFE_INDEX, SAFE_WEIGHTS, TORCH_INDEX, TORCH_WEIGHTS, PushToHubMixin
from ..checkpoints.loading_options import IGNORED_OPTIONS, split_loading_options, without_private_options
from ..checkpoints.sources import load_checkpoint
from ..checkpoints.weights import match_state_dict, materialize, resolve_dtype, write_state_dict
from .config import BitConfig


def _placement(device_map: Any) -> torch.device | None:
    """transformers' `device_map` for a single-device model: a device, or {"": device}."""
    if device_map is None or device_map == "auto":
        return None
    if isinstance(device_map, dict):
        if set(device_map) != {""}:
            raise ValueError(
                f"device_map={device_map!r}: a BiT loads onto one device; pass {{'': 'cuda:0'}} or a device."
            )
        device_map = device_map[""]
    return torch.device(device_map if not isinstance(device_map, int) else f"cuda:{device_map}")


class PretrainedMixin(PushToHubMixin):
    """`from_pretrained` / `save_pretrained` in the transformers style, for BiT models."""

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None,
        *model_args: Any,
        config: BitConfig | str | os.PathLike | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
        subfolder: str = "",
        ignore_mismatched_sizes: bool = False,
        torch_dtype: Any = None,
        dtype: Any = None,
        output_loading_info: bool = False,
        device_map: Any = None,
        **kwargs: Any,
    ):
        """Load a checkpoint; other keyword arguments override its config.

        Accepts a transformers directory or Hub id, an original BiT `.npz` file, a timm state dict
        (`.safetensors`/`.pth`) or `timm/<model>` Hub id, or a name such as "BiT-M-R50x1". As in transformers,
        `state_dict=` supplies the weights (with `config=`, no checkpoint is read at all: pass None as the path),
        and `output_loading_info=True` also returns the missing, unexpected and mismatched keys.

        Body weights that are missing from the checkpoint, or that the model has no place for, raise: the
        checkpoint is for another architecture, and a model left half-random would be silently wrong. With
        `output_loading_info=True` the caller gets the keys back instead, and the load goes ahead as in
        transformers (missing weights stay initialised). A new head is never an error.
        """
        if torch.empty(0).device.type == "meta":  # inside `with torch.device("meta")` (any torch ≥ 2.0)
            raise RuntimeError(
                "You are using `from_pretrained` with a meta device context manager (`with torch.device('meta')`): "
                "the weights would be discarded. Call from_pretrained outside it; to build an empty model for "
                f"its shapes, use `{cls.__name__}(config)` inside it."
            )
        if model_args:
            raise TypeError(f"{cls.__name__}.from_pretrained takes no extra positional arguments, got {model_args}.")
        options = split_loading_options(kwargs)
        hub_options, overrides = options.hub, options.values
        if isinstance(config, (str, os.PathLike)):
            config = BitConfig.from_pretrained(config, subfolder=subfolder, **hub_options)
        if config is not None and overrides:
            raise TypeError(f"Pass either config= or config overrides, not both (got {sorted(overrides)}).")
        if pretrained_model_name_or_path is None and (config is None or state_dict is None):
            raise ValueError(
                "from_pretrained(None, …) needs both config= and state_dict=; otherwise pass a checkpoint."
            )
        if pretrained_model_name_or_path is None or (state_dict is not None and config is not None):
            settings, weights = None, state_dict
        else:
            settings, weights = load_checkpoint(pretrained_model_name_or_path, subfolder, hub_options)
            weights = state_dict if state_dict is not None else weights
        config = config if config is not None else BitConfig.from_dict(settings, **overrides)
        source = str(pretrained_model_name_or_path) if pretrained_model_name_or_path is not None else "state_dict"
        with torch.device("meta"):  # shapes only: a config that disagrees with the weights allocates nothing
            model = cls(config)
        to_load, loading_info = match_state_dict(
            model, weights, ignore_mismatched_sizes, source, strict=not output_loading_info
        )
        model._load_into_empty(materialize(to_load))
        target_dtype = resolve_dtype(dtype if dtype is not None else torch_dtype, weights, config)
        if target_dtype is not None:
            model.to(target_dtype)
        model.config.dtype = model.dtype
        device = _placement(device_map)
        if device is not None:
            model.to(device)
        model.config._name_or_path = source
        model.eval()
        return (model, loading_info) if output_loading_info else model

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        model_card: bool = False,
        repo_id: str | None = None,
        **_: Any,
    ) -> list:
        """Write config.json and model.safetensors (or pytorch_model.bin), each whole or not at all; weight files
        of the other format left by an earlier save are removed, so what loads is what was saved. `model_card`
        also writes README.md (as `push_to_hub` does), unless the folder has a README.md of its user's; its
        snippets load the Hub repo `repo_id` when the folder is bound for one (else the folder itself)."""
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise NotADirectoryError(f"{save_directory} is a file: save_pretrained needs a directory path.")
        save_directory.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        self.config.dtype = next(self.parameters()).dtype
        weights = save_directory / (SAFE_WEIGHTS if safe_serialization else TORCH_WEIGHTS)
        write_state_dict(self.state_dict(), weights, safe_serialization)
        _remove_stale_weights(save_directory, keep=weights.name)
        self.config.save_pretrained(save_directory)
        card = self._write_model_card(save_directory, repo_id=repo_id) if model_card else []
        return [str(weights), str(save_directory / "config.json"), *card]

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameter count, as transformers counts it; `exclude_embeddings` leaves out nn.Embedding tables,
        which a BiT does not have (Trainer asks for it to estimate FLOPs)."""
        embeddings = (
            {id(m.weight) for m in self.modules() if isinstance(m, torch.nn.Embedding)} if exclude_embeddings else set()
        )
        return sum(
            p.numel() for p in self.parameters() if (p.requires_grad or not only_trainable) and id(p) not in embeddings
        )

    @classmethod
    def _from_config(cls, config: BitConfig, **kwargs: Any):
        """A new model of `config`, as transformers' `AutoModel.from_config` builds one, in `dtype` (default: the
        config's)."""
        kwargs = without_private_options(kwargs)
        dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
        dtype = resolve_dtype(dtype if dtype is not None else torch_dtype, {}, config) or config.dtype
        unknown = sorted(set(kwargs) - set(IGNORED_OPTIONS))
        if unknown:
            raise TypeError(f"{cls.__name__}._from_config got unexpected options {unknown}.")
        model = cls(config)
        if dtype is not None:
            model.to(dtype)
        config.dtype = model.dtype
        return model

    def _load_into_empty(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Give a model built on the meta device its tensors: the checkpoint's values, and the init a freshly built
        module gets (`reset_parameters`, then the model's `_init_weights`) for the modules whose tensors the
        checkpoint lacks (a new head; keys `output_loading_info` let through; non-persistent buffers) — nothing is
        drawn for weights that are then overwritten. Initialised first and loaded last, so a tensor that two names
        share (tied) ends with the checkpoint's value."""
        tied = _shared_tensor_names(self)
        self.to_empty(device="cpu")  # one new tensor per module: a tensor that two modules shared is two now
        for first, *others in tied:
            tensor = getattr(*_owner(self, first))
            for name in others:
                setattr(*_owner(self, name), tensor)
        persistent = set(self.state_dict())
        fresh = (persistent - set(state_dict)) | ({name for name, _ in self.named_buffers()} - persistent)
        for prefix, module in self.named_modules():
            owned = itertools.chain(module.named_parameters(recurse=False), module.named_buffers(recurse=False))
            if any(f"{prefix}.{name}".lstrip(".") in fresh for name, _ in owned):
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                self._init_weights(module)
        self.load_state_dict(state_dict, strict=False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def _shared_tensor_names(model: torch.nn.Module) -> list[list[str]]:
    """The names of each parameter or buffer that several modules hold (tied weights), one list per tensor."""
    names: dict[int, list[str]] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(tensor), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def _owner(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    """The module that holds the tensor `name` (e.g. "bit.norm.weight"), and its name there."""
    parent, _, leaf = name.rpartition(".")
    return model.get_submodule(parent), leaf


def _remove_stale_weights(directory: Path, keep: str) -> None:
    """Weight files (and their shards) that a checkpoint directory held before this save: loading prefers
    safetensors and shards, so a leftover of either would be loaded instead of the new weights."""
    stale = [directory / name for name in (SAFE_WEIGHTS, TORCH_WEIGHTS, SAFE_INDEX, TORCH_INDEX) if name != keep]
    stale += [path for pattern in ("model-*-of-*.safetensors", "pytorch_model-*-of-*.bin")
              for path in directory.glob(pattern)]  # fmt: skip
    for path in stale:
        path.unlink(missing_ok=True)
