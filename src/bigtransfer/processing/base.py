"""What both image processors share: settings, their validation and JSON form, output sizes, the batch container."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
import torch.nn.functional as F

from .._util.files import atomic_write_text, read_json
from .._util.limits import EnvLimit
from ..checkpoints.hub import PROCESSOR_CONFIG_NAME, PushToHubMixin
from ..checkpoints.loading_options import split_loading_options, without_loading_options, without_private_options
from .record import PROCESSOR_DEFAULTS, preprocessing_settings
from .transform import EvalTransform, Resampling

SIZE_KEY_SETS = (
    {"height", "width"},
    {"shortest_edge"},
    {"shortest_edge", "longest_edge"},
    {"longest_edge"},
    {"max_height", "max_width"},
)


# Far beyond BiT's largest resolution (480; a 4096² float32 image is 200 MB), far below what exhausts memory: a
# preprocessor_config.json asking for 100,000 × 100,000 allocated 9 GB per image before any check.
SIDE_ENV = "BIGTRANSFER_MAX_INPUT_SIDE"
MAX_INPUT_SIDE = EnvLimit(SIDE_ENV, 4096)


def size_dict(size: Any, param_name: str, default_to_square: bool) -> dict[str, int] | None:
    """transformers' coercion: int → shortest edge (or square), (h, w) → height/width; keys and sizes validated."""
    if size is None:
        return None
    if isinstance(size, int):
        size = {"height": size, "width": size} if default_to_square else {"shortest_edge": size}
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        size = {"height": int(size[0]), "width": int(size[1])}
    elif not isinstance(size, dict):
        raise ValueError(f"{param_name} must be an int, a (height, width) pair or a dict, got {size!r}.")
    size = {key: value for key, value in size.items() if value is not None}
    if set(size) not in SIZE_KEY_SETS:
        raise ValueError(
            f"{param_name} must have one of the following set of keys: {tuple(sorted(s) for s in SIZE_KEY_SETS)}, "
            f"got {list(size)}."
        )
    if any(not isinstance(v, int) or v < 1 for v in size.values()):
        raise ValueError(f"{param_name} values must be positive ints, got {size}.")
    if max(size.values()) > (side_limit := MAX_INPUT_SIDE()):
        raise ValueError(
            f"{param_name} {size} is beyond the limit of {side_limit:,} pixels a side: a preprocessor_config.json "
            f"that asks for it is damaged or not meant for this model; set {SIDE_ENV} to allow larger inputs."
        )
    return dict(size)


def output_layout(data_format: str | None) -> str:
    """The output's channel layout: channels_first, also for None (transformers' default, as 5.x treats it)."""
    if data_format not in (None, "channels_first", "channels_last"):
        raise ValueError(f"data_format must be 'channels_first', 'channels_last' or None, got {data_format!r}.")
    return data_format or "channels_first"


def parallel_map(function: Callable[[Any], Any], items: list[Any], workers: int | None = None) -> list[Any]:
    """`map` over a thread pool: Pillow releases the GIL while decoding and resizing, so threads scale."""
    workers = workers or min(8, os.cpu_count() or 1, len(items))
    if workers <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(function, items))


def _own_copy(value: Any) -> Any:
    """A list of its own for every processor: changing one processor's mean never changes another's."""
    return list(value) if isinstance(value, (list, tuple)) else value


class BitImageProcessorKwargs(TypedDict, total=False):
    """The keyword arguments a processor takes, at construction and per call: transformers 5's typed
    declaration (`valid_kwargs`), which its Auto classes and processor tests read."""

    do_convert_rgb: bool | None
    do_resize: bool | None
    size: dict[str, int] | int | None
    default_to_square: bool
    crop_size: dict[str, int] | int | None
    resample: int | None
    do_rescale: bool | None
    rescale_factor: float | None
    do_normalize: bool | None
    image_mean: float | list[float] | None
    image_std: float | list[float] | None
    do_pad: bool | None
    pad_size: dict[str, int] | None
    do_center_crop: bool | None
    data_format: str | None
    input_data_format: str | None
    return_tensors: str | None


