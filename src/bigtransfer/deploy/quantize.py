"""Static int8 quantization of an exported model — ONNX with ONNX Runtime's tools, OpenVINO IR with NNCF —
calibrated on real images through the model's own preprocessing, and the top-1 agreement with float32 on
held-out images."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._util.package import optional_import
from ..data.datasets import ImageDataset
from ..data.eval_batches import input_batches
from ..models.config import BitConfig
from ..processing.base import ProcessorBase
from ..runtime import openvino
from ..runtime.exported import INPUT_NAME, ONNX_FILE, OUTPUT_NAME, onnx_session
from . import openvino_ir

# Only convolutions and the head run in int8. GroupNorm has no int8 kernel in ONNX Runtime, so quantizing the
# ops around it (residual adds, pooling) only adds quantize/dequantize pairs: measured slower, not faster.
QUANTIZED_OPS = ["Conv", "Gemm"]
CALIBRATION_BATCH = 4
Logits = Callable[[np.ndarray], np.ndarray]  # float32 pixel_values → logits, one runtime's model


def _quantization():
    return optional_import("onnxruntime.quantization", "int8 export needs ONNX Runtime's quantization tools", "onnx")


@dataclasses.dataclass
class Calibration:
    """Images to calibrate activation ranges on, and held-out images of the same data to check agreement on.

    A seeded draw from `dataset`: the first `size` images calibrate, up to `heldout` others are held out.
    """

    dataset: ImageDataset
    processor: ProcessorBase
    size: int = 128
    heldout: int = 256
    seed: int = 0
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"--calibration-size must be at least 1, got {self.size}.")
        order = np.random.default_rng(self.seed).permutation(len(self.dataset))
        self.calibration_indices = np.sort(order[: self.size])
        self.heldout_indices = np.sort(order[self.size : self.size + self.heldout])

    def batches(self, indices: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, list[int]]]:
        """(float32 model input, dataset indices) of the readable images among `indices`."""
        subset = self.dataset.subset(indices)
        for batch in input_batches(
            subset, self.processor.eval_transform(), batch_size, torch.device("cpu"), workers=self.workers
        ):
            if batch.pixel_values is not None:
                yield batch.pixel_values.numpy(), [int(indices[i]) for i in batch.indices]

    def quantize_export(self, directory: Path, config: BitConfig) -> dict[str, Any]:
        """Replace the float32 model of `directory` (ONNX or OpenVINO) by its int8 version; report calibration
        and agreement."""
        if (directory / openvino.OPENVINO_FILE).is_file():
            return self.quantize_openvino(directory, config)
        quantization = _quantization()
        float_model = directory / ONNX_FILE
        large = float_model.with_name(float_model.name + ".data").exists()
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            # named as the final file, so that its external data (large models) is already named as it will be
            prepared, quantized = Path(scratch) / "prepared.onnx", Path(scratch) / ONNX_FILE
            quantization.quant_pre_process(str(float_model), str(prepared), save_as_external_data=large)
            reader = _Reader([pixels for pixels, _ in self.batches(self.calibration_indices, CALIBRATION_BATCH)])
            if not len(reader):
                raise ValueError(f"None of the calibration images of {self.dataset.source} could be read.")
            # reduce_range: 7-bit weights, so that u8×s8 products cannot saturate on CPUs without VNNI (AVX2),
            # where 8-bit weights cost the bundled model 0.97 points of top-1 (0.11 with 7 bits; 4,872 held-out photos)
            quantization.quantize_static(
                str(prepared), str(quantized), reader, quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                op_types_to_quantize=QUANTIZED_OPS, use_external_data_format=large, reduce_range=True,
                extra_options={"CalibStridedMinMax": 1},
            )  # fmt: skip
            float_session, int8_session = onnx_session(float_model), onnx_session(quantized)
            report = {
                "calibration_images": reader.images,
                **self.agreement(_session_logits(float_session), _session_logits(int8_session), config),
            }
            for path in directory.glob(ONNX_FILE + "*"):
                path.unlink()
            for path in Path(scratch).glob(ONNX_FILE + "*"):
                shutil.move(path, directory / path.name)
        return report

    def quantize_openvino(self, directory: Path, config: BitConfig) -> dict[str, Any]:
        """NNCF on directory/openvino_model.xml, one calibration image per sample (NNCF's statistics assume
        batch 1); the int8 IR replaces the float32 one once both have been compared."""
        float_model = directory / openvino.OPENVINO_FILE
        images = [image[None] for pixels, _ in self.batches(self.calibration_indices, CALIBRATION_BATCH)
                  for image in pixels]  # fmt: skip
        if not images:
            raise ValueError(f"None of the calibration images of {self.dataset.source} could be read.")
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            quantized = Path(scratch) / float_model.name
            openvino_ir.quantize(float_model, quantized, images)
            report = {"calibration_images": len(images), **self.agreement(
                _openvino_logits(float_model), _openvino_logits(quantized), config)}  # fmt: skip
            for path in (quantized, openvino_ir.weights_file(quantized)):
                shutil.move(path, directory / path.name)
        return report

    def agreement(self, float_logits: Logits, int8_logits: Logits, config: BitConfig) -> dict[str, Any]:
        """Top-1 agreement of int8 with float32 on the held-out images, and both accuracies when labelled: the
        top-1 class is right when it is the image's class (multi-label data: one of its classes)."""
        if not len(self.heldout_indices):
            return {"heldout_images": 0}
        float_top1, int8_top1, indices = [], [], []
        for pixel_values, batch_indices in self.batches(self.heldout_indices, 16):
            float_top1 += float_logits(pixel_values).argmax(-1).tolist()
            int8_top1 += int8_logits(pixel_values).argmax(-1).tolist()
            indices += batch_indices
        float_top1, int8_top1 = np.array(float_top1), np.array(int8_top1)
        report = {"heldout_images": len(indices), "top1_agreement": float((float_top1 == int8_top1).mean())}
        label2id = {name: i for i, name in config.id2label.items()}
        names = [self._class_names(index) for index in indices]
        if names and all(name in label2id for image_names in names for name in image_names):
            truth = [{label2id[name] for name in image_names} for image_names in names]
            report["float32_top1"] = float(np.mean([top1 in right for top1, right in zip(float_top1, truth)]))
            report["int8_top1"] = float(np.mean([top1 in right for top1, right in zip(int8_top1, truth)]))
        return report

    def _class_names(self, index: int) -> list[str]:
        """The classes image `index` shows: its one class, or those its multi-hot row marks."""
        label, classes = self.dataset.labels[index], self.dataset.classes
        return [classes[i] for i in np.flatnonzero(label)] if self.dataset.multi_label else [classes[label]]


def _session_logits(session) -> Logits:
    return lambda pixel_values: session.run([OUTPUT_NAME], {INPUT_NAME: pixel_values})[0]


def _openvino_logits(xml: Path) -> Logits:
    runner = openvino.OpenVINORunner(xml)
    return lambda pixel_values: runner(pixel_values)[OUTPUT_NAME]


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over our batches. Ranges are collected one batch at a time
    ("CalibStridedMinMax" 1, min/max merged across calls): all at once, ONNX Runtime would hold every
    intermediate output of every calibration image in memory (gigabytes for R50x1 at 224 px)."""

    def __init__(self, batches: list[np.ndarray]):
        self._batches, self._pending = batches, iter(())
        self.images = sum(len(batch) for batch in batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pending = iter(self._batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        pixel_values = next(self._pending, None)
        return None if pixel_values is None else {INPUT_NAME: pixel_values}
