"""The extra keywords transformers' `AutoConfig` hands a config's `from_dict`, answered as transformers' own
configs answer them, so that `bigtransfer.register()` can let the Auto classes build our BitConfig."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..checkpoints.loading_options import without_private_options

# Passed on to the model's from_pretrained by AutoModel, which re-adds them there; a torch.dtype cannot be saved.
MODEL_ONLY = ("dtype", "torch_dtype")


@dataclasses.dataclass(frozen=True)
class AutoCall:
    """What an Auto call asked of `from_dict` besides config values."""

    name_or_path: str | None  # the checkpoint read, kept as `config._name_or_path` (as transformers keeps it)
    unused: dict[str, Any] | None  # the options the config did not take, when the caller asked for them back

    def result(self, config: Any) -> Any:
        if self.name_or_path is not None:
            config._name_or_path = str(self.name_or_path)
        return (config, self.unused) if self.unused is not None else config


def split_auto_call(overrides: dict[str, Any], config_fields: set[str]) -> tuple[dict[str, Any], AutoCall]:
    """(config overrides, the rest of the call). Asked to return unused keywords (`return_unused_kwargs`), the
    config takes only its own fields — `config_fields` — and leaves the model's options (ignore_mismatched_sizes,
    device_map, dtype, …) to the model, as transformers' configs do; otherwise every keyword is a config value."""
    overrides = without_private_options(overrides)
    name_or_path = overrides.pop("name_or_path", None)
    if not overrides.pop("return_unused_kwargs", False):
        return overrides, AutoCall(name_or_path, None)
    taken = {key: value for key, value in overrides.items() if key in config_fields and key not in MODEL_ONLY}
    unused = {key: value for key, value in overrides.items() if key not in taken}
    return taken, AutoCall(name_or_path, unused)