def pad_images(images: list, pad_size: dict[str, int] | None) -> list:
    """Zero-pad C×H×W images (arrays or tensors) at the bottom and right to `pad_size`, or to the largest
    image of the batch, after normalisation, as transformers pads."""
    height = pad_size["height"] if pad_size else max(image.shape[-2] for image in images)
    width = pad_size["width"] if pad_size else max(image.shape[-1] for image in images)
    too_big = [tuple(image.shape[-2:]) for image in images if image.shape[-2] > height or image.shape[-1] > width]
    if too_big:
        raise ValueError(f"pad_size {height}×{width} is smaller than images of size {too_big}: enlarge pad_size.")
    return [
        F.pad(image, (0, width - image.shape[-1], 0, height - image.shape[-2]))
        if isinstance(image, torch.Tensor)
        else np.pad(image, ((0, 0), (0, height - image.shape[-2]), (0, width - image.shape[-1])))
        for image in images
    ]


class BatchFeature(dict):
    """`batch["pixel_values"]` or `batch.pixel_values`; `.to(device)` moves tensors."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args: Any, **kwargs: Any) -> BatchFeature:
        return BatchFeature({k: v.to(*args, **kwargs) if isinstance(v, torch.Tensor) else v for k, v in self.items()})


def stack_output(images: list | torch.Tensor, return_tensors: str | None) -> Any:
    """A list of per-image arrays (return_tensors=None), or one stacked "np"/"pt" batch."""
    if isinstance(images, torch.Tensor):  # already one batch
        if return_tensors == "pt":
            return images
        images = list(images)
    if return_tensors is None:
        return images
    if return_tensors not in ("np", "pt"):
        raise ValueError(f"return_tensors must be None, 'np' or 'pt', got {return_tensors!r}.")
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(
            f"Cannot stack images of different sizes {sorted(shapes)} into one tensor: enable center cropping, "
            "resize to a fixed {'height', 'width'}, or pass return_tensors=None for a list."
        )
    if isinstance(images[0], torch.Tensor):
        stacked = torch.stack(images)
        return stacked if return_tensors == "pt" else stacked.cpu().numpy()
    stacked = np.stack(images)
    return torch.from_numpy(stacked) if return_tensors == "pt" else stacked


class ProcessorBase(PushToHubMixin):
    """Settings with transformers' names and defaults; per-call keyword arguments override them."""

    model_input_names = ["pixel_values"]
    _setting_names = (
        "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
        "do_normalize", "image_mean", "image_std", "do_convert_rgb", "do_pad", "pad_size",
    )  # fmt: skip
    # transformers' BiT defaults (OpenAI CLIP's mean and std), as class attributes where transformers 5 declares
    # them. A switch passed explicitly as None stays None (off), also through save and load; a None size, crop
    # size, mean, std or filter means the default.
    do_resize = PROCESSOR_DEFAULTS["do_resize"]
    size = PROCESSOR_DEFAULTS["size"]
    default_to_square = False
    resample = Resampling(PROCESSOR_DEFAULTS["resample"])
    do_center_crop = PROCESSOR_DEFAULTS["do_center_crop"]
    crop_size = PROCESSOR_DEFAULTS["crop_size"]
    do_rescale = PROCESSOR_DEFAULTS["do_rescale"]
    rescale_factor = PROCESSOR_DEFAULTS["rescale_factor"]
    do_normalize = PROCESSOR_DEFAULTS["do_normalize"]
    image_mean = PROCESSOR_DEFAULTS["image_mean"]
    image_std = PROCESSOR_DEFAULTS["image_std"]
    do_convert_rgb = PROCESSOR_DEFAULTS["do_convert_rgb"]
    do_pad = None
    pad_size = None

    def __init__(
        self,
        do_resize: bool | None = do_resize,
        size: Any = None,
        resample: int | None = None,
        do_center_crop: bool | None = do_center_crop,
        crop_size: Any = None,
        do_rescale: bool | None = do_rescale,
        rescale_factor: float = rescale_factor,
        do_normalize: bool | None = do_normalize,
        image_mean: float | list[float] | None = None,
        image_std: float | list[float] | None = None,
        do_convert_rgb: bool | None = do_convert_rgb,
        do_pad: bool | None = None,
        pad_size: Any = None,
        default_to_square: bool = default_to_square,
        **kwargs: Any,
    ):
        defaults = type(self)
        self.default_to_square = default_to_square
        self.do_resize = do_resize
        self.size = size_dict(defaults.size if size is None else size, "size", default_to_square)
        self.resample = Resampling(defaults.resample if resample is None else resample)
        self.do_center_crop = do_center_crop
        self.crop_size = size_dict(defaults.crop_size if crop_size is None else crop_size, "crop_size", True)
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = _own_copy(defaults.image_mean if image_mean is None else image_mean)
        self.image_std = _own_copy(defaults.image_std if image_std is None else image_std)
        self.do_convert_rgb = do_convert_rgb
        self.do_pad = do_pad
        self.pad_size = size_dict(pad_size, "pad_size", True)
        kwargs.pop("image_processor_type", None)
        kwargs.pop("processor_class", None)
        # Options of a call given at construction (return_tensors="pt" …) are that processor's call defaults,
        # as in transformers 5; not settings, so not saved.
        self.call_defaults = {key: kwargs.pop(key) for key in self._call_options() if key in kwargs}
        # Fields a newer transformers writes, kept for the JSON round trip; loading options (use_fast,
        # force_download …) and private ones (`_from_auto` …) are the loader's, not settings.
        self.extra = without_loading_options(without_private_options(kwargs))

    # -- per-call settings ---------------------------------------------------------------------
    def settings(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """This call's settings: instance values with the per-call overrides, validated."""
        unknown = sorted(set(overrides) - set(self._setting_names) - set(self._call_options()))
        if unknown:
            warnings.warn(
                f"The following named arguments are not valid for `{type(self).__name__}.preprocess` and were "
                f"ignored: {', '.join(repr(u) for u in unknown)}",
                stacklevel=3,
            )
        merged = {name: getattr(self, name) for name in self._setting_names}
        merged.update({k: v for k, v in overrides.items() if k in self._setting_names and v is not None})
        square = overrides.get("default_to_square", self.default_to_square)
        merged["size"] = size_dict(merged["size"], "size", square)
        merged["crop_size"] = size_dict(merged["crop_size"], "crop_size", True)
        merged["pad_size"] = size_dict(merged["pad_size"], "pad_size", True)
        merged["resample"] = Resampling(merged["resample"])
        if merged["do_center_crop"] and not {"height", "width"} <= set(merged["crop_size"]):
            raise ValueError(f"crop_size must have 'height' and 'width', got {merged['crop_size']}.")
        if merged["do_rescale"] and merged["rescale_factor"] is None:
            raise ValueError("`rescale_factor` must be specified if `do_rescale` is `True`.")
        return merged

    def _call_options(self) -> tuple[str, ...]:
        return ("return_tensors", "data_format", "input_data_format", "default_to_square")

    def eval_transform(self, **overrides: Any) -> EvalTransform:
        """These settings (with per-call overrides) as the evaluation transform every inference path runs."""
        return EvalTransform.from_settings(self.settings(overrides))

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The settings as preprocessor_config.json holds them; padding only when set, as transformers writes."""
        output = {name: getattr(self, name) for name in self._setting_names}
        for name in ("do_pad", "pad_size"):
            if output[name] is None:
                del output[name]
        output["resample"] = int(self.resample)
        # One type for both, as transformers 5 writes it: the backend is a loading choice, not a setting.
        output["image_processor_type"] = "BitImageProcessor"
        return {**self.extra, **output}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        atomic_write_text(Path(path), self.to_json_string())

    def save_pretrained(self, save_directory: str | os.PathLike, **_: Any) -> list[str]:
        """Write preprocessor_config.json (atomically); returns the files written, as transformers does."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        self.to_json_file(save_directory / PROCESSOR_CONFIG_NAME)
        return [str(save_directory / PROCESSOR_CONFIG_NAME)]

    @classmethod
    def from_json_file(cls, path: str | os.PathLike):
        return cls.from_dict(read_json(Path(path)))

    @classmethod
    def from_dict(cls, processor_dict: dict[str, Any], **overrides: Any):
        return cls(**{**processor_dict, **overrides})

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any):
        """The checkpoint's own settings, by the rule its weights load by (`checkpoints.sources`): an existing
        local path's preprocessor_config.json (or that file itself); else what a bundled model, zoo name, original
        BiT .npz or timm weights imply, or a Hub repo's file. Other keywords than loading options override them."""
        options = split_loading_options(kwargs)
        settings = preprocessing_settings(name_or_path, options.subfolder, options.hub)
        return cls.from_dict(settings, **options.values)

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def preprocess(self, images: Any, **kwargs: Any) -> BatchFeature:
        """`images` → pixel_values; keyword arguments override the settings and call defaults for this call."""
        return self._preprocess(images, **{**self.call_defaults, **kwargs})

    def _preprocess(self, images: Any, **kwargs: Any) -> BatchFeature:
        raise NotImplementedError
