"""Where a checkpoint comes from: transformers directories and Hub repos, original .npz files, timm weights, and the
names of the catalogue.

Every source ends as (config settings, state dict in transformers' key layout): plain data, which the model
classes above turn into a BitConfig and weights. Labels are attached when the head's dataset is known. The same
rule decides for weights and for preprocessing: an existing local path always wins, and a name is looked up
(bundled model, zoo, timm id, Hub repo) only when no such path exists, as transformers does.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .._util.files import read_json
from .catalogue import UPSTREAM_224, ZooEntry, bundled_model, entry_for_file, find_entry, known_names
from .download import cache_dir, download
from .hub import CONFIG_NAME, PROCESSOR_CONFIG_NAME, hub_download, resolve_json, resolve_weight_files
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
    hub_options = hub_options or {}
    kind, where = locate(name_or_path)
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


# -- preprocessing -------------------------------------------------------------------------------------------------


def timm_processor_settings(pretrained: dict[str, Any]) -> dict[str, Any]:
    """timm's eval transform (resize to floor(size / crop_pct), center crop) in our processor's terms; defaults are
    timm's BiT `_cfg`: 224 px, crop_pct 0.875, bilinear, mean and std 0.5."""
    pretrained = pretrained.get("pretrained_cfg", pretrained)
    size = pretrained.get("input_size", [3, 224, 224])[-1]
    crop_pct = pretrained.get("crop_pct", 0.875)
    return dict(
        size={"shortest_edge": math.floor(size / crop_pct)},
        crop_size=size,
        resample={"bilinear": 2, "bicubic": 3, "nearest": 0}.get(pretrained.get("interpolation", "bilinear"), 2),
        image_mean=list(pretrained.get("mean", [0.5] * 3)),
        image_std=list(pretrained.get("std", [0.5] * 3)),
    )


# What a processor settings file means by a key it leaves out: transformers' BitImageProcessor defaults, which
# ProcessorBase (processing/base.py) takes too (tests/test_timm_surface.py holds the two together).
PROCESSOR_DEFAULTS = dict(
    do_resize=True, size={"shortest_edge": 224}, resample=3, do_center_crop=True, crop_size={"height": 224, "width": 224},
    do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=(0.48145466, 0.4578275, 0.40821073),
    image_std=(0.26862954, 0.26130258, 0.27577711), do_convert_rgb=True,
)  # fmt: skip
PIL_FILTER_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _square(value: Any) -> dict[str, int]:
    return {"height": value, "width": value} if isinstance(value, int) else dict(value)


def _crop_pct(crop: int, resize: int) -> float:
    """crop / resize, nudged down where float rounding would make timm's floor(crop / crop_pct) miss `resize`."""
    crop_pct = crop / resize
    while math.floor(crop / crop_pct) < resize:
        crop_pct = math.nextafter(crop_pct, 0.0)
    return crop_pct


def timm_pretrained_cfg(processor_settings: dict[str, Any], channels: int = 3) -> dict[str, Any]:
    """Processor settings as timm's data config (input_size, crop_pct, crop_mode, interpolation, mean, std), which
    `timm.data.resolve_model_data_config` and `create_transform` turn back into the same resize and crop: the
    inverse of `timm_processor_settings`. A shortest-edge resize without a crop keeps each image's aspect ratio,
    which timm cannot say: it becomes a square center crop of that edge."""
    settings = {**PROCESSOR_DEFAULTS, **processor_settings}
    size = {"shortest_edge": settings["size"]} if isinstance(settings["size"], int) else dict(settings["size"])
    squash = "height" in size  # a resize to an exact height and width, not keeping the aspect ratio
    resize = next(size[key] for key in ("height", "shortest_edge", "longest_edge", "max_height") if key in size)
    height, width = (size["height"], size["width"]) if squash else (resize, resize)
    crop_pct = 1.0
    if settings["do_center_crop"]:
        crop = _square(settings["crop_size"])
        height, width = crop["height"], crop["width"]
        crop_pct = _crop_pct(height, resize) if settings["do_resize"] else 1.0
    normalise = settings["do_normalize"]
    mean, std = (settings["image_mean"], settings["image_std"]) if normalise else (0.0, 1.0)
    return dict(
        input_size=(channels, height, width), crop_pct=crop_pct, crop_mode="squash" if squash else "center",
        interpolation=PIL_FILTER_NAMES[int(settings["resample"])],
        mean=tuple(mean) if isinstance(mean, (list, tuple)) else (float(mean),) * channels,
        std=tuple(std) if isinstance(std, (list, tuple)) else (float(std),) * channels,
    )  # fmt: skip


