"""An export directory (from `bigtransfer export`) as a classifier: ONNX Runtime for model.onnx, torch for
model.pt2, with the labels and preprocessing saved beside the model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.config import BitConfig
from ..models.outputs import ImageClassifierOutputWithNoAttention

ONNX_FILE = "model.onnx"
PT2_FILE = "model.pt2"
EXPORT_INFO_FILE = "export.json"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
INSTALL_HINT = "pip install 'bigtransfer[onnx]' (onnx, onnxruntime, onnxscript)"


def is_export_directory(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / ONNX_FILE).is_file() or (path / PT2_FILE).is_file())


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(f"Running an ONNX export needs ONNX Runtime: {INSTALL_HINT}.") from None
    return onnxruntime


def onnx_session(path: str | os.PathLike, device: torch.device | None = None, threads: int | None = None):
    """An ONNX Runtime session with every graph optimisation, on CUDA when asked and available."""
    onnxruntime = import_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if device is not None and device.type == "cuda":
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise ValueError(
                "This ONNX Runtime has no CUDA provider: run the export on --device cpu, or install "
                "onnxruntime-gpu in place of onnxruntime."
            )
        providers.insert(0, "CUDAExecutionProvider")
    return onnxruntime.InferenceSession(str(path), options, providers=providers)


class ExportedClassifier:
    """Logits from an exported BiT classifier; duck-types the parts of BitForImageClassification that
    prediction uses (`config`, `device`, `dtype`, `eval()`, calling it on pixel_values)."""

    dtype = torch.float32

    def __init__(self, directory: str | os.PathLike, device: torch.device | str | None = None):
        directory = Path(directory)
        if not is_export_directory(directory):
            raise FileNotFoundError(
                f"{directory} holds no {ONNX_FILE} or {PT2_FILE}: make one with `bigtransfer export`."
            )
        self.directory = directory
        self.config = BitConfig.from_pretrained(directory)
        self.device = torch.device(device or "cpu")
        info_file = directory / EXPORT_INFO_FILE
        self.info: dict[str, Any] = json.loads(info_file.read_text()) if info_file.is_file() else {}
        if (directory / ONNX_FILE).is_file():
            self.session, self.program = onnx_session(directory / ONNX_FILE, self.device), None
        else:
            self.session, self.program = None, torch.export.load(directory / PT2_FILE).module().to(self.device)

    def eval(self) -> ExportedClassifier:
        return self

    def to(self, device: torch.device | str) -> ExportedClassifier:
        device = torch.device(device)
        if device != self.device:
            return type(self)(self.directory, device)
        return self

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.program is not None:
            return self.program(pixel_values.to(self.device, self.dtype))
        inputs = {INPUT_NAME: np.ascontiguousarray(pixel_values.detach().float().cpu().numpy())}
        return torch.from_numpy(self.session.run(None, inputs)[0]).to(self.device)

    def __call__(self, pixel_values: torch.Tensor, **_: Any) -> ImageClassifierOutputWithNoAttention:
        expected = self.info.get("input_size")
        if expected and list(pixel_values.shape[-2:]) != expected:
            raise ValueError(
                f"This export takes {expected[0]}×{expected[1]} images, got {tuple(pixel_values.shape[-2:])}: "
                f"preprocess with the preprocessor_config.json in {self.directory}, or export again at this size."
            )
        return ImageClassifierOutputWithNoAttention(logits=self.logits(pixel_values))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.directory)!r}, {self.info.get('precision', 'float32')})"
