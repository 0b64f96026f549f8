"""An export directory (from `bigtransfer export`) as a classifier: ONNX Runtime for model.onnx, OpenVINO for
openvino_model.xml, torch for model.pt2, with the labels and preprocessing saved beside the model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._util.files import read_json
from .._util.package import optional_import
from .._util.quiet import quiet_logger
from ..models.config import BitConfig
from ..models.outputs import ImageClassifierOutputWithNoAttention
from .model_files import REEXPORT, check_pt2, reading
from .openvino import OPENVINO_FILE, OpenVINORunner

ONNX_FILE = "model.onnx"
PT2_FILE = "model.pt2"
EXPORT_INFO_FILE = "export.json"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
FEATURES_NAME = "pooler_output"  # the pooled pre-logit features, a second output of OpenVINO exports
EXPORT_FILES = (ONNX_FILE, OPENVINO_FILE, PT2_FILE)


def exported_file(directory: str | os.PathLike) -> Path | None:
    """The model file of an export directory (ONNX, OpenVINO IR or torch.export), if it is one."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    return next((directory / name for name in EXPORT_FILES if (directory / name).is_file()), None)


def is_export_directory(path: str | os.PathLike) -> bool:
    return exported_file(path) is not None


def import_onnxruntime():
    return optional_import("onnxruntime", "Running an ONNX export needs ONNX Runtime", "onnx")


