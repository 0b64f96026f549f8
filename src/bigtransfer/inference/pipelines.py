"""`pipeline("image-classification" | "image-feature-extraction", model=…)`: images, paths or URLs in, ranked
labels or features out, with the options and output shapes of transformers' pipelines for the same tasks."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import torch

from .._util.device import resolve_device
from ..models.modeling import BitForImageClassification, BitModel
from ..processing.base import ProcessorBase
from ..processing.decoding import fetch_image, is_url
from ..processing.fast import BitImageProcessorFast
from ..runtime.classifier import load_classifier
from ..runtime.exported import ExportedClassifier, is_export_directory
from ..runtime.settings import InferenceSettings

logger = logging.getLogger(__name__)


FUNCTIONS = ("softmax", "sigmoid", "none")


def default_function(config: Any) -> str:
    """transformers' choice: none for regression, sigmoid for multi-label or one-output heads, else softmax."""
    if config.problem_type == "regression":
        return "none"
    if is_multi_label(config) or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


def class_scores(logits: torch.Tensor, config: Any, function_to_apply: str | None = None) -> torch.Tensor:
    """Scores from logits: `function_to_apply` ("softmax", "sigmoid", "none"), else the head's default."""
    function = str(function_to_apply or default_function(config)).lower()
    if function not in FUNCTIONS:
        raise ValueError(f"function_to_apply={function_to_apply!r}: use one of {', '.join(FUNCTIONS)}.")
    logits = logits.float()
    return {"softmax": logits.softmax(-1), "sigmoid": logits.sigmoid(), "none": logits}[function]


def ranked(scores: torch.Tensor, top_k: int | None, id2label: dict[int, str]) -> list[list[dict[str, Any]]]:
    """The `top_k` best labels of every row of scores, best first, as transformers' pipeline shapes them
    (top_k=None means its default, 5; more than there are labels gives them all)."""
    top = scores.topk(min(5 if top_k is None else top_k, scores.shape[-1]), dim=-1)
    return [
        [{"label": id2label[int(i)], "score": float(s)} for s, i in zip(values, indices)]
        for values, indices in zip(top.values, top.indices)
    ]


def at_or_above(ranked_rows: list[list[dict[str, Any]]], threshold: float) -> list[list[dict[str, Any]]]:
    """Of `ranked` rows, the labels whose score is at least `threshold`: a multi-label model's predicted set."""
    return [[label for label in row if label["score"] >= threshold] for row in ranked_rows]


def is_multi_label(config: Any) -> bool:
    return config.problem_type == "multi_label_classification"


class BitPipeline:
    """What both tasks share: one image or a list (paths, http(s) URLs, PIL images, arrays), preprocessed in
    batches (`settings.batch_size`), run in bf16 when `settings.bf16`. Options given at construction are
    defaults for every call.

    The model moves only to a `settings.device` asked for: without one it runs where it is, as transformers 4 left
    a model object (moving it would move the caller's model in place, CPU → CUDA or cuda:1 → cuda:0)."""

    options: tuple[str, ...] = ()

    def __init__(self, model: Any, processor: ProcessorBase, settings: InferenceSettings, **defaults: Any):
        self.device = model.device if settings.device is None else resolve_device(settings.device)
        self.model = (model if model.device == self.device else model.to(self.device)).eval()
        self.processor = processor
        self.batch_size = settings.batch_size
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=settings.bf16)
        self.defaults = self._checked(defaults)

    def _checked(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} does not take {', '.join(unknown)}: its options are {', '.join(self.options)}"
                " (from_pretrained arguments go in pipeline(..., model_kwargs={...}))."
            )
        return options

    def outputs(self, images: list[Any], timeout: float | None, processor_kwargs: dict | None = None):
        """The model's output for each batch of images."""
        for start in range(0, len(images), self.batch_size):
            chunk = [
                fetch_image(image, timeout) if is_url(image) else image
                for image in images[start : start + self.batch_size]
            ]
            pixels = self.processor(chunk, return_tensors="pt", **(processor_kwargs or {}))["pixel_values"]
            with torch.inference_mode(), self.autocast:
                yield self.model(pixels.to(self.device, self.model.dtype))

    def __call__(self, images: Any, **options: Any) -> list:
        single = not isinstance(images, (list, tuple))
        results = self.run([images] if single else list(images), **{**self.defaults, **self._checked(options)})
        return results[0] if single else results

    def run(self, images: list[Any], **options: Any) -> list:
        raise NotImplementedError


