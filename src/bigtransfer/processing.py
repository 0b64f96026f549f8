"""BitImageProcessor: transformers' PIL/NumPy BiT preprocessing, reproduced to the bit (resize, crop, rescale, normalize)."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from .image_inputs import flatten_images, to_channels_first
from .processing_base import (
    BatchFeature,
    ProcessorBase,
    crop_window,
    output_layout,
    parallel_map,
    resize_output_size,
    stack_output,
)


def _pil_ready(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """Channels-last uint8 for Pillow, and whether the values were [0, 1] floats scaled up by 255."""
    if image.dtype == np.uint8:
        return image, False
    low, high = image.min(), image.max()
    if np.allclose(image, image.astype(int)):
        if low >= 0 and high <= 255:
            return image.astype(np.uint8), False
        raise ValueError(
            f"Image values span [{low}, {high}], outside [0, 255]: Pillow can only resize 8-bit data. Scale the "
            "image into [0, 255] (or [0, 1]) first, or pass do_resize=False."
        )
    if low >= 0 and high <= 1:
        return (image * 255).astype(np.uint8), True
    raise ValueError(
        f"Non-integer image values span [{low}, {high}]: resizing needs integers in [0, 255] or floats in [0, 1]. "
        "Rescale the image first, or pass do_resize=False."
    )


def pil_resize(image: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    """Resize a C×H×W array with Pillow (antialiased when shrinking), keeping transformers' dtype rules."""
    channels_last, scaled_up = _pil_ready(np.moveaxis(image, 0, -1))
    squeezed = channels_last[..., 0] if channels_last.shape[-1] == 1 else channels_last
    resized = np.array(Image.fromarray(squeezed).resize((width, height), resample=resample, reducing_gap=None))
    resized = resized[..., None] if resized.ndim == 2 else resized
    resized = np.moveaxis(resized, -1, 0)
    return (resized.astype(np.float64) * (1 / 255)).astype(np.float32) if scaled_up else resized


def center_crop(image: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    height, width = image.shape[-2:]
    pad_top, pad_left, top, left = crop_window(height, width, crop_height, crop_width)
    if pad_top or pad_left:
        canvas = np.zeros((image.shape[0], max(height, crop_height), max(width, crop_width)), dtype=image.dtype)
        canvas[:, pad_top : pad_top + height, pad_left : pad_left + width] = image
        image = canvas
    return image[:, top : top + crop_height, left : left + crop_width]


def resize_and_crop(image: np.ndarray, settings: dict[str, Any]) -> np.ndarray:
    """The geometric half of the processor on a C×H×W array: 8-bit images stay 8-bit (the values come after)."""
    if settings["do_resize"]:
        height, width = resize_output_size(*image.shape[-2:], settings["size"])
        image = pil_resize(image, height, width, settings["resample"])
    if settings["do_center_crop"]:
        image = center_crop(image, settings["crop_size"]["height"], settings["crop_size"]["width"])
    return image


class BitImageProcessor(ProcessorBase):
    """Exact BiT preprocessing: equals transformers' PIL processor (`BitImageProcessorPil` in 5.x).

    Accepts file paths (EXIF orientation applied), PIL images of any mode (transparency composited
    onto white), numpy arrays and torch tensors (H×W×C or C×H×W), and lists or batches of them.
    """

    def preprocess(
        self,
        images: Any,
        return_tensors: str | None = None,
        data_format: str | None = "channels_first",
        input_data_format: str | None = None,
        **overrides: Any,
    ) -> BatchFeature:
        settings, data_format = self.settings(overrides), output_layout(data_format)

        def process(image: Any) -> np.ndarray:
            return self.process_one(to_channels_first(image, settings["do_convert_rgb"], input_data_format), settings)

        processed = parallel_map(process, flatten_images(images, input_data_format))
        if data_format == "channels_last":
            processed = [np.moveaxis(image, 0, -1) for image in processed]
        return BatchFeature(pixel_values=stack_output(processed, return_tensors))

    def process_one(self, image: np.ndarray, settings: dict[str, Any]) -> np.ndarray:
        image = resize_and_crop(image, settings)
        if settings["do_rescale"]:
            image = (image.astype(np.float64) * settings["rescale_factor"]).astype(np.float32)
        if settings["do_normalize"]:
            image = image if np.issubdtype(image.dtype, np.floating) else image.astype(np.float32)
            mean, std = self.mean_std(settings, image.shape[0])
            image = (image - mean.astype(image.dtype)[:, None, None]) / std.astype(image.dtype)[:, None, None]
        return image