def timm_weights_preprocessing(path: Path) -> dict[str, Any] | None:
    """What timm evaluates a BiT weights file with, judged from its tensors' shapes (a safetensors header is read,
    not its data); None when the file is not timm's. A 1000-class head is taken for the ILSVRC-2012 fine-tune
    (448 px, 480 for R152x4, no crop, bilinear), with a warning: timm's distilled R50x1 and R152x2 teachers have
    the same shapes but are evaluated at 224 (or 384) px, bicubic."""
    shapes = {key: tuple(tensor.shape) for key, tensor in read_state_dict_lazily(path).items()}
    if "stem.conv.weight" not in shapes:
        return None
    head = shapes.get("head.fc.weight")
    if head is None or head[0] != 1000:
        return timm_processor_settings({})
    stage_blocks = {key.split(".")[1] + "." + key.split(".")[3] for key in shapes if key.startswith("stages.")}
    r152x4 = shapes["stem.conv.weight"][0] == 256 and len(stage_blocks) == 50  # 3+8+36+3 blocks, width ×4
    size = 480 if r152x4 else 448
    logger.warning(
        "%s: timm weights with a 1000-class head, taken for the ILSVRC-2012 fine-tune (%d px, bilinear). If they are "
        "timm's distilled or teacher weights (224 or 384 px, bicubic), save a preprocessor_config.json beside them.",
        path, size,
    )  # fmt: skip
    return timm_processor_settings({"input_size": [3, size, size], "crop_pct": 1.0})


def _local_preprocessing(path: Path, subfolder: str) -> dict[str, Any]:
    if path.is_file() and path.suffix == ".json":
        return read_json(path)
    if path.is_file() and path.suffix == ".npz":  # an unnamed original checkpoint: BiT's upstream evaluation
        entry = entry_for_file(path)
        return (entry.preprocessing if entry else UPSTREAM_224).processor_settings()
    if path.is_file() and path.suffix in STATE_DICT_SUFFIXES:
        beside = path.parent / PROCESSOR_CONFIG_NAME
        settings = read_json(beside) if beside.is_file() else timm_weights_preprocessing(path)
        if settings is not None:
            return settings
        path = path.parent
    settings_file = path / subfolder / PROCESSOR_CONFIG_NAME
    if not settings_file.is_file():
        raise FileNotFoundError(missing_preprocessing_message(path))
    return read_json(settings_file)


def missing_preprocessing_message(where: Any) -> str:
    return (
        f"{where} has no {PROCESSOR_CONFIG_NAME}, so how its images should be prepared is unknown. Save the processor "
        f"the model was trained with beside it (`processor.save_pretrained(DIR)`; for BiT's own recipe e.g. "
        "`BitImageProcessor(size={'height': 224, 'width': 224}, do_center_crop=False, resample=2, image_mean=0.5, "
        "image_std=0.5)`), or pass processor=… in Python."
    )


def preprocessing_settings(
    name_or_path: str | os.PathLike, subfolder: str = "", hub_options: dict | None = None
) -> dict[str, Any]:
    """The image processor settings that belong to a checkpoint, by the rule its weights load by (`locate`): a
    local directory's (or weights file's) own preprocessor_config.json, else what a bundled model, zoo name,
    original .npz or timm weights imply; a Hub repo's file. Raises FileNotFoundError, with the fix, when there is
    none."""
    hub_options = hub_options or {}
    kind, where = locate(name_or_path)
    if kind in ("file", "folder"):
        return _local_preprocessing(where, subfolder)
    if kind == "bundled":
        return read_json(where / PROCESSOR_CONFIG_NAME)
    if kind == "zoo":
        return where.preprocessing.processor_settings()
    if kind == "timm":
        config_file = hub_download(where, CONFIG_NAME, "", **hub_options)
        return timm_processor_settings(read_json(config_file) if config_file else {})
    settings_file = resolve_json(where, PROCESSOR_CONFIG_NAME, subfolder, **hub_options)
    if settings_file is None:
        raise FileNotFoundError(missing_preprocessing_message(where))
    return read_json(settings_file)