class ImageClassificationPipeline(BitPipeline):
    """Ranked labels per image: [{"label", "score"}, …], best first."""

    options = ("top_k", "function_to_apply", "timeout")

    def scores(self, images: list[Any], function_to_apply: str | None = None, timeout: float | None = None):
        """Class scores for a list of images, one row each."""
        logits = [output.logits.cpu() for output in self.outputs(images, timeout)]
        return class_scores(torch.cat(logits), self.model.config, function_to_apply)

    def run(self, images: list[Any], top_k: int | None = 5, function_to_apply: str | None = None,
            timeout: float | None = None) -> list:  # fmt: skip
        return ranked(self.scores(images, function_to_apply, timeout), top_k, self.model.config.id2label)


class ImageFeatureExtractionPipeline(BitPipeline):
    """Features per image as nested lists (tensors with return_tensors=True), each with a leading batch axis of
    one, as transformers returns them: the last hidden state (1, C, h, w), or with pool=True the pooled
    features (1, C, 1, 1)."""

    options = ("pool", "return_tensors", "timeout", "image_processor_kwargs")

    def run(self, images: list[Any], pool: bool = False, return_tensors: bool = False, timeout: float | None = None,
            image_processor_kwargs: dict | None = None) -> list:  # fmt: skip
        features = []
        for output in self.outputs(images, timeout, image_processor_kwargs):
            batch = output.pooler_output if pool else output.last_hidden_state
            features += [single[None].cpu() for single in batch]
        return features if return_tensors else [single.tolist() for single in features]


PIPELINES = {
    "image-classification": ImageClassificationPipeline,
    "image-feature-extraction": ImageFeatureExtractionPipeline,
}


def _model_for(task: str, model: Any, settings: InferenceSettings, model_kwargs: dict) -> Any:
    """The network a task runs: a classifier (or export directory) to classify, the base model for features."""
    if task == "image-classification":
        if isinstance(model, BitForImageClassification):
            return torch.compile(model) if settings.compile else model
        return load_classifier(model, settings, **model_kwargs)
    if isinstance(model, (BitModel, BitForImageClassification)):
        base = model.bit if isinstance(model, BitForImageClassification) else model
    else:
        if is_export_directory(model):
            raise ValueError(
                f"{model} is an export directory: it computes logits (and, exported for OpenVINO, pooled features, "
                "which `bigtransfer embed` reads); extract hidden states with the original model."
            )
        base = BitModel.from_pretrained(model, **model_kwargs).to(resolve_device(settings.device))
    return torch.compile(base) if settings.compile else base


def pipeline(
    task: str = "image-classification",
    model: str | os.PathLike | BitForImageClassification | BitModel | None = None,
    *,
    image_processor: ProcessorBase | None = None,
    processor: ProcessorBase | None = None,
    device: Any = None,
    batch_size: int = 8,
    compile: bool = False,
    bf16: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    **options: Any,
) -> BitPipeline:
    """A pipeline for "image-classification" or "image-feature-extraction", called like transformers' ones.

    model: anything `from_pretrained` takes, a model object (then also pass image_processor=), or for
    classification an export directory from `bigtransfer export` (run with ONNX Runtime or OpenVINO). image_processor
    (or processor): the preprocessing, by default the checkpoint's own. model_kwargs: passed to from_pretrained.
    options: call defaults — top_k, function_to_apply, timeout for classification; pool, return_tensors,
    timeout, image_processor_kwargs for features. compile: torch.compile the model (the first batch takes a
    minute or more); bf16: bfloat16 autocast.
    """
    if task not in PIPELINES:
        raise ValueError(f"Unsupported task {task!r}: bigtransfer pipelines do {' and '.join(map(repr, PIPELINES))}.")
    if model is None:
        raise ValueError("Pass model= a BiT checkpoint (directory, .npz, zoo name such as 'BiT-M-R50x1-ILSVRC2012').")
    if image_processor is not None and processor is not None and image_processor is not processor:
        raise ValueError("Pass the preprocessing once: image_processor= (transformers' name) or processor=.")
    processor = image_processor or processor
    if processor is None and isinstance(model, torch.nn.Module):
        raise ValueError("With a model object, also pass image_processor= (its BitImageProcessor or …Fast).")
    settings = InferenceSettings(device=device, batch_size=batch_size, compile=compile, bf16=bf16)
    network = _model_for(task, model, settings, model_kwargs or {})
    if device is None and isinstance(network, ExportedClassifier):
        # where the export runs (the CPU for OpenVINO), not where torch would choose
        settings = dataclasses.replace(settings, device=network.device)
    return PIPELINES[task](network, processor or BitImageProcessorFast.from_pretrained(model), settings, **options)
