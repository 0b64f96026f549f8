"""A run directory: never overwritten without --resume, and closed with the saved model and its report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..modeling import BitForImageClassification
from ..processing import BitImageProcessor
from .data import ImageDataset, load_dataset
from .distributed import shutdown
from .evaluate import evaluate, plot_confusion, plot_curves, write_json
from .loop import CHECKPOINT, METRICS, append_metrics

MODEL_DIR = "model"


def prepare_output(out: Path, resume: bool) -> None:
    """Never overwrite a run: an existing run directory needs --resume."""
    if out.exists() and any((out / name).exists() for name in (CHECKPOINT, METRICS, MODEL_DIR)) and not resume:
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another --out.")


def as_dataset(data: str | os.PathLike | ImageDataset) -> ImageDataset:
    return data if isinstance(data, ImageDataset) else load_dataset(data)


def finish_run(
    model: BitForImageClassification,
    processor: BitImageProcessor,
    out: Path,
    summary: dict[str, Any],
    metrics: dict[str, Any],
    eval_set: ImageDataset | None,
) -> dict[str, Any]:
    """On rank 0: save model/ (with the eval transform), evaluate, write plots and metrics.json.

    Other ranks only leave the process group; every rank returns what it has.
    """
    if summary["rank"] != 0:
        shutdown()
        return summary
    model.save_pretrained(out / MODEL_DIR)
    processor.save_pretrained(out / MODEL_DIR)
    metrics = {**metrics, "skipped_images": summary["skipped_images"], "steps": summary["steps"],
               "seconds": summary["seconds"], "model_dir": str(out / MODEL_DIR)}  # fmt: skip
    if eval_set is not None:
        result = evaluate(model, eval_set, processor)
        metrics["eval"] = result
        append_metrics(out / METRICS, {"step": summary["steps"], "eval_top1": result["top1"]})
        plot_confusion(result["confusion"], [model.config.id2label[i] for i in range(model.config.num_labels)],
                       out / "confusion.png")  # fmt: skip
    plot_curves(out / METRICS, out / "curves.png")
    write_json(out / "metrics.json", metrics)
    shutdown()
    return metrics
