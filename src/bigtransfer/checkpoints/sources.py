"""Where a checkpoint comes from: transformers directories and Hub repos, original .npz files, timm weights, and the
names of the catalogue.

Every source ends as (config settings, state dict in transformers' key layout): plain data, which the model
classes above turn into a BitConfig and weights. Labels are attached when the head's dataset is known. One rule,
`locate`, decides for the config, the weights and the preprocessing (processing/record.py): an existing local path
always wins, and a name is looked up (bundled model, zoo, timm id, Hub repo) only when no such path exists, as
transformers does.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .._util.files import read_json
from .catalogue import ZooEntry, bundled_model, entry_for_file, find_entry, known_names
from .download import cache_dir, download
from .hub import CONFIG_NAME, hub_download, resolve_config_file, resolve_json, resolve_weight_files
from .labels import id2label_for
from .npz import config_from_npz, npz_to_bit_state_dict, read_npz
from .timm import config_from_timm_state_dict, is_timm_state_dict, timm_to_bit_state_dict
from .weights import config_from_state_dict, materialize, read_state_dict_lazily

logger = logging.getLogger(__name__)

STATE_DICT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
TIMM_PREFIX = "timm/"
Loaded = tuple[dict[str, Any], dict[str, torch.Tensor]]  # (BitConfig settings, state dict)


def _with_labels(settings: dict[str, Any], label_set: str | None) -> dict[str, Any]:
    """The class names of the head's dataset, when known and the head has that many outputs."""
    names = id2label_for(settings["num_labels"], label_set)
    return {**settings, "id2label": names} if names else settings


def _from_npz(path: Path, entry: ZooEntry | None) -> Loaded:
    arrays = read_npz(path)
    return _with_labels(config_from_npz(arrays), entry and entry.label_set), npz_to_bit_state_dict(arrays)


def _from_cached_npz(path: Path, entry: ZooEntry) -> Loaded:
    """A downloaded zoo file that does not parse (an HTML error page saved by a proxy, a damaged copy) is removed
    from the cache, so the next call downloads it again instead of failing forever."""
    try:
        return _from_npz(path, entry)
    except ValueError as error:
        path.unlink(missing_ok=True)
        raise ValueError(
            f"{error} It was removed from the cache: the next load downloads {entry.name} again."
        ) from None


def _inferred(state_dict: dict[str, torch.Tensor], where: Any) -> dict[str, Any]:
    settings = config_from_state_dict(state_dict)
    logger.warning(
        "%s holds weights without a config.json: the architecture was read from the weights, assuming BiT's 32 "
        "GroupNorm groups (weights do not record them), and the labels are generic (LABEL_0 …). Save the config "
        "beside them with `model.config.save_pretrained(DIR)`, or pass config=, for a model built otherwise.",
        where,
    )
    return settings


def _from_state_dict_file(path: Path) -> Loaded:
    state_dict = read_state_dict_lazily(path)
    if is_timm_state_dict(state_dict):  # renamed and reshaped: read now
        state_dict = materialize(state_dict)
        return _with_labels(config_from_timm_state_dict(state_dict), None), timm_to_bit_state_dict(state_dict)
    beside = path.parent / CONFIG_NAME
    return (read_json(beside) if beside.is_file() else _inferred(state_dict, path)), state_dict


def _from_timm_hub(repo_id: str, hub_options: dict) -> Loaded:
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = hub_download(repo_id, filename, "", **hub_options)
        if path is not None:
            return _from_state_dict_file(path)
    raise FileNotFoundError(f"{repo_id} has neither model.safetensors nor pytorch_model.bin.")


def _from_transformers(name_or_path: str | os.PathLike, subfolder: str, hub_options: dict) -> Loaded:
    """A transformers directory or Hub repo; weights without a config (as `Trainer.save_model` writes for models
    that are not transformers' own classes) get the architecture their tensors imply."""
    config_file = resolve_json(name_or_path, CONFIG_NAME, subfolder, **hub_options)
    state_dict: dict[str, torch.Tensor] = {}
    for path in resolve_weight_files(name_or_path, subfolder, **hub_options):
        state_dict.update(read_state_dict_lazily(path))  # data read only once names and shapes fit the model
    settings = read_json(config_file) if config_file is not None else _inferred(state_dict, name_or_path)
    return settings, state_dict


