"""Fine-tuning with the BiT-HyperRule: data → rule → zero-initialised head → training loop → saved model and report."""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import BitConfig
from ..modeling import BitForImageClassification, BitModel, BitPreTrainedModel
from ..zoo import architecture_of
from .augment import eval_processor, hyperrule_augment
from .data import ImageDataset
from .distributed import process_group
from .evaluate import write_json
from .few_shot import few_shot_subset
from .hyper_rule import HyperRule, hyperrule
from .loop import Monitor, Recipe, Saving, Speed, train
from .run import as_dataset, evaluation_of, finish_run, plan_of, prepare_output, show_plan


def rescale_steps(rule: HyperRule, steps: int) -> HyperRule:
    """The same schedule shape over `steps`: warm-up and decay boundaries move proportionally."""
    if steps < 1:
        raise ValueError(f"--steps must be ≥ 1, got {steps}.")
    scale = steps / rule.steps
    return dataclasses.replace(
        rule, steps=steps, warmup_steps=round(rule.warmup_steps * scale),
        decay_steps=[round(boundary * scale) for boundary in rule.decay_steps],
    )  # fmt: skip


def classifier_for(
    model: str | os.PathLike | BitPreTrainedModel, id2label: dict[int, str]
) -> BitForImageClassification:
    """A new classifier for `id2label` on the pretrained body of `model` (a name or path `from_pretrained` takes,
    or a loaded BitModel / BitForImageClassification, which is copied, not changed)."""
    if isinstance(model, BitPreTrainedModel):
        body = getattr(model, "bit", model)
        if not isinstance(body, BitModel):
            raise TypeError(f"finetune needs a classifier or a BitModel body, got {type(model).__name__}.")
        settings = {**model.config.to_dict(), "num_labels": len(id2label), "id2label": id2label,
                    "label2id": {name: i for i, name in id2label.items()}}  # fmt: skip
        network = BitForImageClassification(BitConfig.from_dict(settings))
        network.bit.load_state_dict(body.state_dict())
        return network.to(body.dtype)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"finetune's model must be a name, a path or a BiT model object, got {type(model).__name__}.")
    return BitForImageClassification.from_pretrained(
        model, num_labels=len(id2label), id2label=id2label, ignore_mismatched_sizes=True
    )


