"""OpenVINO for exported BiT classifiers: the IR converted from the checked ONNX graph, compiled for the CPU in
float32 or bfloat16, and quantized to int8 by NNCF. OpenVINO uses AMX and VNNI for bf16 and int8 where the CPU
has them, and fuses the quantization steps into the neighbouring operations."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import sys
import threading
from pathlib import Path

import numpy as np

from ..checkpoints.hub import install_hint
from .model_files import reading
from .quiet import quiet_logger

logger = logging.getLogger(__name__)

OPENVINO_FILE = "openvino_model.xml"  # optimum-intel's names; the weights go beside it in openvino_model.bin
OPENVINO_HINT = install_hint("openvino")


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise ImportError(f"OpenVINO exports need OpenVINO: {OPENVINO_HINT}.") from None
    return openvino


def weights_file(xml: Path) -> Path:
    return xml.with_suffix(".bin")


def convert(onnx_file: Path, xml: Path) -> None:
    """The ONNX graph as OpenVINO IR, weights kept in float32 (OpenVINO's save_model halves them by default)."""
    openvino = import_openvino()
    openvino.save_model(openvino.convert_model(str(onnx_file)), str(xml), compress_to_fp16=False)


class OpenVINORunner:
    """A compiled OpenVINO model on the CPU, outputs by name; each calling thread runs its own inference request
    (one request shared between threads is "busy", or hands one thread's outputs to another).

    Precision is always set: OpenVINO's CPU plugin otherwise runs bfloat16 by itself on CPUs that have it, and
    an export checked to 1e-4 in float32 would silently run at bf16 accuracy there. `precision` is what the
    plugin compiled, read back: a bf16 request on a CPU without bf16 compiles float32."""

    def __init__(self, xml: Path, bf16: bool = False):
        openvino = import_openvino()
        settings = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32"}
        self.compiled = _compile_off_this_thread(openvino.Core(), xml, settings)
        compiled_type = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = "bfloat16" if compiled_type == openvino.Type.bf16 else "float32"
        if bf16 and self.precision != "bfloat16":
            logger.warning(
                "This CPU has no bfloat16 support (AVX512_BF16 or AMX), so OpenVINO runs the model in float32; "
                "--bf16 pays off on 4th-generation Xeon (Sapphire Rapids) and later."
            )
        self._requests = threading.local()

    def _request(self):
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        return request

    def __call__(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """Every output under each of its names (a tensor may carry several, the export's own among them), copied
        out of this thread's request before its next call reuses them."""
        results = self._request().infer({0: pixel_values}, share_inputs=True)
        return {name: np.array(results[output]) for output in self.compiled.outputs for name in output.get_names()}


def _compile_off_this_thread(core, xml: Path, settings: dict):
    """core.compile_model on a short-lived thread. OpenVINO's CPU plugin (2026.4) gives the compiling thread an
    alternate signal stack and, when compiled models are released in another order than they were made, leaves
    that thread's signal stack pointing at freed memory: the next signal handled there (a loading worker's
    SIGCHLD) kills the process with SIGSEGV. Compiled elsewhere, the caller's thread is never touched."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as compiling, reading(xml):
        return compiling.submit(core.compile_model, str(xml), "CPU", settings).result()


def quantize(xml: Path, out: Path, images: list[np.ndarray]) -> None:
    """NNCF post-training quantization of the IR at `xml` to int8, written to `out`: convolutions and matmuls in
    int8 with per-channel weights, activation ranges from `images` (one preprocessed image per array), and
    NNCF's fast bias correction. GroupNorm stays in float."""
    openvino = import_openvino()
    try:
        import nncf
    except ImportError:
        raise ImportError(f"int8 OpenVINO export needs NNCF: {OPENVINO_HINT}.") from None
    # NNCF draws progress bars and logs on stdout: send them to stderr
    with quiet_logger("nncf", logging.WARNING), contextlib.redirect_stdout(sys.stderr):
        quantized = nncf.quantize(
            openvino.Core().read_model(str(xml)), nncf.Dataset(images), subset_size=len(images),
            preset=nncf.QuantizationPreset.MIXED,
        )  # fmt: skip
    openvino.save_model(quantized, str(out), compress_to_fp16=False)
