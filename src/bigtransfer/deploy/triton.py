"""A BiT classifier as a Triton Inference Server model repository (which KServe's Triton runtime serves too):
OUT/<name>/config.pbtxt and labels.txt beside version 1, the checked ONNX export of `export.export_into` — a new
repository, or one more model in an existing one (`bigtransfer serve OUT` and Triton serve them all)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from .._util.files import atomic_directory
from ..checkpoints.hub import TRITON_CONFIG_NAME
from ..checkpoints.naming import check_model_name
from ..models.config import BitConfig
from ..processing.base import ProcessorBase
from ..runtime.discovery import is_single_model
from ..runtime.exported import INPUT_NAME, OUTPUT_NAME
from .export import TOLERANCE, ExportReport, export_into, input_size

if TYPE_CHECKING:
    from .quantize import Calibration

LABELS_FILE = "labels.txt"
VERSION = "1"
MAX_BATCH_SIZE = 32
MAX_DELAY_MS = 5.0


def model_config(
    name: str,
    config: BitConfig,
    size: tuple[int, int],
    *,
    max_batch_size: int,
    max_queue_delay_microseconds: int,
    instance_kind: str,
) -> str:
    """config.pbtxt: the graph's input and output as Triton names them (without the batch axis, which
    max_batch_size adds), the labels for the classification extension, and dynamic batching.

    No preferred_batch_size: Triton's documentation advises it only for models (TensorRT engines) that are
    faster at particular sizes; without it the batcher sends the largest batch it can form in the delay."""
    height, width = size
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ 3, {height}, {width} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {config.num_labels} ]
    label_filename: "{LABELS_FILE}"
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {max_queue_delay_microseconds}
}}
instance_group [
  {{
    kind: {instance_kind}
    count: 1
  }}
]
"""


def check_model_config(text: str) -> None:
    """Parse `text` with Triton's own ModelConfig schema, so that a mistake fails here rather than when the
    server loads the repository. The schema ships with tritonclient; without it the text goes unchecked."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return
    text_format.Parse(text, model_config_pb2.ModelConfig())


def labels_text(config: BitConfig) -> str:
    """labels.txt: one label per line, line i for class i (Triton's label_filename format)."""
    labels = [str(config.id2label[i]) for i in range(config.num_labels)]
    broken = [label for label in labels if "\n" in label or "\r" in label]
    if broken:
        raise ValueError(f"Labels that span lines cannot go into {LABELS_FILE}: rename {broken[0]!r} in id2label.")
    return "".join(f"{label}\n" for label in labels)


def check_repository(out: Path, name: str, overwrite: bool) -> None:
    """An existing `out` takes the model `name` if it is a folder that is not itself a model, and holds no model
    of that name unless it is to be replaced."""
    if not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a model repository: choose another output path.")
    if is_single_model(out):
        raise FileExistsError(f"{out} is a model folder, not a model repository: choose another output path.")
    if (out / name).exists() and not overwrite:
        raise FileExistsError(
            f"The repository {out} already holds a model named {name!r}: pass --overwrite to replace it, or "
            "--name NAME to add this one beside it."
        )


def export_triton(
    model: nn.Module,
    processor: ProcessorBase,
    out: str | Path,
    *,
    name: str,
    max_batch_size: int = MAX_BATCH_SIZE,
    max_delay_ms: float = MAX_DELAY_MS,
    gpu: bool = False,
    tolerance: float = TOLERANCE,
    overwrite: bool = False,
    int8: Calibration | None = None,
) -> ExportReport:
    """Write the Triton model repository `out` serving `model` as `name`, or add `name` to the repository `out`
    (its other models untouched; an existing `name` is replaced only with `overwrite`); the model appears only
    once the ONNX export has passed `export`'s check. Version 1 is a whole export directory, so `bigtransfer
    evaluate` measures the very graph that Triton serves."""
    check_model_name(name)
    if max_batch_size < 1 or max_delay_ms < 0:
        raise ValueError("max_batch_size must be at least 1 and max_delay_ms at least 0.")
    if model.config.num_labels == 0:
        raise ValueError("This model has no classification head (num_labels 0): export a classifier to Triton.")
    serving = {"max_batch_size": max_batch_size, "max_queue_delay_microseconds": round(max_delay_ms * 1000),
               "instance_kind": "KIND_GPU" if gpu else "KIND_CPU"}  # fmt: skip
    text = model_config(name, model.config, input_size(processor), **serving)
    check_model_config(text)
    labels = labels_text(model.config)
    out = Path(out)
    adding = out.exists()
    if adding:
        check_repository(out, name, overwrite)
    # a new repository appears whole; a model added to one appears whole beside the others
    with atomic_directory(out / name if adding else out, overwrite) as staging:
        folder = staging if adding else staging / name
        (folder / VERSION).mkdir(parents=True)
        report = export_into(folder / VERSION, model, processor, tolerance=tolerance, int8=int8)
        (folder / TRITON_CONFIG_NAME).write_text(text)
        (folder / LABELS_FILE).write_text(labels)
    triton = {"model_name": name, "version": VERSION, **serving}
    return dataclasses.replace(report, directory=out, format="triton", triton=triton)
