"""How a model runs over images: one settings object that every inference entry point takes (prediction,
evaluation, pooled features, few-shot, pipelines, the CLI), as `train.Speed` is for a training run."""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from typing import Any

import torch

from .._util.device import parse_device


@dataclasses.dataclass(frozen=True, kw_only=True)
class InferenceSettings:
    """Settings that change how fast a model runs and the memory it takes, not what it computes: `workers` never
    changes a result; `batch_size`, `channels_last`, `bf16` and `compile` change only floating-point rounding.

    `device` and `compile` apply where a model is loaded (`load_classifier`, `fewshot` or `pipeline()` given a
    name, the CLI): `predict_logits`, `pooled_features` and `evaluate` run a model object where it is, as it is."""

    batch_size: int = 64  # images per forward pass
    device: str | int | torch.device | None = None  # None: CUDA when available (an OpenVINO export: the CPU)
    workers: int | None = None  # loading processes; None: `default_workers()`, 0: load in the main process
    bf16: bool = False  # bfloat16 autocast; an OpenVINO export compiles in bf16 where the CPU has it
    compile: bool = False  # torch.compile the model: a slow first batch, then faster ones
    channels_last: bool | None = None  # None: `data.device.use_channels_last`'s default for the device
    # ONNX Runtime's threads spin after each run, waiting for the next: the fastest for back-to-back batches; a
    # server turns it off, so that the idle model leaves the cores to the threads decoding its requests
    spin_wait: bool = True

    def __post_init__(self) -> None:
        if not is_whole_number(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a whole number ≥ 1, got {self.batch_size!r}.")
        if self.workers is not None and (not is_whole_number(self.workers) or self.workers < 0):
            raise ValueError(
                f"workers must be a whole number ≥ 0 (0 loads in the main process) or None, got {self.workers!r}."
            )
        switches = {"bf16": self.bf16, "compile": self.compile, "spin_wait": self.spin_wait}
        if self.channels_last is not None:  # None: the device's default layout
            switches["channels_last"] = self.channels_last
        for name, value in switches.items():
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}.")
        if self.device is not None:
            parse_device(self.device)


def is_whole_number(value: Any) -> bool:
    """An int, or NumPy's: not a bool, a float or a string."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


DEFAULT_SETTINGS = InferenceSettings()


def with_old_keywords(
    call: str, keywords: dict[str, Any], accepted: tuple[str, ...], *, stacklevel: int = 3, **groups: Any
) -> tuple[Any, ...]:
    """The settings objects `groups` (parameter name → frozen dataclass) with `keywords` folded in: the keywords
    `call` took one by one before they were grouped (`accepted`), which still work for one release, with a
    DeprecationWarning naming the new spelling (`stacklevel` 3: at the line that called `call`). Any other
    keyword is the TypeError Python gives for an unknown one."""
    if not keywords:
        return tuple(groups.values())
    unknown = sorted(set(keywords) - set(accepted))
    if unknown:
        raise TypeError(f"{call}() got an unexpected keyword argument {unknown[0]!r}")
    owner = {field.name: parameter for parameter, group in groups.items() for field in dataclasses.fields(group)}
    moved = {parameter: {name: keywords[name] for name in keywords if owner[name] == parameter} for parameter in groups}
    spelled = ", ".join(
        f"{parameter}={type(groups[parameter]).__name__}({', '.join(f'{name}=…' for name in names)})"
        for parameter, names in moved.items()
        if names
    )
    warnings.warn(f"{call}({', '.join(f'{name}=' for name in keywords)}) is deprecated: pass {spelled}; the "
                  "separate keywords go away in the next release.", DeprecationWarning, stacklevel=stacklevel)  # fmt: skip
    return tuple(dataclasses.replace(group, **moved[parameter]) for parameter, group in groups.items())
