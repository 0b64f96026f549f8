"""`bigtransfer export`: a BiT classifier as a self-contained directory that needs no bigtransfer model code —
model.onnx (or openvino_model.xml/.bin, or model.pt2) with weight standardisation folded and a dynamic batch
axis, config.json (labels), preprocessor_config.json and export.json — checked against the eager model before
it is written."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .._util.files import atomic_directory
from .._util.package import optional_import, package_version
from .._util.quiet import quiet_logger
from ..processing.base import ProcessorBase
from ..runtime.exported import (
    EXPORT_INFO_FILE,
    FEATURES_NAME,
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAME,
    PT2_FILE,
    ExportedClassifier,
)
from ..runtime.openvino import OPENVINO_FILE, import_openvino
from .fold import fold_weight_standardization
from .openvino_ir import convert

if TYPE_CHECKING:
    from .quantize import Calibration

FORMATS = {"onnx": ONNX_FILE, "openvino": OPENVINO_FILE, "pt2": PT2_FILE}
QUANTIZABLE = ("onnx", "openvino")
TOLERANCE = 1e-4  # largest |logit difference| to eager that an fp32 export may show
CHECK_BATCHES = (1, 3)
EXTERNAL_DATA_BYTES = 1 << 30  # beyond this the weights go to model.onnx.data (protobuf stops at 2 GiB)


class ExportCheckError(ValueError):
    """The exported program's logits differ from the eager model's by more than the tolerance."""


class LogitsOnly(nn.Module):
    """The classifier as a tensor-in, tensor-out function, which is what exporters take."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(pixel_values, return_dict=True).logits


class LogitsAndFeatures(LogitsOnly):
    """Logits and the pooled features they are computed from: one graph serves predict and embed."""

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.classifier.bit(pixel_values, return_dict=True).pooler_output
        return self.classifier.classifier(pooled), pooled


def input_size(processor: ProcessorBase) -> tuple[int, int]:
    """(height, width) of the processor's output, which the exported graph is specialised to."""
    return processor.eval_transform().fixed_size()


def sample_pixel_values(processor: ProcessorBase, batch: int, seed: int = 0) -> torch.Tensor:
    """Smooth, image-like 8-bit pictures (random colour fields, upsampled) through the model's normalisation."""
    generator = torch.Generator().manual_seed(seed + batch)
    coarse = torch.randint(0, 256, (batch, 3, 8, 8), generator=generator).float()
    pixels = F.interpolate(coarse, size=input_size(processor), mode="bilinear", align_corners=False)
    return processor.eval_transform().normalise(pixels.round().to(torch.uint8))


def model_sample(model: nn.Module, processor: ProcessorBase, batch: int) -> torch.Tensor:
    """`sample_pixel_values` on the model's device: a CUDA model is traced and checked with CUDA inputs (CPU
    ones made export() of a CUDA model fail); the values are the same wherever they are."""
    return sample_pixel_values(processor, batch).to(next(model.parameters()).device)


def _batch_axis() -> dict[str, dict[int, Any]]:
    return {INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=65536)}}


# torch's exporter logs "torchvision is not installed. Skipping torchvision::nms" (and three more) when it looks
# for detection operators a BiT never uses.
TORCHVISION_NOTICES = "torch.onnx._internal.exporter._registration"


def export_onnx(model: nn.Module, path: Path, example: torch.Tensor, features: bool = False) -> None:
    """model.onnx at `path`; with `features`, the pooled features are a second output."""
    optional_import("onnxscript", "ONNX export needs onnx and onnxscript", "onnx")  # torch's ONNX exporter needs it
    large = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    with warnings.catch_warnings(), quiet_logger(TORCHVISION_NOTICES):
        warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecation notices from inside the exporter
        program = torch.onnx.export(
            (LogitsAndFeatures if features else LogitsOnly)(model).eval(), (example,), dynamo=True,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME, FEATURES_NAME] if features else [OUTPUT_NAME],
            dynamic_shapes=_batch_axis(), external_data=large, optimize=True, verbose=False,
        )  # fmt: skip
    program.save(str(path), external_data=large)