def onnx_session(
    path: str | os.PathLike, device: torch.device | None = None, threads: int | None = None, spin_wait: bool = True
):
    """An ONNX Runtime session with every graph optimisation, on CUDA when asked and available; `spin_wait`
    False: its threads sleep between runs instead of spinning (`InferenceSettings.spin_wait`)."""
    onnxruntime = import_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    if not spin_wait:
        for pool in ("intra_op", "inter_op"):
            options.add_session_config_entry(f"session.{pool}.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device is not None and device.type == "cuda":
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise ValueError(
                "This ONNX Runtime has no CUDA provider: run the export on --device cpu, or install "
                "onnxruntime-gpu in place of onnxruntime."
            )
        providers.insert(0, "CUDAExecutionProvider")
    with reading(Path(path)):
        return onnxruntime.InferenceSession(str(path), options, providers=providers)


def _runner(model_file: Path, device: torch.device, bf16: bool, spin_wait: bool):
    """(pixel_values → {output name: tensor}, the float precision it computes in, the logits' width the graph
    declares, if fixed, the ONNX Runtime session if it is one) for the runtime that reads `model_file`."""
    if model_file.name == PT2_FILE:
        check_pt2(model_file)
        with reading(model_file), quiet_logger("torch.export"):  # which logs a traceback before raising
            exported = torch.export.load(model_file)
            program = exported.module().to(device)
        logits = next(node for node in exported.graph.nodes if node.op == "output").args[0][0]

        def run_program(pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
            return {OUTPUT_NAME: program(pixel_values.to(device, torch.float32))}

        return run_program, "float32", _width(logits.meta["val"].shape), None
    precision, session = "float32", None
    if model_file.name == OPENVINO_FILE:
        if device.type != "cpu":
            raise ValueError(f"OpenVINO exports run on the CPU, not {device}: use --device cpu, or export with "
                             "--format onnx to run on a GPU with onnxruntime-gpu.")  # fmt: skip
        run = OpenVINORunner(model_file, bf16)
        precision = run.precision
        shapes = {name: output.get_partial_shape() for output in run.compiled.outputs for name in output.get_names()}
    else:
        session = onnx_session(model_file, device, spin_wait=spin_wait)
        shapes = {output.name: output.shape for output in session.get_outputs()}
        names = list(shapes)

        def run(pixel_values: np.ndarray) -> dict[str, np.ndarray]:
            return dict(zip(names, session.run(None, {INPUT_NAME: pixel_values})))

    def numpy_run(pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = np.ascontiguousarray(pixel_values.detach().float().cpu().numpy())
        return {name: torch.from_numpy(array).to(device) for name, array in run(inputs).items()}

    return numpy_run, precision, _width(shapes.get(OUTPUT_NAME)), session


def _width(shape: Any) -> int | None:
    """The last dimension of an output's shape when it is fixed: torch and ONNX Runtime give an int (ONNX Runtime
    a name for a dynamic one), OpenVINO a Dimension."""
    if shape is None or len(shape) == 0:
        return None
    last = shape[-1]
    if hasattr(last, "is_static"):
        return last.get_length() if last.is_static else None
    return last if isinstance(last, int) else None


class ExportedClassifier:
    """Logits from an exported BiT classifier; duck-types the parts of BitForImageClassification that
    prediction uses (`config`, `device`, `dtype`, `eval()`, calling it on pixel_values).

    bf16: OpenVINO exports only, compiled with bfloat16 inference precision where the CPU has it (else float32,
    with a warning); other exports' graphs are fixed float32 (or int8)."""

    dtype = torch.float32

    def __init__(
        self,
        directory: str | os.PathLike,
        device: torch.device | str | None = None,
        bf16: bool = False,
        spin_wait: bool = True,
    ):
        directory = Path(directory)
        model_file = exported_file(directory)
        if model_file is None:
            raise FileNotFoundError(
                f"{directory} holds no {', '.join(EXPORT_FILES)}: make one with `bigtransfer export`."
            )
        if bf16 and model_file.name != OPENVINO_FILE:
            raise ValueError(
                f"{directory} is a fixed {model_file.name} graph, so bf16 does not apply: export with --format "
                "openvino (which compiles in bf16 on CPUs that have it), or run the original model with --bf16."
            )
        self.directory, self.bf16, self.spin_wait = directory, bf16, spin_wait
        self.config = BitConfig.from_pretrained(directory)
        self.device = torch.device(device or "cpu")
        info_file = directory / EXPORT_INFO_FILE
        self.info: dict[str, Any] = read_json(info_file, REEXPORT) if info_file.is_file() else {}
        self._run, self.compute_precision, classes, self.onnx_session = _runner(model_file, self.device, bf16,
                                                                               spin_wait)  # fmt: skip
        if classes != self.config.num_labels:  # else a KeyError at predict, or every request of serve failing
            raise ValueError(
                f"{directory / 'config.json'} names {self.config.num_labels} labels, but {model_file.name} gives "
                f"{classes or 'no fixed number of'} scores per image: that config.json is not this export's; put its "
                f"own back, or {REEXPORT}."
            )

    def eval(self) -> ExportedClassifier:
        return self

    def to(self, device: torch.device | str) -> ExportedClassifier:
        device = torch.device(device)
        if device != self.device:
            return type(self)(self.directory, device, self.bf16, self.spin_wait)
        return self

    def outputs(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        expected = self.info.get("input_size")
        if expected and list(pixel_values.shape[-2:]) != expected:
            raise ValueError(
                f"This export takes {expected[0]}×{expected[1]} images, got {tuple(pixel_values.shape[-2:])}: "
                f"preprocess with the preprocessor_config.json in {self.directory}, or export again at this size."
            )
        return self._run(pixel_values)

    def __call__(self, pixel_values: torch.Tensor, **_: Any) -> ImageClassifierOutputWithNoAttention:
        return ImageClassifierOutputWithNoAttention(logits=self.outputs(pixel_values)[OUTPUT_NAME])

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features (BitModel's pooler_output, flattened), from exports that give them."""
        outputs = self.outputs(pixel_values)
        if FEATURES_NAME not in outputs:
            raise ValueError(
                f"{self.directory} computes logits only: use the original model for features, or export it with "
                "--format openvino, whose graph gives the pooled features as well."
            )
        return outputs[FEATURES_NAME].flatten(1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.directory)!r}, {self.info.get('precision', 'float32')})"
