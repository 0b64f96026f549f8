"""`bigtransfer bench`: which runtime runs a model fastest on *this* machine. The model is exported into a scratch
folder for each runtime asked for (ONNX Runtime, OpenVINO; float32, and int8 / bf16 when asked) and every path
is timed in one process, in alternating blocks of warm calls, against eager PyTorch on the same images — the
only comparison that survives the noise of shared machines and the differences between CPUs."""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._util.package import package_version
from ..data.datasets import ImageDataset
from ..data.eval_batches import input_batches
from ..models.modeling import BitForImageClassification
from ..processing.base import ProcessorBase
from ..processing.exact import BitImageProcessor
from ..runtime.exported import ExportedClassifier
from .export import export, input_size
from .quantize import Calibration

RUNTIMES = ("torch", "onnx", "openvino")
REFERENCES = ("transformers",)  # timed as well when asked for: the library users compare against
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
SYNTHETIC_IMAGES = 64
NO_BF16 = "this CPU has neither AVX512_BF16 nor AMX"


@dataclasses.dataclass
class Contender:
    runtime: str
    precision: str
    logits: Callable[[torch.Tensor], torch.Tensor]

    @property
    def name(self) -> str:
        return f"{self.runtime} {self.precision}"


def cpu_description() -> dict[str, Any]:
    """The CPU the figures belong to: its name, core count and the vector/matrix extensions that decide int8 and
    bf16 speed (Linux's /proc/cpuinfo; elsewhere the name only)."""
    name, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {"name": name, "threads": torch.get_num_threads(), "flags": [flag for flag in CPU_FLAGS if flag in flags]}


def versions() -> dict[str, str]:
    found = {"bigtransfer": package_version(), "torch": torch.__version__}
    for module in ("onnxruntime", "openvino", "transformers"):
        with contextlib.suppress(ImportError):
            found[module] = __import__(module).__version__
    return found


def synthetic_images(processor: ProcessorBase, count: int = SYNTHETIC_IMAGES, seed: int = 0) -> ImageDataset:
    """Smooth random colour fields at 1.25× the model's input size: image-like statistics without a dataset, for
    timing and for calibrating an int8 model whose accuracy is not the question."""
    height, width = input_size(processor)
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 256, (count, 3, 8, 8), generator=generator).float()
    size = (round(height * 1.25), round(width * 1.25))
    pictures = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False).round().to(torch.uint8)
    arrays = pictures.permute(0, 2, 3, 1).contiguous().numpy()
    return ImageDataset(np.zeros(count, dtype=np.int64), ["picture"], "synthetic pictures", arrays=arrays)


def input_batch(images: ImageDataset, processor: ProcessorBase, batch_size: int) -> torch.Tensor:
    """`batch_size` preprocessed images, the dataset's first ones, repeated when it has fewer."""
    indices = np.arange(batch_size) % len(images)
    batches = input_batches(images.subset(indices), processor.eval_transform(), batch_size, torch.device("cpu"),
                            workers=0)  # fmt: skip
    pixel_values = next(batch.pixel_values for batch in batches if batch.pixel_values is not None)
    if len(pixel_values) != batch_size:
        raise ValueError(f"Only {len(pixel_values)} of the first {batch_size} images could be read.")
    return pixel_values


