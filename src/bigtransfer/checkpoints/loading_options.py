"""Which keywords of `from_pretrained` are loading options rather than values: one split for the config, the model
and the processors, so that how a checkpoint was fetched is never saved with it (README: "options, never config
values")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Honoured: handed to huggingface_hub's `hf_hub_download` (its names), for every file of the load.
HUB_OPTIONS = ("revision", "cache_dir", "local_files_only", "token", "force_download")
# transformers' loading options that change nothing for a BiT read by bigtransfer: accepted, then dropped.
# (huggingface_hub ≥ 1 takes proxies from the environment; a BiT has no remote code, attention or adapters; both
# processors read the same file, so use_fast / backend choose nothing here.)
IGNORED_OPTIONS = (
    "trust_remote_code", "code_revision", "proxies", "resume_download", "mirror", "use_fast", "backend",
    "low_cpu_mem_usage", "attn_implementation", "use_safetensors", "weights_only", "disable_mmap", "from_tf",
    "from_flax", "offload_state_dict", "key_mapping", "adapter_kwargs", "adapter_name", "tqdm_class",
)  # fmt: skip
LOADING_OPTIONS = frozenset((*HUB_OPTIONS, *IGNORED_OPTIONS, "subfolder"))


def without_private_options(options: dict[str, Any]) -> dict[str, Any]:
    """`options` less those named with a leading underscore. transformers' loaders hand the classes they build
    their own bookkeeping that way (`_from_auto`, `_from_pipeline`, `_commit_hash`, `_adapter_model_path`, …),
    a set that changes between releases; no setting of ours is so named, so every entry point that transformers
    may call (config, model, processor) drops them all by this one rule rather than one name at a time."""
    return {key: value for key, value in options.items() if not key.startswith("_")}


def without_loading_options(values: dict[str, Any]) -> dict[str, Any]:
    """`values` less every loading option: what a config or processor may keep and save (a file that an earlier
    release wrote with `force_download` or `trust_remote_code` in it is cleaned on load)."""
    return {key: value for key, value in values.items() if key not in LOADING_OPTIONS}


@dataclass(frozen=True)
class LoadingOptions:
    """A `from_pretrained` call's keywords, split."""

    hub: dict[str, Any] = field(default_factory=dict)  # for the downloads (HUB_OPTIONS)
    subfolder: str = ""
    values: dict[str, Any] = field(default_factory=dict)  # the rest: config overrides, or processor settings


def split_loading_options(kwargs: dict[str, Any]) -> LoadingOptions:
    """Hub options, the subfolder, and the values; ignored options and private keywords are dropped."""
    hub = {key: value for key, value in kwargs.items() if key in HUB_OPTIONS}
    return LoadingOptions(hub, kwargs.get("subfolder") or "", without_loading_options(without_private_options(kwargs)))