def finetune(
    model: str | os.PathLike | BitPreTrainedModel,
    data: str | os.PathLike | ImageDataset,
    eval_data: str | os.PathLike | ImageDataset | None = None,
    *,
    out: str | os.PathLike = "bigtransfer-run",
    shots: int | None = None,
    seed: int = 0,
    preset: str = "code",
    batch_size: int = 512,
    batch_split: int = 1,
    steps: int | None = None,
    resize: int | None = None,
    crop: int | None = None,
    base_lr: float = 0.003,
    lr_scaling: str = "none",
    mixup_alpha: float | None = None,
    flip: bool = True,
    resume: bool = False,
    save_every: int | None = None,
    eval_every: int | None = None,
    device: str | None = None,
    bf16: bool = False,
    progress: bool = True,
    workers: int | None = None,
    compile: bool = False,
    channels_last: bool | None = None,
    grad_checkpointing: bool = False,
    on_plan: Callable[[dict[str, Any]], None] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Fine-tune a pretrained BiT on `data` with the BiT-HyperRule; returns the final metrics.

    The run directory gets checkpoint.pt (resumable), metrics.jsonl, curves.png, and, at the end,
    model/ (a transformers-format model whose preprocessor_config.json is the eval transform),
    metrics.json and confusion.png when `eval_data` is given. `workers` loading processes (default:
    one per core), `compile` and `channels_last` change the speed, not the result; `grad_checkpointing` trades
    compute for memory, with the same gradients. Before training, `on_plan` receives what the run will do
    (data, rule, device, precision, workers, output); `dry_run` returns {"plan": …} right there.
    """
    out = Path(out)
    prepare_output(out, resume)
    train_set = as_dataset(data)
    train_set.check_trainable()
    if shots is not None:
        train_set = train_set.subset(few_shot_subset(train_set.labels, shots, seed, train_set.classes))
    id2label = dict(enumerate(train_set.classes))
    network = classifier_for(model, id2label)
    rule = hyperrule(len(train_set), train_set.image_size(), preset, batch_size, base_lr, lr_scaling,
                     architecture=architecture_of(network.config))  # fmt: skip
    rule = rescale_steps(rule, steps) if steps else rule
    overrides = {k: v for k, v in dict(resize=resize, crop=crop, mixup_alpha=mixup_alpha).items() if v is not None}
    rule = dataclasses.replace(rule, **overrides)
    if rule.crop > rule.resize:
        raise ValueError(f"--crop {rule.crop} is larger than --resize {rule.resize}: crop must fit inside the resize.")
    if rule.zero_init_head:  # BiT: a zero head starts every class at equal odds and trains stably
        torch.nn.init.zeros_(network.classifier[1].weight)
        torch.nn.init.zeros_(network.classifier[1].bias)
    if grad_checkpointing:
        network.gradient_checkpointing_enable()
    torch.manual_seed(seed)
    augment = functools.partial(hyperrule_augment, resize=rule.resize, crop=rule.crop, flip=flip)
    recipe = Recipe(rule, augment, image_size=rule.crop)
    processor = eval_processor(rule.crop)
    speed = Speed(workers, compile, channels_last, batch_split)
    eval_set = as_dataset(eval_data) if eval_data is not None else None
    name = getattr(model.config, "_name_or_path", "") if isinstance(model, BitPreTrainedModel) else str(model)
    plan = plan_of(f"fine-tune {name}", train_set, eval_set, shots=shots, batch_split=batch_split, device=device,
                   bf16=bf16, workers=workers, out=out, rule=dataclasses.asdict(rule))  # fmt: skip
    show_plan(plan, on_plan)
    if dry_run:
        return {"plan": plan}
    evaluation = evaluation_of(network, eval_set, processor, speed, bf16)
    fingerprint = {"model": name, "classes": train_set.classes, "examples": len(train_set), "seed": seed,
                   "shots": shots, "rule": dataclasses.asdict(rule), "flip": flip}  # fmt: skip
    metrics = {"train_examples": len(train_set), "classes": train_set.classes, "rule": dataclasses.asdict(rule)}
    saving = Saving(fingerprint, resume, save_every)
    monitor = Monitor(eval_every, lambda step: {"top1": evaluation()["top1"]}) if evaluation and eval_every else None
    with process_group(device) as context:
        summary = train(network, train_set, recipe, out, context=context, seed=seed, bf16=bf16, saving=saving,
                        monitor=monitor, progress=progress, speed=speed)  # fmt: skip
        return finish_run(network, processor, out, summary, metrics, evaluation)


def finetune_runs(runs: int, seed: int, out: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
    """Repeat a (few-shot) fine-tuning over `runs` consecutive seeds; mean ± std of eval top-1, also written to
    `out`/runs.json."""
    results = [finetune(seed=seed + k, out=Path(out) / f"seed-{seed + k}", **kwargs) for k in range(runs)]
    accuracies = [r["eval"]["top1"] for r in results if "eval" in r]
    summary: dict[str, Any] = {"runs": results, "seeds": list(range(seed, seed + runs))}
    if accuracies:
        summary["eval_top1_mean"] = float(np.mean(accuracies))
        summary["eval_top1_std"] = float(statistics.pstdev(accuracies)) if len(accuracies) > 1 else 0.0
        if int(os.environ.get("RANK", "0")) == 0:
            write_json(Path(out) / "runs.json", {"seeds": summary["seeds"], "eval_top1": accuracies,
                       "eval_top1_mean": summary["eval_top1_mean"], "eval_top1_std": summary["eval_top1_std"]})  # fmt: skip
    return summary
