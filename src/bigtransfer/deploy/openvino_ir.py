"""OpenVINO IR written for an export: converted from the checked ONNX graph, and quantized to int8 by NNCF.
Running it is runtime/openvino.py's."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import numpy as np

from .._util.package import optional_import
from .._util.quiet import quiet_logger
from ..runtime.openvino import import_openvino


def weights_file(xml: Path) -> Path:
    return xml.with_suffix(".bin")


def convert(onnx_file: Path, xml: Path) -> None:
    """The ONNX graph as OpenVINO IR, weights kept in float32 (OpenVINO's save_model halves them by default)."""
    openvino = import_openvino()
    openvino.save_model(openvino.convert_model(str(onnx_file)), str(xml), compress_to_fp16=False)


def quantize(xml: Path, out: Path, images: list[np.ndarray]) -> None:
    """NNCF post-training quantization of the IR at `xml` to int8, written to `out`: convolutions and matmuls in
    int8 with per-channel weights, activation ranges from `images` (one preprocessed image per array), and
    NNCF's fast bias correction. GroupNorm stays in float."""
    openvino = import_openvino()
    nncf = optional_import("nncf", "int8 OpenVINO export needs NNCF", "openvino")
    # NNCF draws progress bars and logs on stdout: send them to stderr
    with quiet_logger("nncf", logging.WARNING), contextlib.redirect_stdout(sys.stderr):
        quantized = nncf.quantize(
            openvino.Core().read_model(str(xml)), nncf.Dataset(images), subset_size=len(images),
            preset=nncf.QuantizationPreset.MIXED,
        )  # fmt: skip
    openvino.save_model(quantized, str(out), compress_to_fp16=False)
