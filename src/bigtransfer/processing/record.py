"""The one record of how a checkpoint's images are prepared, which the processors, the models' `pretrained_cfg`,
the model card, training's saved processor and `bigtransfer info` all read: the processor's defaults, BiT's own
evaluation recipe, the settings that belong to a checkpoint (by the rule its weights load by, `locate`), and their
translation to and from timm's pretrained_cfg. Settings are plain dicts in BitImageProcessor's terms.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from .._util.files import read_json
from ..checkpoints.catalogue import UPSTREAM_224, Preprocessing, entry_for_file
from ..checkpoints.hub import CONFIG_NAME, PROCESSOR_CONFIG_NAME, hub_download, resolve_json
from ..checkpoints.sources import STATE_DICT_SUFFIXES, locate
from ..checkpoints.weights import read_state_dict_lazily

logger = logging.getLogger(__name__)


def bit_settings(size: int, crop: int | None = None, resample: int = 2, square: bool = False) -> dict[str, Any]:
    """BiT's evaluation preprocessing: resize to `size` (the shorter side, or both sides when `square`),
    center-crop to `crop` when given, values in [-1, 1] (mean and std 0.5). Without a crop, `crop_size` still
    records the resolution, instead of transformers' default 224."""
    return dict(
        size={"height": size, "width": size} if square else {"shortest_edge": size},
        do_center_crop=crop is not None,
        crop_size=crop or size,
        resample=resample,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def zoo_settings(preprocessing: Preprocessing) -> dict[str, Any]:
    """A catalogue entry's evaluation preprocessing as processor settings."""
    return bit_settings(preprocessing.size, preprocessing.crop, preprocessing.resample, preprocessing.square)


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


def saved_settings(folder: Path) -> dict[str, Any] | None:
    """The settings a model folder holds (its preprocessor_config.json), or None when it holds none."""
    settings_file = folder / PROCESSOR_CONFIG_NAME
    return read_json(settings_file) if settings_file.is_file() else None


def _local_preprocessing(path: Path, subfolder: str) -> dict[str, Any]:
    if path.is_file() and path.suffix == ".json":
        return read_json(path)
    if path.is_file() and path.suffix == ".npz":  # an unnamed original checkpoint: BiT's upstream evaluation
        entry = entry_for_file(path)
        return zoo_settings(entry.preprocessing if entry else UPSTREAM_224)
    if path.is_file() and path.suffix in STATE_DICT_SUFFIXES:
        settings = saved_settings(path.parent)
        settings = settings if settings is not None else timm_weights_preprocessing(path)
        if settings is not None:
            return settings
        path = path.parent
    settings = saved_settings(path / subfolder)
    if settings is None:
        raise FileNotFoundError(missing_preprocessing_message(path))
    return settings


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
    if kind in ("file", "folder", "bundled"):
        return _local_preprocessing(where, subfolder)
    if kind == "zoo":
        return zoo_settings(where.preprocessing)
    if kind == "timm":
        config_file = hub_download(where, CONFIG_NAME, "", **hub_options)
        return timm_processor_settings(read_json(config_file) if config_file else {})
    settings_file = resolve_json(where, PROCESSOR_CONFIG_NAME, subfolder, **hub_options)
    if settings_file is None:
        raise FileNotFoundError(missing_preprocessing_message(where))
    return read_json(settings_file)
