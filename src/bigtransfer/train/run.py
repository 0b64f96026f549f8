"""A run directory: never overwritten without --resume, and closed with the saved model and its report."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..loading import resolve_device, resolve_workers
from ..modeling import BitForImageClassification
from ..processing import BitImageProcessor
from .data import ImageDataset, load_dataset
from .evaluate import evaluate, plot_confusion, plot_curves, write_json
from .loop import CHECKPOINT, METRICS, Speed, append_metrics

MODEL_DIR = "model"


def prepare_output(out: Path, resume: bool) -> None:
    """Never overwrite a run: an existing run directory needs --resume."""
    if out.exists() and any((out / name).exists() for name in (CHECKPOINT, METRICS, MODEL_DIR)) and not resume:
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another --out.")


def plan_of(what: str, dataset: ImageDataset, eval_set: ImageDataset | None, *, shots: int | None, batch_split: int,
            device: Any, bf16: bool, workers: int | None, out: Path, **recipe: Any) -> dict[str, Any]:  # fmt: skip
    """What a training run is about to do (`recipe`: its "rule" or "schedule" and crop), for `on_plan`."""
    return {"what": what, "images": len(dataset), "classes": dataset.classes, "shots": shots,
            "eval_images": len(eval_set) if eval_set is not None else None, **recipe, "batch_split": batch_split,
            "device": str(resolve_device(device)), "bf16": bf16, "workers": resolve_workers(workers),
            "out": str(out)}  # fmt: skip


def show_plan(plan: dict[str, Any], on_plan: Callable[[dict[str, Any]], None] | None) -> None:
    """Hand the plan to `on_plan` once: on the first process of a multi-process run."""
    if on_plan is not None and int(os.environ.get("RANK", "0")) == 0:
        on_plan(plan)


def as_dataset(data: str | os.PathLike | ImageDataset) -> ImageDataset:
    return data if isinstance(data, ImageDataset) else load_dataset(data)


def finish_run(
    model: BitForImageClassification,
    processor: BitImageProcessor,
    out: Path,
    summary: dict[str, Any],
    metrics: dict[str, Any],
    evaluation: Callable[[], dict[str, Any]] | None,
) -> dict[str, Any]:
    """On rank 0: save model/ (with the eval transform), evaluate, write plots and metrics.json.

    Every other rank returns what it has.
    """
    if summary["rank"] != 0:
        return summary
    model.save_pretrained(out / MODEL_DIR)
    processor.save_pretrained(out / MODEL_DIR)
    reported = ("skipped_images", "steps", "seconds", "workers", "cuda_peak_memory_gib")
    metrics = {**metrics, **{k: summary[k] for k in reported if k in summary}, "model_dir": str(out / MODEL_DIR)}
    if evaluation is not None:
        result = evaluation()
        metrics["eval"] = result
        append_metrics(out / METRICS, {"step": summary["steps"], "eval_top1": result["top1"]})
        plot_confusion(result["confusion"], [model.config.id2label[i] for i in range(model.config.num_labels)],
                       out / "confusion.png")  # fmt: skip
    plot_curves(out / METRICS, out / "curves.png")
    write_json(out / "metrics.json", metrics)
    return metrics


def evaluation_of(
    model: torch.nn.Module, eval_set: ImageDataset | None, processor: BitImageProcessor, speed: Speed, bf16: bool
) -> Callable[[], dict[str, Any]] | None:
    """Evaluation during and after a run: same loading workers and precision as training, compiled once if asked."""
    if eval_set is None:
        return None
    evaluated = torch.compile(model) if speed.compile else model
    return functools.partial(evaluate, evaluated, eval_set, processor, workers=speed.workers, bf16=bf16,
                             channels_last=speed.channels_last)  # fmt: skip
