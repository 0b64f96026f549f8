"""BitImageProcessor: transformers' PIL/NumPy BiT preprocessing, reproduced to the bit (resize, crop, rescale, normalize)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
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
from .decoding import flatten_images, load_image, pil_to_rgb, to_channels_last
from .transform import EvalTransform, mean_and_std


class BitImageProcessor(ProcessorBase):
    """Exact BiT preprocessing: equals transformers' PIL processor (`BitImageProcessorPil` in 5.x).

    Accepts file paths (EXIF orientation applied), PIL images of any mode (transparency composited
    onto white), numpy arrays and torch tensors (H×W×C or C×H×W), and lists or batches of them.
    """

    valid_kwargs = BitImageProcessorKwargs

    def _preprocess(
        self,
        images: Any,
        return_tensors: str | None = None,
        data_format: str | None = "channels_first",
        input_data_format: str | None = None,
        **overrides: Any,
    ) -> BatchFeature:
        settings, data_format = self.settings(overrides), output_layout(data_format)

        def process(image: Any) -> np.ndarray:
            return self.process_one(image, settings, input_data_format)

        processed = parallel_map(process, flatten_images(images, input_data_format))
        if settings["do_pad"]:
            processed = pad_images(processed, settings["pad_size"])
        if data_format == "channels_last":
            processed = [np.moveaxis(image, 0, -1) for image in processed]
        return BatchFeature(pixel_values=stack_output(processed, return_tensors))

    def process_one(self, image: Any, settings: dict[str, Any], input_data_format: str | None = None) -> np.ndarray:
        """One image → C×H×W: the transform's geometry in H×W×C, then transformers' value arithmetic (rescale in
        float64) to the bit; channels go first at the end, as a view."""
        image = _geometry(image, EvalTransform.from_settings(settings), settings["do_convert_rgb"], input_data_format)
        if settings["do_rescale"]:
            image = (image.astype(np.float64) * settings["rescale_factor"]).astype(np.float32)
        if settings["do_normalize"]:
            image = image if np.issubdtype(image.dtype, np.floating) else image.astype(np.float32)
            mean, std = mean_and_std(settings["image_mean"], settings["image_std"], image.shape[-1])
            image = (image - mean.astype(image.dtype)) / std.astype(image.dtype)
        return np.moveaxis(image, -1, 0)


def _geometry(image: Any, transform: EvalTransform, do_convert_rgb: bool, input_data_format: str | None) -> np.ndarray:
    """An image resized and cropped as H×W×C. A file or PIL image converted to RGB is resized by Pillow itself
    (`decoded_geometry`): the same pixels as resizing its array, without the array and its copy back into Pillow."""
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)
    if isinstance(image, Image.Image) and do_convert_rgb:
        return transform.decoded_geometry(pil_to_rgb(image))
    return transform.geometry(to_channels_last(image, do_convert_rgb, input_data_format))
