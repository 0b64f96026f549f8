"""`pipeline("image-classification", model=…)`: images or paths in, ranked labels out, shaped like transformers'."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from .loading import resolve_device
from .modeling import BitForImageClassification
from .processing_base import ProcessorBase
from .processing_fast import BitImageProcessorFast

logger = logging.getLogger(__name__)


def load_processor(
    model_name_or_path: str | os.PathLike, processor_class: type[ProcessorBase] = BitImageProcessorFast
) -> ProcessorBase:
    """The checkpoint's own preprocessing, or BiT's defaults (with a warning) when it ships none."""
    try:
        return processor_class.from_pretrained(model_name_or_path)
    except FileNotFoundError:
        logger.warning(
            "%s has no preprocessor_config.json: using %s() defaults (224 px, bicubic, CLIP mean/std); pass "
            "processor=… if the model was trained otherwise.",
            model_name_or_path,
            processor_class.__name__,
        )
        return processor_class()


def load_classifier(
    model: str | os.PathLike, device: Any = None, *, compile: bool = False, bf16: bool = False, **model_kwargs: Any
) -> Any:
    """A classifier on `device`: an export directory (from `bigtransfer export`) runs with ONNX Runtime or
    torch.export, anything else loads as BitForImageClassification (torch.compile'd when asked)."""
    from .deploy.runtime import ExportedClassifier, is_export_directory

    device = resolve_device(device)
    if is_export_directory(model):
        if compile or bf16 or model_kwargs:
            raise ValueError(
                f"{model} is an export directory: its graph is fixed at export time, so compile, bf16 and config "
                "overrides do not apply. Use the original model for those."
            )
        return ExportedClassifier(model, device)
    loaded = BitForImageClassification.from_pretrained(model, **model_kwargs).to(device)
    return torch.compile(loaded) if compile else loaded


def class_scores(logits: torch.Tensor, config: Any) -> torch.Tensor:
    """Softmax over the classes, or a sigmoid per class for multi-label heads."""
    logits = logits.float()
    return logits.sigmoid() if config.problem_type == "multi_label_classification" else logits.softmax(-1)


def ranked(scores: torch.Tensor, top_k: int, id2label: dict[int, str]) -> list[list[dict[str, Any]]]:
    """The `top_k` best labels of every row of scores, best first, as transformers' pipeline shapes them."""
    top = scores.topk(min(top_k, scores.shape[-1]), dim=-1)
    return [
        [{"label": id2label[int(i)], "score": float(s)} for s, i in zip(values, indices)]
        for values, indices in zip(top.values, top.indices)
    ]


class ImageClassificationPipeline:
    """Classify images with a BiT model; scores are softmax (sigmoid for multi-label heads)."""

    def __init__(
        self, model: Any, processor: ProcessorBase, device: Any = None, batch_size: int = 8, bf16: bool = False
    ):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.batch_size = batch_size
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def scores(self, images: list[Any]) -> torch.Tensor:
        """Class scores for a list of images (paths, PIL images, arrays), processed in batches."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = self.processor(images[start : start + self.batch_size], return_tensors="pt")["pixel_values"]
            with torch.inference_mode(), self.autocast:
                logits = self.model(batch.to(self.device, self.model.dtype)).logits
            chunks.append(class_scores(logits, self.model.config).cpu())
        return torch.cat(chunks)

    def __call__(self, images: Any, top_k: int = 5) -> list:
        single = not isinstance(images, (list, tuple))
        results = ranked(self.scores([images] if single else list(images)), top_k, self.model.config.id2label)
        return results[0] if single else results


def pipeline(
    task: str = "image-classification",
    model: str | os.PathLike | BitForImageClassification | None = None,
    processor: ProcessorBase | None = None,
    device: Any = None,
    batch_size: int = 8,
    *,
    compile: bool = False,
    bf16: bool = False,
    **model_kwargs: Any,
) -> ImageClassificationPipeline:
    """model: anything `from_pretrained` takes, a BitForImageClassification (then also pass processor=), or an
    export directory from `bigtransfer export` (run with ONNX Runtime). compile: torch.compile the model (the
    first batch takes a minute or more); bf16: bfloat16 autocast."""
    if task != "image-classification":
        raise ValueError(f"Unsupported task {task!r}: bigtransfer pipelines do 'image-classification'.")
    if model is None:
        raise ValueError("Pass model= a BiT checkpoint (directory, .npz, zoo name such as 'BiT-M-R50x1-ILSVRC2012').")
    if isinstance(model, BitForImageClassification):
        if processor is None:
            raise ValueError("With a model object, also pass processor= (its BitImageProcessor or …Fast).")
        return ImageClassificationPipeline(
            torch.compile(model) if compile else model, processor, device, batch_size, bf16
        )
    loaded = load_classifier(model, device, compile=compile, bf16=bf16, **model_kwargs)
    return ImageClassificationPipeline(loaded, processor or load_processor(model), device, batch_size, bf16)