def _eager(model: torch.nn.Module, bf16: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    def logits(pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(pixel_values).logits

    return logits


def has_bf16(cpu: dict[str, Any]) -> bool:
    """Whether the CPU computes bf16 natively (AVX512_BF16 or AMX); elsewhere autocast emulates it, slowly."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu["flags"]))


def contenders(
    model: BitForImageClassification,
    processor: ProcessorBase,
    scratch: Path,
    runtimes: list[str],
    calibration: ImageDataset,
    *,
    int8: bool = False,
    bf16: bool = False,
    native_bf16: bool = False,
    calibration_size: int = 64,
) -> tuple[list[Contender], list[dict[str, str]]]:
    """Every path to time, eager PyTorch float32 first (the baseline), and the ones this machine cannot run (its
    CPU lacks bf16: not `native_bf16`, or the runtime is not installed), with the reason. `calibration`: the
    images int8 is calibrated on."""
    found, skipped = [Contender("torch", "float32", _eager(model))], []
    if bf16 and "torch" in runtimes:
        if native_bf16:
            found.append(Contender("torch", "bfloat16", _eager(model, bf16=True)))
        else:
            skipped.append({"path": "torch bfloat16", "reason": NO_BF16})
    if "transformers" in runtimes:
        try:
            import transformers
        except ImportError:
            skipped.append({"path": "transformers", "reason": "not installed: pip install transformers"})
        else:
            model.save_pretrained(scratch / "transformers")
            reference = transformers.BitForImageClassification.from_pretrained(scratch / "transformers").eval()
            found.append(Contender("transformers", "float32", _eager(reference)))
    for runtime in ("onnx", "openvino"):
        if runtime not in runtimes:
            continue
        try:
            export(model, processor, scratch / runtime, format=runtime)
        except ImportError as missing:  # compare what is installed; say how to add the rest
            skipped.append({"path": runtime, "reason": str(missing)})
            continue
        found.append(Contender(runtime, "float32", _exported_logits(ExportedClassifier(scratch / runtime))))
        if bf16 and runtime == "openvino":
            compiled = ExportedClassifier(scratch / runtime, bf16=True)
            if compiled.compute_precision == "bfloat16":
                found.append(Contender(runtime, "bfloat16", _exported_logits(compiled)))
            else:
                skipped.append({"path": "openvino bfloat16", "reason": NO_BF16})
        if int8:
            size = min(calibration_size, len(calibration))
            plan = Calibration(calibration, processor, size=size, heldout=0, workers=0)
            try:
                export(model, processor, scratch / f"{runtime}-int8", format=runtime, int8=plan)
            except ImportError as missing:  # the quantizer (NNCF) is a package of its own
                skipped.append({"path": f"{runtime} int8", "reason": str(missing)})
                continue
            found.append(Contender(runtime, "int8", _exported_logits(ExportedClassifier(scratch / f"{runtime}-int8"))))
    return found, skipped


def _exported_logits(exported: ExportedClassifier) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda pixel_values: exported(pixel_values).logits


def block_ms(logits: Callable[[torch.Tensor], Any], pixel_values: torch.Tensor, calls: int) -> float:
    """ms per call over `calls` timed calls, after one untimed call that brings this model's weights back into the
    caches (the other contenders evicted them)."""
    logits(pixel_values)
    if pixel_values.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        logits(pixel_values)
    if pixel_values.device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / calls


def alternate(
    functions: dict[str, Callable[[torch.Tensor], Any]], pixel_values: torch.Tensor, rounds: int, calls: int
) -> dict[str, list[float]]:
    """ms per call of each function in each round: rounds × (one block of warm calls per function, in turn), so
    that drifts in the machine's speed touch every function alike."""
    timings: dict[str, list[float]] = {name: [] for name in functions}
    with torch.inference_mode():
        for function in functions.values():
            function(pixel_values)  # warm-up (and any compilation)
        for _ in range(rounds):
            for name, function in functions.items():
                timings[name].append(block_ms(function, pixel_values, calls))
    return timings


def measure(found: list[Contender], pixel_values: torch.Tensor, rounds: int, calls: int) -> Iterator[dict[str, Any]]:
    """One row per contender at this batch: median and range of ms per batch, images/s, speed-up over eager
    PyTorch float32, and how far its logits are from eager's."""
    with torch.inference_mode():
        expected = found[0].logits(pixel_values).float()
        outputs = {contender.name: contender.logits(pixel_values).float() for contender in found}
    timings = alternate({contender.name: contender.logits for contender in found}, pixel_values, rounds, calls)
    baseline = statistics.median(timings[found[0].name])
    reference = next((statistics.median(timings[c.name]) for c in found if c.runtime in REFERENCES), None)
    batch_size = len(pixel_values)
    for contender in found:
        times, logits = timings[contender.name], outputs[contender.name]
        median = statistics.median(times)
        row = {
            "runtime": contender.runtime,
            "precision": contender.precision,
            "batch_size": batch_size,
            "ms_per_batch": round(median, 3),
            "ms_range": [round(min(times), 3), round(max(times), 3)],
            "images_per_s": round(1000 * batch_size / median, 2),
            "speedup": round(baseline / median, 3),
            "max_abs_logit_difference": float((logits - expected).abs().max()),
            "top1_agreement": float((logits.argmax(-1) == expected.argmax(-1)).float().mean()),
        }
        if reference is not None:
            row["speedup_over_reference"] = round(reference / median, 3)
        yield row


def bench(
    model: str,
    *,
    batch_sizes: list[int] = (1, 8),
    runtimes: list[str] = RUNTIMES,
    int8: bool = False,
    bf16: bool = False,
    data: ImageDataset | None = None,
    rounds: int = 5,
    calls: int = 3,
    calibration_size: int = 64,
) -> dict[str, Any]:
    """Time `model` (anything from_pretrained takes) on every runtime in `runtimes`; see the module docstring.
    `data`: images to time on and calibrate int8 with (default: synthetic pictures)."""
    unknown = sorted(set(runtimes) - set(RUNTIMES) - set(REFERENCES))
    if unknown:
        raise ValueError(f"Unknown runtime {', '.join(unknown)}: use {', '.join(RUNTIMES + REFERENCES)}.")
    classifier = BitForImageClassification.from_pretrained(model).eval()
    processor = BitImageProcessor.from_pretrained(model)
    images = data if data is not None else synthetic_images(processor)
    cpu = cpu_description()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bigtransfer-bench-") as scratch:
        found, skipped = contenders(classifier, processor, Path(scratch), list(runtimes), images, int8=int8,
                                    bf16=bf16, native_bf16=has_bf16(cpu), calibration_size=calibration_size)  # fmt: skip
        for batch_size in batch_sizes:
            rows += measure(found, input_batch(images, processor, batch_size), rounds, calls)
    return {
        "model": str(model),
        "input_size": list(input_size(processor)),
        "images": images.source,
        "cpu": cpu,
        "versions": versions(),
        "rounds": rounds,
        "calls": calls,
        "results": rows,
        "skipped": skipped,
    }
