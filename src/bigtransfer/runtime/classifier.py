"""Any MODEL as a classifier on a device: an export directory run by its runtime, anything else loaded as
BitForImageClassification. The one place that decides which, for predict, evaluate, embed, pipeline() and serve."""

from __future__ import annotations

import os
from typing import Any

import torch

from .._util.device import resolve_device
from ..models.modeling import BitForImageClassification
from .exported import ExportedClassifier, exported_file, is_export_directory
from .openvino import OPENVINO_FILE
from .settings import DEFAULT_SETTINGS, InferenceSettings


def load_classifier(
    model: str | os.PathLike, settings: InferenceSettings = DEFAULT_SETTINGS, **model_kwargs: Any
) -> Any:
    """A classifier on `settings.device`: an export directory (from `bigtransfer export`) runs with ONNX Runtime,
    OpenVINO (compiled in bf16 when `settings.bf16`) or torch.export, anything else loads as
    BitForImageClassification (torch.compile'd when `settings.compile`)."""
    if not isinstance(settings, InferenceSettings):
        raise TypeError(f"load_classifier(model, settings): pass InferenceSettings(device={settings!r}, …).")
    device = settings.device
    if device is None and getattr(exported_file(model), "name", None) == OPENVINO_FILE:
        device = "cpu"  # OpenVINO runs on the CPU, whether or not the machine has a GPU
    device = resolve_device(device)
    if is_export_directory(model):
        if settings.compile or model_kwargs:
            raise ValueError(
                f"{model} is an export directory: its graph is fixed at export time, so compile and config "
                "overrides do not apply. Use the original model for those."
            )
        return ExportedClassifier(model, device, bf16=settings.bf16, spin_wait=settings.spin_wait)
    loaded = BitForImageClassification.from_pretrained(model, **model_kwargs).to(device)
    return torch.compile(loaded) if settings.compile else loaded