def export_openvino(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    """OpenVINO IR at `path`, converted from the ONNX graph (logits and pooled features) that torch's exporter
    writes: 4× quicker to convert than tracing the model again, and measured no slower to run."""
    import_openvino()  # before the ONNX export, which would be wasted without it
    onnx_file = path.with_name("converted-from.onnx")
    export_onnx(model, onnx_file, example, features=True)
    try:
        convert(onnx_file, path)
    finally:
        for written in path.parent.glob(onnx_file.name + "*"):
            written.unlink()


def runtime_versions(format: str) -> dict[str, str]:
    """The converter and runtime versions an export was made with, for export.json."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in {"onnx": ["onnx", "onnxruntime"], "openvino": ["openvino", "nncf"]}.get(format, []):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def export_pt2(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    torch.export.save(
        torch.export.export(LogitsOnly(model).eval(), (example,), dynamic_shapes=_batch_axis()), str(path)
    )


def largest_differences(model: nn.Module, exported: ExportedClassifier, processor: ProcessorBase) -> dict[str, float]:
    """max |eager − exported| of each exported output (logits; pooled features where exported) on sample images,
    at several batch sizes."""
    worst: dict[str, float] = {}
    for batch in CHECK_BATCHES:
        pixel_values = model_sample(model, processor, batch)
        with torch.inference_mode():
            expected = model.bit(pixel_values).pooler_output.float()
            expected = {OUTPUT_NAME: model.classifier(expected), FEATURES_NAME: expected}
        outputs = exported.outputs(pixel_values)  # on the CPU, where the check runs the export
        for name in expected.keys() & outputs.keys():
            difference = (outputs[name].float() - expected[name].cpu()).abs().max().item()
            worst[name] = max(worst.get(name, 0.0), difference)
    return worst


@dataclasses.dataclass
class ExportReport:
    directory: Path
    format: str
    precision: str
    input_size: tuple[int, int]
    max_abs_logit_difference: float
    max_abs_feature_difference: float | None = None  # OpenVINO exports give the pooled features too
    int8: dict[str, Any] | None = None
    seconds: float = 0.0
    triton: dict[str, Any] | None = None  # the serving settings of a Triton model repository

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "directory": str(self.directory), "input_size": list(self.input_size)}


def export(
    model: nn.Module,
    processor: ProcessorBase,
    out: str | Path,
    *,
    format: str = "onnx",
    tolerance: float = TOLERANCE,
    overwrite: bool = False,
    int8: Calibration | None = None,
) -> ExportReport:
    """Export `model` (a BitForImageClassification) with its `processor` to the directory `out`.

    The directory appears only once the export has passed its check: logits within `tolerance` of the eager
    model. `int8`, when given, is a `quantize.Calibration` and the saved model (ONNX or OpenVINO) is quantized
    with it.
    """
    out = Path(out)
    with atomic_directory(out, overwrite) as staging:
        report = export_into(staging, model, processor, format=format, tolerance=tolerance, int8=int8)
    return dataclasses.replace(report, directory=out)


def export_into(
    directory: Path,
    model: nn.Module,
    processor: ProcessorBase,
    *,
    format: str = "onnx",
    tolerance: float = TOLERANCE,
    int8: Calibration | None = None,
) -> ExportReport:
    """The checked export of `export`, written into the empty `directory`, which the caller stages with
    `atomic_directory` so that a failed check leaves nothing behind; other layouts (Triton's) wrap it too."""
    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}: use one of {', '.join(FORMATS)}.")
    if int8 is not None and format not in QUANTIZABLE:
        raise ValueError(f"int8 quantization is for ONNX Runtime and OpenVINO: use --format onnx or openvino with "
                         f"--int8, not {format}.")  # fmt: skip
    start = time.perf_counter()
    if next(model.parameters()).dtype != torch.float32:  # export and check in float32, leaving the caller's model be
        model = copy.deepcopy(model).float()
    was_training = model.training
    try:
        report = _export_checked(model.eval(), processor, directory, format, tolerance, int8)
    finally:
        model.train(was_training)
    report.seconds = round(time.perf_counter() - start, 1)
    return report


def _export_checked(model, processor, directory: Path, format: str, tolerance: float, int8) -> ExportReport:
    folded = fold_weight_standardization(model)
    height, width = input_size(processor)
    model.config.save_pretrained(directory)
    processor.save_pretrained(directory)
    example = model_sample(folded, processor, 2)
    exporter = {"onnx": export_onnx, "openvino": export_openvino, "pt2": export_pt2}[format]
    exporter(folded, directory / FORMATS[format], example)
    differences = largest_differences(model, ExportedClassifier(directory), processor)
    for name, difference in differences.items():
        if not difference <= tolerance:
            raise ExportCheckError(
                f"The exported {format} model's {name} differ from the eager model's by up to {difference:.3g} "
                f"(allowed {tolerance:g}); nothing was written. Please report this with the model's config.json; "
                "--format pt2 (or onnx) may export this layout faithfully meanwhile."
            )
    int8_report = int8.quantize_export(directory, model.config) if int8 is not None else None
    report = ExportReport(directory, format, "int8" if int8 is not None else "float32", (height, width),
                          differences[OUTPUT_NAME], differences.get(FEATURES_NAME), int8=int8_report)  # fmt: skip
    info = {
        **report.to_dict(),
        "bigtransfer": package_version(),
        "torch": torch.__version__,
        **runtime_versions(format),
    }
    for unknown_yet in ("directory", "seconds"):
        info.pop(unknown_yet)
    (directory / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return report
