"""Per-example training transforms, driven by a given RNG so every step is reproducible (and resumable).

They return H×W×3 uint8 pixels: loading workers hand those over, and the values become [-1, 1]
(BiT's normalisation: mean 0.5, std 0.5) on the model's device (`processing.transform.EvalTransform.normalise`).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ..processing.exact import BitImageProcessor
from ..processing.record import bit_settings


def hyperrule_augment(image: Image.Image, resize: int, crop: int, flip: bool, rng: np.random.Generator) -> np.ndarray:
    """BiT fine-tuning: square resize, random crop, random horizontal flip."""
    image = image.resize((resize, resize), Image.BILINEAR)
    top, left = rng.integers(0, resize - crop + 1, size=2)
    image = image.crop((int(left), int(top), int(left) + crop, int(top) + crop))
    if flip and rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(image)


def inception_augment(image: Image.Image, crop: int, flip: bool, rng: np.random.Generator) -> np.ndarray:
    """Upstream pre-training: Inception-style random-resized crop (8–100 % area, ratio 3/4–4/3) and flip."""
    width, height = image.size
    area = width * height
    box = (0, 0, width, height)
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = (left, top, left + w, top + h)
            break
    image = image.resize((crop, crop), Image.BILINEAR, box=box)
    if flip and rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(image)


def eval_processor(crop: int) -> BitImageProcessor:
    """BiT's evaluation transform after fine-tuning (square resize to the crop size, bilinear, [-1, 1]); saved
    beside the model."""
    return BitImageProcessor(**bit_settings(crop, square=True))
