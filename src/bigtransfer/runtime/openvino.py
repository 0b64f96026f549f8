"""OpenVINO running exported BiT classifiers: the IR compiled for the CPU in float32 or bfloat16 (or as NNCF
quantized it to int8; deploy/openvino_ir.py writes it). OpenVINO uses AMX and VNNI for bf16 and int8 where the
CPU has them, and fuses the quantization steps into the neighbouring operations."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from pathlib import Path

import numpy as np

from .._util.package import optional_import
from .model_files import reading

logger = logging.getLogger(__name__)

OPENVINO_FILE = "openvino_model.xml"  # optimum-intel's names; the weights go beside it in openvino_model.bin


def import_openvino():
    return optional_import("openvino", "OpenVINO exports need OpenVINO", "openvino")


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
