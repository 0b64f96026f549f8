"""`from_pretrained` / `save_pretrained` for the BiT models, in the transformers style."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .checkpoints import match_state_dict, resolve_dtype, write_state_dict
from .hub import SAFE_WEIGHTS, TORCH_WEIGHTS, PushToHubMixin
from .sources import load_checkpoint


class PretrainedMixin(PushToHubMixin):
    """`from_pretrained` / `save_pretrained` in the transformers style, for BiT models."""

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        config: Any = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        subfolder: str = "",
        ignore_mismatched_sizes: bool = False,
        torch_dtype: Any = None,
        dtype: Any = None,
        **config_overrides: Any,
    ):
        """Load a checkpoint; keyword arguments override its config.

        Accepts a transformers directory or Hub id, an original BiT `.npz` file, a timm state dict
        (`.safetensors`/`.pth`) or `timm/<model>` Hub id, or a zoo name such as "BiT-M-R50x1".
        """
        hub_options = {
            "revision": revision,
            "cache_dir": cache_dir,
            "local_files_only": local_files_only,
            "token": token,
        }
        source = str(pretrained_model_name_or_path)
        if config is not None and config_overrides:
            raise TypeError(f"Pass either config= or config overrides, not both (got {sorted(config_overrides)}).")
        config, state_dict = load_checkpoint(
            pretrained_model_name_or_path, config, config_overrides, subfolder, hub_options
        )
        model = cls(config)
        to_load = match_state_dict(model, state_dict, ignore_mismatched_sizes, source)
        model.load_state_dict(to_load, strict=False)
        target_dtype = resolve_dtype(dtype if dtype is not None else torch_dtype, state_dict, config)
        if target_dtype is not None:
            model.to(target_dtype)
        model.config._name_or_path = source
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True) -> None:
        """Write config.json and model.safetensors (or pytorch_model.bin); each file appears whole or not at all."""
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise NotADirectoryError(f"{save_directory} is a file: save_pretrained needs a directory path.")
        save_directory.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        self.config.torch_dtype = str(next(self.parameters()).dtype).removeprefix("torch.")
        write_state_dict(
            self.state_dict(),
            save_directory / (SAFE_WEIGHTS if safe_serialization else TORCH_WEIGHTS),
            safe_serialization,
        )
        self.config.save_pretrained(save_directory)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameter count, as transformers counts it; `exclude_embeddings` leaves out nn.Embedding tables,
        which a BiT does not have (Trainer asks for it to estimate FLOPs)."""
        embeddings = (
            {id(m.weight) for m in self.modules() if isinstance(m, torch.nn.Embedding)} if exclude_embeddings else set()
        )
        return sum(
            p.numel() for p in self.parameters() if (p.requires_grad or not only_trainable) and id(p) not in embeddings
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype
