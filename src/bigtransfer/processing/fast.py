"""BitImageProcessorFast: batched torch preprocessing (no torchvision), within one 8-bit level of the exact one."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from .base import (
    BatchFeature,
    BitImageProcessorKwargs,
    ProcessorBase,
    output_layout,
    pad_images,
    parallel_map,
    stack_output,
)
from .decoding import decoded, flatten_images, load_image, load_image_path, open_checked, pil_to_rgb, to_channels_last
from .draft import draft_for
from .transform import EvalTransform


def _decode_path(path: Any, settings: dict[str, Any], use_draft: bool) -> Image.Image:
    """Open a file; with `use_draft`, JPEGs much larger than the target decode at 1/2, 1/4 or 1/8 scale."""
    if not (use_draft and settings["do_resize"]):
        return load_image(path)
    with open_checked(load_image_path(path), path) as opened:
        draft_for(opened, settings["size"], path)
        return decoded(opened, path)


def _decode(image: Any, settings: dict[str, Any], input_data_format: str | None, use_draft: bool) -> np.ndarray:
    """Any supported input → H×W×C array (uint8 for 8-bit photos, possibly read-only); runs in worker threads.

    Channels-last is how decoders lay pixels out, so batches stack with plain copies and are
    already in the memory format torch's fast uint8 resize kernels want.
    """
    if isinstance(image, (str, os.PathLike)):
        image = _decode_path(image, settings, use_draft)
    if isinstance(image, Image.Image) and settings["do_convert_rgb"]:
        return np.asarray(pil_to_rgb(image))  # wraps Pillow's buffer; copied once, when stacked
    channels_last = to_channels_last(image, settings["do_convert_rgb"], input_data_format)
    # Other integer widths (uint16, int32 …) have few torch kernels: work on them as float32
    return channels_last if channels_last.dtype in (np.uint8, np.float32) else channels_last.astype(np.float32)


def input_device(images: list[Any]) -> torch.device:
    """Where the tensor inputs live, when they share one device (transformers' fast processors return
    their output there); the CPU otherwise."""
    devices = {image.device for image in images if isinstance(image, torch.Tensor)}
    return devices.pop() if len(devices) == 1 else torch.device("cpu")


def _needs_decoding(images: list[Any]) -> bool:
    """Worth a thread pool: files to decode or PIL images to convert (already-RGB pixels are a plain copy)."""
    return any(isinstance(i, (str, os.PathLike)) or (isinstance(i, Image.Image) and i.mode != "RGB") for i in images)


class BitImageProcessorFastKwargs(BitImageProcessorKwargs, total=False):
    """The exact processor's keyword arguments, and where the fast one runs and decodes."""

    device: str | None
    num_workers: int | None
    draft: bool


class BitImageProcessorFast(ProcessorBase):
    """Same settings and output as `BitImageProcessor` (to ≤ 1 uint8 level), built for throughput.

    Images are decoded and converted in a thread pool (Pillow releases the GIL), images of equal
    size are resized together with torch's antialiased kernels, rescale+normalize is one fused op,
    and `device="cuda"` runs the tensor work on a GPU (by default: the device of tensor inputs, else the CPU).
    `draft=True` additionally decodes large JPEG files at a reduced scale (much faster, slightly further from
    the exact output)."""

    valid_kwargs = BitImageProcessorFastKwargs

    def __init__(self, *args: Any, device: Any = None, draft: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.device = device
        self.draft = draft

    def _call_options(self) -> tuple[str, ...]:
        return (*super()._call_options(), "device", "num_workers", "draft")

    def _preprocess(
        self,
        images: Any,
        return_tensors: str | None = None,
        data_format: str | None = "channels_first",
        input_data_format: str | None = None,
        device: Any = None,
        num_workers: int | None = None,
        draft: bool | None = None,
        **overrides: Any,
    ) -> BatchFeature:
        settings, data_format = self.settings(overrides), output_layout(data_format)
        flat = flatten_images(images, input_data_format)
        device = torch.device(device or self.device or input_device(flat))
        use_draft = self.draft if draft is None else draft
        workers = num_workers or (None if _needs_decoding(flat) else 1)
        decoded = parallel_map(lambda image: _decode(image, settings, input_data_format, use_draft), flat, workers)
        processed = self._process_grouped(decoded, settings, device)
        if settings["do_pad"]:
            processed = pad_images(processed, settings["pad_size"])
        if data_format == "channels_last":
            processed = [image.permute(1, 2, 0) for image in processed]  # a batch iterates as its images
        return BatchFeature(pixel_values=stack_output(processed, return_tensors))

    def _process_grouped(self, images: list[np.ndarray], settings: dict[str, Any], device):
        """Stack equal-shaped images and process each stack at once; return them in input order.

        When all images share one shape the processed batch itself is returned (no re-stacking).
        """
        groups: dict[tuple, list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault((tuple(image.shape), image.dtype), []).append(index)
        if len(groups) == 1:
            return self._process_batch(torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2), settings)
        output: list[torch.Tensor | None] = [None] * len(images)
        for indices in groups.values():
            # (N, H, W, C) → (N, C, H, W) as a view: channels-last memory, no copy
            stacked = torch.from_numpy(np.stack([images[i] for i in indices]))
            batch = stacked.to(device, non_blocking=True).permute(0, 3, 1, 2)
            for i, result in zip(indices, self._process_batch(batch, settings)):
                output[i] = result
        return output

    def _process_batch(self, batch: torch.Tensor, settings: dict[str, Any]) -> torch.Tensor:
        """The evaluation transform on a whole batch: its torch geometry, then its `normalise`."""
        transform = EvalTransform.from_settings(settings)
        return transform.normalise(transform.batch_geometry(batch))
