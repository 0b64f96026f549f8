"""The evaluation transform: one object built from image processor settings, applied in two steps.

`geometry` resizes and center-crops 8-bit pixels with Pillow, where images are decoded (loading workers,
threads), in H×W×C as decoders lay them out (channels go first only at the processors' output, and on the
model's device as a view); `normalise` turns 8-bit batches into model input — × rescale, then (x − mean) / std —
on the model's device. Prediction, evaluation, few-shot, training, export, serve and the fast processor all
normalise through here, so a file becomes the same numbers on every path; the exact processor keeps
transformers' float64 rescale as the bit-exact reference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from enum import IntEnum
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .decoding import check_image_size


class Resampling(IntEnum):
    """Pillow's filter numbers, which is what `resample` means in transformers' configs."""

    NEAREST = 0
    LANCZOS = 1
    BILINEAR = 2
    BICUBIC = 3
    BOX = 4
    HAMMING = 5


def resize_output_size(height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
    """Target (height, width) exactly as transformers computes it (the long side truncated, not rounded), but
    never a side of 0 pixels: where a `longest_edge` squeezes a sliver (1×150 to at most 40) transformers computes
    0 and its resize fails; here that side is 1."""
    height, width = _as_computed(height, width, size)
    return max(height, 1), max(width, 1)


def _as_computed(height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
    if "shortest_edge" in size:
        shortest, longest = size["shortest_edge"], size.get("longest_edge")
        raw = None
        if longest is not None and max(height, width) / min(height, width) * shortest > longest:
            raw = longest * min(height, width) / max(height, width)
            shortest = round(raw)
        if (height <= width and height == shortest) or (width <= height and width == shortest):
            return height, width
        scale_from = raw if raw is not None else shortest
        if width < height:
            return int(scale_from * height / width), shortest
        return shortest, int(scale_from * width / height)
    if "max_height" in size:
        scale = min(size["max_height"] / height, size["max_width"] / width)
        return int(height * scale), int(width * scale)
    if "height" in size:
        return size["height"], size["width"]
    raise ValueError(
        f"Size must contain 'height' and 'width', 'max_height' and 'max_width', or 'shortest_edge'; got {size}."
    )


def crop_window(height: int, width: int, crop_height: int, crop_width: int) -> tuple[int, int, int, int]:
    """(pad_top, pad_left, top, left) of a center crop; an image smaller than the crop is zero-padded first,
    the odd padding pixel going top/left (transformers' slow processor; its fast one puts it bottom/right).
    """
    pad_top = -(-max(crop_height - height, 0) // 2)
    pad_left = -(-max(crop_width - width, 0) // 2)
    top = pad_top + (height - crop_height) // 2
    left = pad_left + (width - crop_width) // 2
    return pad_top, pad_left, top, left


def mean_and_std(mean: Sequence[float] | float, std: Sequence[float] | float, channels: int) -> tuple:
    """Mean and std as float32 arrays of one value per channel (a single value is repeated), checked."""
    arrays = []
    for name, value in (("image_mean", mean), ("image_std", std)):
        array = np.asarray(value, dtype=np.float32).reshape(-1)
        array = np.repeat(array, channels) if array.size == 1 else array
        if array.size != channels:
            raise ValueError(
                f"{name} has {array.size} values but the images have {channels} channels: give one per channel."
            )
        arrays.append(array)
    if (arrays[1] == 0).any():
        raise ValueError("image_std contains 0: normalisation would divide by zero.")
    return arrays[0], arrays[1]


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
    """Resize an H×W×C array with Pillow (antialiased when shrinking), keeping transformers' dtype rules."""
    ready, scaled_up = _pil_ready(image)
    squeezed = ready[..., 0] if ready.shape[-1] == 1 else ready
    resized = np.array(Image.fromarray(squeezed).resize((width, height), resample=resample, reducing_gap=None))
    resized = resized[..., None] if resized.ndim == 2 else resized
    return (resized.astype(np.float64) * (1 / 255)).astype(np.float32) if scaled_up else resized


def center_crop(image: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """The center crop of an H×W×C array (a view; zero-padded first where the image is smaller)."""
    height, width = image.shape[:2]
    pad_top, pad_left, top, left = crop_window(height, width, crop_height, crop_width)
    if pad_top or pad_left:
        canvas = np.zeros((max(height, crop_height), max(width, crop_width), image.shape[2]), dtype=image.dtype)
        canvas[pad_top : pad_top + height, pad_left : pad_left + width] = image
        image = canvas
    return image[top : top + crop_height, left : left + crop_width]


# Pillow filters with a torch kernel of the same shape; the others run through Pillow itself.
TORCH_MODES = {Resampling.BILINEAR: "bilinear", Resampling.BICUBIC: "bicubic"}


def resize_batch(batch: torch.Tensor, height: int, width: int, resample: Resampling) -> torch.Tensor:
    """Antialiased resize of a (N, C, H, W) batch; uint8 in → uint8 out, like resizing in Pillow."""
    mode = TORCH_MODES.get(resample)
    if mode is None:  # nearest / box / hamming / lanczos: Pillow, image by image
        resized = [pil_resize(image.permute(1, 2, 0).cpu().numpy(), height, width, resample) for image in batch]
        return torch.stack([torch.from_numpy(image).permute(2, 0, 1) for image in resized]).to(batch.device)
    if batch.dtype == torch.uint8 and batch.device.type == "cpu":
        # torch's uint8 kernels (channels-last, AVX2) mirror Pillow's and are several times faster
        return F.interpolate(batch, size=(height, width), mode=mode, antialias=True)
    if batch.dtype == torch.uint8:
        return _two_pass_uint8_resize(batch, height, width, mode)
    return F.interpolate(batch.float(), size=(height, width), mode=mode, antialias=True).to(batch.dtype)


def _two_pass_uint8_resize(batch: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """Pillow's order on devices without uint8 kernels: horizontal pass, round and clip to 8 bits, vertical pass.

    The clip between passes matters for bicubic, whose overshoot at sharp edges would otherwise
    carry into the second pass (several levels off at high-contrast edges).
    """
    rows = F.interpolate(batch.float(), size=(batch.shape[-2], width), mode=mode, antialias=True)
    rows = rows.round_().clamp_(0, 255)
    resized = F.interpolate(rows, size=(height, width), mode=mode, antialias=True)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def center_crop_batch(batch: torch.Tensor, crop_height: int, crop_width: int) -> torch.Tensor:
    height, width = batch.shape[-2:]
    pad_top, pad_left, top, left = crop_window(height, width, crop_height, crop_width)
    if pad_top or pad_left:
        pad_bottom = max(crop_height - height - pad_top, 0)
        pad_right = max(crop_width - width - pad_left, 0)
        batch = F.pad(batch, (pad_left, pad_right, pad_top, pad_bottom))
    return batch[..., top : top + crop_height, left : left + crop_width]


def _check_float_range(batch: torch.Tensor) -> None:
    low, high = batch.min().item(), batch.max().item()
    if low < 0 or high > 255:
        raise ValueError(
            f"Image values span [{low}, {high}], outside [0, 255]: scale them into [0, 255] or [0, 1] first, "
            "or pass do_resize=False."
        )


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """An image processor's settings as the two steps every inference path runs (see the module docstring)."""

    do_resize: bool
    size: dict[str, int]
    resample: int
    do_center_crop: bool
    crop_size: dict[str, int]
    rescale: float | None  # None: values are left as they are
    mean: tuple[float, ...] | float | None  # None: no normalisation
    std: tuple[float, ...] | float | None

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> EvalTransform:
        """From a processor's validated per-call settings (`ProcessorBase.settings`)."""
        normalise = settings["do_normalize"]

        def values(name: str) -> tuple[float, ...] | float | None:
            value = settings[name]
            return None if not normalise else tuple(value) if isinstance(value, (list, tuple)) else float(value)

        return cls(
            do_resize=settings["do_resize"], size=dict(settings["size"]), resample=int(settings["resample"]),
            do_center_crop=settings["do_center_crop"], crop_size=dict(settings["crop_size"]),
            rescale=settings["rescale_factor"] if settings["do_rescale"] else None,
            mean=values("image_mean"), std=values("image_std"),
        )  # fmt: skip

    # -- sizes ---------------------------------------------------------------------------------------------------
    def fixed_size(self) -> tuple[int, int]:
        """(height, width) every image comes out at: batches (and exported graphs) need one size, so a center
        crop or a resize to an exact height and width."""
        if self.do_center_crop:
            return self.crop_size["height"], self.crop_size["width"]
        if self.do_resize and "height" in self.size:
            return self.size["height"], self.size["width"]
        raise ValueError(
            "These preprocessing settings keep each image's own aspect ratio, so images cannot be batched: "
            "enable center cropping (do_center_crop) or resize to a fixed {'height', 'width'}."
        )

    # -- step 1: geometry, where images are decoded ---------------------------------------------------------------
    def geometry(self, image: np.ndarray) -> np.ndarray:
        """Resize and center-crop an H×W×C array with Pillow; 8-bit images stay 8-bit (the values come after)."""
        check_image_size(image.shape[1], image.shape[0], "an image")
        if self.do_resize:
            height, width = resize_output_size(*image.shape[:2], self.size)
            image = pil_resize(image, height, width, self.resample)
        if self.do_center_crop:
            image = center_crop(image, self.crop_size["height"], self.crop_size["width"])
        return image

    def batch_geometry(self, batch: torch.Tensor) -> torch.Tensor:
        """`geometry` for an N×C×H×W batch of equal-sized images with torch's antialiased kernels (any device):
        uint8 stays uint8, within one 8-bit level of Pillow's result (the fast processor's path)."""
        check_image_size(batch.shape[-1], batch.shape[-2], "an image")
        if self.do_resize:
            height, width = resize_output_size(*batch.shape[-2:], self.size)
            if batch.dtype != torch.uint8:
                _check_float_range(batch)
            batch = resize_batch(batch, height, width, self.resample)
        if self.do_center_crop:
            batch = center_crop_batch(batch, self.crop_size["height"], self.crop_size["width"])
        return batch

    def decoded_geometry(self, image: Image.Image) -> np.ndarray:
        """`geometry` for a decoded RGB image, as the H×W×3 uint8 pixels loading workers hand over. Pillow resizes
        the image itself: the same pixels as `geometry` of its array, without two full-size copies of a large
        decode (a 9000×9000 upload held 11 bytes a pixel, now 4)."""
        check_image_size(image.width, image.height, "an image")
        if self.do_resize:
            height, width = resize_output_size(image.height, image.width, self.size)
            image = image.resize((width, height), resample=self.resample, reducing_gap=None)
        pixels = np.array(image)
        if self.do_center_crop:
            pixels = center_crop(pixels, self.crop_size["height"], self.crop_size["width"])
        return pixels

    # -- step 2: values, on the model's device --------------------------------------------------------------------
    def normalise(self, batch: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """An N×C×H×W batch (8-bit or float, any memory layout) → float32 model input: × rescale, then
        (x − mean) / std, in float32 on the batch's device, laid out channels-last when asked."""
        values = batch.to(torch.float32, copy=True)
        if self.rescale is not None:
            values.mul_(self.rescale)
        if self.mean is not None and self.std is not None:
            mean, std = mean_and_std(self.mean, self.std, values.shape[1])
            values.sub_(_on(mean, values)).div_(_on(std, values))
        return values.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def normalise_pixels(self, pixels: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """`normalise` for the N×H×W×C 8-bit batches that loading workers produce."""
        return self.normalise(pixels.permute(0, 3, 1, 2), channels_last)


def _on(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """Per-channel values shaped to broadcast over N×C×H×W, on `like`'s device (without blocking the host)."""
    tensor = torch.from_numpy(values).view(1, -1, 1, 1)
    if like.device.type == "cuda":
        return tensor.pin_memory().to(like.device, non_blocking=True)
    return tensor.to(like.device)
