"""Upstream pre-training from scratch with BiT's upstream recipe, to make your own transferable model."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._util.files import check_writable
from .._util.text import parameter_count
from ..data.datasets import LabelledImages
from ..data.sources import as_dataset
from ..inference.few_shot import FewShotProtocol, fewshot
from ..models.config import BitConfig
from ..models.modeling import BitForImageClassification, BitPreTrainedModel
from ..processing.base import ProcessorBase
from ..runtime.settings import InferenceSettings
from .augment import eval_processor, inception_augment
from .loop import Monitor, Regime
from .losses import RANGES as LOSS_RANGES
from .losses import class_weights_for, loss_option_problems, loss_record
from .run import RunOptions, TrainingJob, run_training
from .run_file import run_file_of
from .schedules import upstream_schedule


@dataclasses.dataclass(frozen=True)
class FewShotCheck:
    """Linear few-shot accuracy measured every `every` steps of pre-training (on rank 0), as big_vision
    monitors an upstream: how well its features transfer to `eval_data`'s classes, long before a fine-tuning
    run could say."""

    data: str | os.PathLike | LabelledImages
    eval_data: str | os.PathLike | LabelledImages
    every: int
    classes: list[str] | None = None
    shots: tuple[int, ...] = (1, 5, 10)
    seeds: int = 3

    @classmethod
    def from_options(
        cls, every: int | None, data: str | None, eval_data: str | None, classes: str | None, shots: Sequence[int]
    ) -> FewShotCheck | None:
        """The check that the --fewshot-* options ask for (classes as comma-separated text); None without `every`."""
        if not every:
            return None
        if not (data and eval_data):
            raise ValueError("--fewshot-every needs --fewshot-data and --fewshot-eval-data (a downstream dataset).")
        return cls(data, eval_data, every, classes.split(",") if classes else None, tuple(shots))

    def monitor(self, model: BitPreTrainedModel, processor: ProcessorBase, options: RunOptions) -> Monitor:
        """A loop Monitor logging fewshot_<k>shot (the mean over seeds), measured with the run's loading workers
        and precision."""
        train_set, test_set = as_dataset(self.data), as_dataset(self.eval_data)  # read once, measured often
        protocol = FewShotProtocol(shots=self.shots, seeds=self.seeds)
        settings = InferenceSettings(workers=options.speed.workers, bf16=options.bf16)

        def measure(step: int) -> dict[str, float]:
            result = fewshot(model, train_set, test_set, classes=self.classes, protocol=protocol, settings=settings,
                             processor=processor, progress=False)  # fmt: skip
            return {f"fewshot_{shots}shot": row["mean"] for shots, row in result["shots"].items()}

        return Monitor(self.every, measure, name="fewshot")


@dataclasses.dataclass(frozen=True)
class Pretraining:
    """BiT's upstream recipe, scaled to the data: SGD momentum 0.9, lr 0.03·batch/256, weight decay 1e-4, linear
    warm-up, ÷10 at 1/3, 2/3 and 8/9 of training, Inception crop + flip at `crop` pixels."""

    epochs: float = 90
    warmup_epochs: float = 5
    batch_size: int = 256
    crop: int = 224
    loss: str | None = None  # "softmax" or "sigmoid" (BiT's upstream objective); None: sigmoid for multi-label data
    label_smoothing: float = 0.0  # ε, opt-in (BiT's recipe has none); losses.py says how each loss applies it
    class_weights: str | None = None  # "balanced" or a file of weights by class name (losses.py)
    eval_every: int | None = None  # held-out top-1 (mAP) on eval_data every N steps; not beside a few-shot check

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"Pretraining: loss={self.loss!r} is not one of {', '.join(map(str, LOSSES))}.")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"Pretraining: eval_every={self.eval_every} out of range (a count ≥ 1).")
        bad = loss_option_problems(self.label_smoothing, self.class_weights)
        if bad:
            raise ValueError(f"Pretraining: {', '.join(bad)} out of range ({LOSS_RANGES}).")


LOSSES = (None, "softmax", "sigmoid")


def pretrain(
    data: str | os.PathLike | LabelledImages,
    config: BitConfig,
    eval_data: str | os.PathLike | LabelledImages | None = None,
    *,
    recipe: Pretraining = Pretraining(),
    run: RunOptions = RunOptions(out="bigtransfer-upstream"),
    fewshot_check: FewShotCheck | None = None,
) -> dict[str, Any]:
    """Train `config`'s architecture from scratch on `data`; the result is saved as a model directory in `run.out`.

    `fewshot_check` adds linear few-shot accuracy on a downstream dataset to the metrics every N steps and at
    the end (metrics.json "fewshot", and the curves). The run options are `finetune`'s.
    """
    if not run.dry_run:
        check_writable(Path(run.out))  # before the data is read
    written = run_file_of("pretrain", recipe=recipe, run=run, data=data, eval_data=eval_data, architecture=config,
                          fewshot_check=fewshot_check)  # fmt: skip
    dataset = as_dataset(data)
    dataset.check_trainable()
    loss = recipe.loss or ("sigmoid" if dataset.multi_label else "softmax")
    if dataset.multi_label and loss != "sigmoid":
        raise ValueError("Multi-label data trains with --loss sigmoid: softmax needs one class per image.")
    weights = class_weights_for(recipe.class_weights, dataset)
    losses = loss_record(recipe.label_smoothing, weights, dataset.classes)
    head = {"problem_type": "multi_label_classification"} if dataset.multi_label else {}  # sigmoid scores in predict
    config = BitConfig.from_dict(config.to_dict(), id2label=dict(enumerate(dataset.classes)), **head)
    torch.manual_seed(run.seed)
    model = BitForImageClassification(config)
    schedule = upstream_schedule(len(dataset), recipe.epochs, recipe.batch_size, recipe.warmup_epochs)
    processor = eval_processor(recipe.crop)
    augment = functools.partial(inception_augment, crop=recipe.crop, flip=True)
    layout = "-".join(map(str, config.depths)) + f", width ×{config.width_factor}" * (config.width_factor != 1)
    job = TrainingJob(
        what=f"pre-train a BiT ({layout}, {parameter_count(model.num_parameters())} parameters) from scratch",
        network=model, train_set=dataset, eval_set=as_dataset(eval_data) if eval_data is not None else None,
        regime=Regime(schedule, augment, image_size=recipe.crop, loss=loss, label_smoothing=recipe.label_smoothing,
                      class_weights=weights),
        processor=processor,
        fingerprint={"config": config.to_json_string(), "classes": dataset.classes, "examples": len(dataset),
                     **dataset.resume_identity(), "seed": run.seed, "schedule": dataclasses.asdict(schedule), "crop": recipe.crop,
                     **({"loss": loss} if loss != "softmax" else {}), **losses},
        report={"schedule": dataclasses.asdict(schedule), "objective": loss, **losses}, plan_details={"crop": recipe.crop},
        extra_monitor=fewshot_check.monitor if fewshot_check else None, config=written,
        eval_every=recipe.eval_every,
    )  # fmt: skip
    return run_training(job, run)
