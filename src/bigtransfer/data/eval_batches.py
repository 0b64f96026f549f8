"""A dataset as batches of model input: decoded, resized and cropped by the evaluation transform in worker
processes (8-bit pixels), moved to the device and normalised there."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..processing.transform import EvalTransform
from .datasets import ImageDataset
from .device import gather_pixels
from .workers import LoadedImages, load_examples, ordered_results, resolve_workers


@dataclasses.dataclass(frozen=True)
class EvalBatches:
    """Item i: the i-th batch of a dataset as 8-bit pixels after the transform's geometry (runs in workers)."""

    dataset: ImageDataset
    transform: EvalTransform
    batch_size: int

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __getitem__(self, item: int) -> LoadedImages:
        indices = range(item * self.batch_size, min((item + 1) * self.batch_size, len(self.dataset)))
        return load_examples(self.dataset, indices, indices, self.geometry)

    def geometry(self, image: Image.Image, _: int) -> np.ndarray:
        return self.transform.decoded_geometry(image)


class InputBatch(NamedTuple):
    pixel_values: torch.Tensor | None  # float model input on the device, None when no image of the batch loaded
    indices: list[int]  # dataset index of each row
    failures: list[tuple[str, str]]  # (image name, error) of the batch's unreadable images


def input_batches(
    dataset: ImageDataset,
    transform: EvalTransform,
    batch_size: int,
    device: torch.device,
    *,
    workers: int | None = None,
    channels_last: bool = False,
    progress: bool = False,
) -> Iterator[InputBatch]:
    """The model input of every batch of `dataset`: the transform's geometry in worker processes (exactly as
    BitImageProcessor resizes and crops), its `normalise` on `device`."""
    transform.fixed_size()  # batches need one size: fail before starting any worker
    task = EvalBatches(dataset, transform, batch_size)
    with ordered_results(task, resolve_workers(workers), pin_memory=device.type == "cuda") as batches:
        for batch in tqdm(batches, total=len(task), unit="batch", disable=not progress):
            pixels = gather_pixels([batch], device)
            inputs = None if pixels is None else transform.normalise_pixels(pixels, channels_last)
            yield InputBatch(inputs, batch.ids, batch.failures)
