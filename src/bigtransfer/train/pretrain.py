"""Upstream pre-training from scratch with BiT's upstream recipe, to make your own transferable model."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import BitConfig
from ..modeling import BitForImageClassification
from .augment import eval_processor, inception_augment
from .data import ImageDataset
from .distributed import process_group
from .few_shot import FewShotCheck
from .loop import METRICS, Recipe, Saving, Speed, append_metrics, train
from .run import as_dataset, evaluation_of, finish_run, plan_of, prepare_output, show_plan


@dataclasses.dataclass(frozen=True)
class UpstreamSchedule:
    """SGD momentum 0.9, lr 0.03·batch/256, weight decay 1e-4, linear warm-up, ÷10 at 1/3, 2/3 and 8/9."""

    steps: int
    warmup_steps: int
    batch_size: int
    base_lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    mixup_alpha: float = 0.0

    def lr(self, step: int) -> float | None:
        if step >= self.steps:
            return None
        if step < self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        return self.base_lr / 10 ** sum(1 for fraction in (1 / 3, 2 / 3, 8 / 9) if step >= fraction * self.steps)


def upstream_schedule(
    dataset_size: int, epochs: float, batch_size: int, warmup_epochs: float = 5.0
) -> UpstreamSchedule:
    steps_per_epoch = max(1, dataset_size // batch_size)
    steps = max(1, round(epochs * steps_per_epoch))
    warmup = min(round(warmup_epochs * steps_per_epoch), steps // 3)
    return UpstreamSchedule(steps, warmup, batch_size, base_lr=0.03 * batch_size / 256)


def pretrain(
    data: str | os.PathLike | ImageDataset,
    config: BitConfig,
    *,
    out: str | os.PathLike = "bigtransfer-upstream",
    eval_data: str | os.PathLike | ImageDataset | None = None,
    epochs: float = 90,
    warmup_epochs: float = 5,
    batch_size: int = 256,
    batch_split: int = 1,
    crop: int = 224,
    seed: int = 0,
    resume: bool = False,
    save_every: int | None = None,
    device: str | None = None,
    bf16: bool = False,
    progress: bool = True,
    workers: int | None = None,
    compile: bool = False,
    channels_last: bool | None = None,
    grad_checkpointing: bool = False,
    fewshot_check: FewShotCheck | None = None,
    on_plan: Callable[[dict[str, Any]], None] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Train `config`'s architecture from scratch on `data`; the result is saved as a model directory.

    `fewshot_check` adds linear few-shot accuracy on a downstream dataset to the metrics every N steps and at
    the end (metrics.json "fewshot", and the curves). `on_plan` and `dry_run` as in `finetune`.

    `workers`, `compile`, `channels_last` and `grad_checkpointing` change speed or memory, not the result (as in
    `finetune`).
    """
    out = Path(out)
    prepare_output(out, resume)
    dataset = as_dataset(data)
    dataset.check_trainable()
    config = BitConfig.from_dict(config.to_dict(), id2label=dict(enumerate(dataset.classes)))
    torch.manual_seed(seed)
    model = BitForImageClassification(config)
    if grad_checkpointing:
        model.gradient_checkpointing_enable()
    schedule = upstream_schedule(len(dataset), epochs, batch_size, warmup_epochs)
    recipe = Recipe(schedule, functools.partial(inception_augment, crop=crop, flip=True), image_size=crop)
    speed = Speed(workers, compile, channels_last, batch_split)
    fingerprint = {"config": config.to_json_string(), "classes": dataset.classes, "examples": len(dataset),
                   "seed": seed, "schedule": dataclasses.asdict(schedule), "crop": crop}  # fmt: skip
    metrics = {"train_examples": len(dataset), "classes": dataset.classes, "schedule": dataclasses.asdict(schedule)}
    processor = eval_processor(crop)
    eval_set = as_dataset(eval_data) if eval_data is not None else None
    layout = "-".join(map(str, config.depths)) + f", width ×{config.width_factor}" * (config.width_factor != 1)
    what = f"pre-train a BiT ({layout}, {model.num_parameters() / 1e6:.1f} M parameters) from scratch"
    plan = plan_of(what, dataset, eval_set, shots=None, batch_split=batch_split, device=device, bf16=bf16,
                   workers=workers, out=out, schedule=dataclasses.asdict(schedule), crop=crop)  # fmt: skip
    show_plan(plan, on_plan)
    if dry_run:
        return {"plan": plan}
    evaluation = evaluation_of(model, eval_set, processor, speed, bf16)
    monitor = fewshot_check.monitor(model, processor, workers=workers, bf16=bf16) if fewshot_check else None
    with process_group(device) as context:
        summary = train(model, dataset, recipe, out, context=context, seed=seed, bf16=bf16, monitor=monitor,
                        saving=Saving(fingerprint, resume, save_every), progress=progress, speed=speed)  # fmt: skip
        if monitor and context.is_main:
            metrics["fewshot"] = monitor.measure(summary["steps"])
            append_metrics(
                out / METRICS, {"step": summary["steps"], **{f"eval_{k}": v for k, v in metrics["fewshot"].items()}}
            )
        return finish_run(model, processor, out, summary, metrics, evaluation)