def zoo_file(entry: ZooEntry) -> Path:
    """The entry's .npz in the local cache, downloaded (with a progress bar) on first use."""
    return download(entry.url, cache_dir() / entry.file, size=entry.size_bytes, sha256=entry.sha256)


def unknown_name_error(name: str) -> ValueError:
    """A name that is neither a local path nor in the catalogue, with the closest known names."""
    lowered = {known.lower(): known for known in known_names()}
    close = [lowered[match] for match in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)]
    return ValueError(
        f"Unknown BiT model name {name!r}"
        + (f"; did you mean {', '.join(close)}?" if close else ".")
        + " `bigtransfer models` lists the names; a local directory or file is used when the path exists."
    )


def _is_catalogue_style(name: str) -> bool:
    """A bare name (no folder) in the style of the catalogue's, e.g. a misspelt 'BiT-M-R50x1' or 'bit-tiny-glyph'."""
    return "/" not in name and os.sep not in name and name.lower().startswith("bit")


class Source(NamedTuple):
    """What a name or path is, by the one rule weights and preprocessing share."""

    kind: str  # "file", "folder", "bundled", "zoo", "timm" (a timm/… Hub id) or "hub" (a transformers repo)
    where: Any  # the Path, the ZooEntry, or the Hub id


def locate(name_or_path: str | os.PathLike) -> Source:
    """An existing local path always wins; a name is looked up (bundled model, zoo, timm id, Hub repo) only
    when no such path exists. A misspelt catalogue-style name is refused with the closest known names."""
    name, path = str(name_or_path), Path(name_or_path).expanduser()
    if path.exists():
        return Source("file" if path.is_file() else "folder", path)
    bundled = bundled_model(name)
    if bundled is not None:
        return Source("bundled", bundled)
    entry = find_entry(name)
    if entry is not None:
        return Source("zoo", entry)
    if path.suffix in (".npz", *STATE_DICT_SUFFIXES):
        raise FileNotFoundError(
            f"{path} does not exist: check the path (zoo models are named without a suffix, e.g. BiT-M-R50x1; "
            "`bigtransfer models` lists them)."
        )
    if _is_catalogue_style(name):
        raise unknown_name_error(name)
    return Source("timm" if name.startswith(TIMM_PREFIX) else "hub", name)


def load_checkpoint(name_or_path: str | os.PathLike, subfolder: str = "", hub_options: dict | None = None) -> Loaded:
    """(BitConfig settings, transformers-layout state dict) of anything `from_pretrained` takes."""
    return _load(locate(name_or_path), subfolder, hub_options or {})


def checkpoint_settings(
    name_or_path: str | os.PathLike, subfolder: str = "", hub_options: dict | None = None
) -> dict[str, Any]:
    """The BitConfig settings of anything `from_pretrained` takes, by the rule its weights load by (`locate`), so
    that a config and its model never come from two places: a folder's, bundled model's or Hub repo's config.json
    (or a .json file itself, which is the only kind of source that needs one); else what an .npz, a weights file,
    a zoo name or a timm id holds (their weights are read, a safetensors file's header only)."""
    hub_options = hub_options or {}
    source = locate(name_or_path)
    if source.kind in ("folder", "bundled", "hub") or (source.kind == "file" and source.where.suffix == ".json"):
        return read_json(resolve_config_file(source.where, subfolder, **hub_options))
    return _load(source, subfolder, hub_options)[0]


def _load(source: Source, subfolder: str, hub_options: dict) -> Loaded:
    kind, where = source
    if kind == "file":
        if where.suffix == ".npz":
            return _from_npz(where, entry_for_file(where))
        if where.suffix in STATE_DICT_SUFFIXES:
            return _from_state_dict_file(where)
        raise ValueError(
            f"{where} is not a checkpoint file (.npz, .safetensors, .pth, .bin): pass its directory, or the weights file."
        )
    if kind == "zoo":
        return _from_cached_npz(zoo_file(where), where)
    if kind == "timm":
        return _from_timm_hub(where, hub_options)
    return _from_transformers(where, subfolder, hub_options)  # a folder, a bundled model, a Hub repo
