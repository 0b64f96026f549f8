"""Fine-tuning with the BiT-HyperRule: data → rule → zero-initialised head → training loop → saved model and report."""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._util.files import check_writable, write_json
from ..checkpoints.catalogue import architecture_of
from ..data.datasets import LabelledImages
from ..data.sources import as_dataset
from ..inference.few_shot import readable_few_shot_subset
from ..inference.metrics import headline
from ..models.config import BitConfig
from ..models.modeling import BitForImageClassification, BitModel, BitPreTrainedModel
from ..processing.exact import BitImageProcessor
from .augment import eval_processor, hyperrule_augment
from .hyper_rule import HyperRule, hyperrule
from .loop import Regime
from .losses import RANGES as LOSS_RANGES
from .losses import class_weights_for, loss_option_problems, loss_record
from .run import RunOptions, TrainingJob, prepare_output, run_training
from .run_file import run_file_of, write_run_file


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
    model: str | os.PathLike | BitPreTrainedModel, id2label: dict[int, str], multi_label: bool = False
) -> BitForImageClassification:
    """A new classifier for `id2label` on the pretrained body of `model` (a name or path `from_pretrained` takes,
    or a loaded BitModel / BitForImageClassification, which is copied, not changed). A multi-label head records
    problem_type="multi_label_classification": sigmoid scores in pipelines and predict, BCE in its own loss."""
    problem_type = "multi_label_classification" if multi_label else None
    if isinstance(model, BitPreTrainedModel):
        body = getattr(model, "bit", model)
        if not isinstance(body, BitModel):
            raise TypeError(f"finetune needs a classifier or a BitModel body, got {type(model).__name__}.")
        settings = {**model.config.to_dict(), "num_labels": len(id2label), "id2label": id2label,
                    "label2id": {name: i for i, name in id2label.items()}, "problem_type": problem_type}  # fmt: skip
        network = BitForImageClassification(BitConfig.from_dict(settings))
        network.bit.load_state_dict(body.state_dict())
        return network.to(body.dtype)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"finetune's model must be a name, a path or a BiT model object, got {type(model).__name__}.")
    return BitForImageClassification.from_pretrained(
        model, num_labels=len(id2label), id2label=id2label, problem_type=problem_type, ignore_mismatched_sizes=True
    )


@dataclasses.dataclass(frozen=True)
class FineTuning:
    """What a fine-tuning run learns from and how: the BiT-HyperRule's inputs, and overrides of what it decides
    (None keeps the rule's choice)."""

    shots: int | None = None  # K examples per class (balanced, seeded by the run's seed)
    preset: str = "code"  # "code": the released big_transfer code; "paper": arXiv 1912.11370 v3
    batch_size: int = 512
    steps: int | None = None  # the schedule's length (its boundaries scale along)
    resize: int | None = None
    crop: int | None = None
    base_lr: float = 0.003  # at batch 512
    lr_scaling: str = "none"  # "linear" or "sqrt" adapt base_lr to another batch size
    mixup_alpha: float | None = None
    flip: bool = True
    eval_every: int | None = None  # held-out top-1 every N steps (needs eval_data)
    label_smoothing: float = 0.0  # ε, opt-in (the HyperRule has none); losses.py says how each loss applies it
    class_weights: str | None = None  # "balanced" or a file of weights by class name (losses.py)

    def __post_init__(self) -> None:
        """Values that make no sense are refused here, not silently replaced by the rule's."""
        counts = {"shots": self.shots, "batch_size": self.batch_size, "steps": self.steps, "resize": self.resize,
                  "crop": self.crop, "eval_every": self.eval_every}  # fmt: skip
        bad = [f"{name}={value}" for name, value in counts.items() if value is not None and value < 1]
        if not self.base_lr > 0:
            bad.append(f"base_lr={self.base_lr}")
        if self.mixup_alpha is not None and not self.mixup_alpha >= 0:
            bad.append(f"mixup_alpha={self.mixup_alpha}")
        bad += loss_option_problems(self.label_smoothing, self.class_weights)
        if bad:
            raise ValueError(
                f"FineTuning: {', '.join(bad)} out of range (counts ≥ 1, base_lr > 0, mixup_alpha ≥ 0, {LOSS_RANGES})."
            )


def finetune(
    model: str | os.PathLike | BitPreTrainedModel,
    data: str | os.PathLike | LabelledImages,
    eval_data: str | os.PathLike | LabelledImages | None = None,
    *,
    recipe: FineTuning = FineTuning(),
    run: RunOptions = RunOptions(),
) -> dict[str, Any]:
    """Fine-tune a pretrained BiT on `data` with the BiT-HyperRule; returns the final metrics.

    The run directory (`run.out`) gets checkpoint.pt (resumable), metrics.jsonl, curves.png, and, at the end,
    model/ (a transformers-format model whose preprocessor_config.json is the eval transform), metrics.json and
    confusion.png when `eval_data` is given. With `run.keep_best` (and `recipe.eval_every`), model/ holds the best
    held-out evaluation's weights and model-last/ the final ones; `run.early_stopping` ends the run after that many
    evaluations without improvement (`best.py`). Before training, `run.on_plan` receives what the run will do (data,
    rule, device, precision, workers, output); `run.dry_run` returns {"plan": …} right there.
    """
    if not run.dry_run:
        check_writable(Path(run.out))  # before the model loads and the data is read
    job = fine_tuning_job(model, data, eval_data, recipe, run.seed)
    job.config = run_file_of("finetune", recipe=recipe, run=run, data=data, eval_data=eval_data, model=model)
    return run_training(job, run)


def fine_tuning_job(
    model: str | os.PathLike | BitPreTrainedModel,
    data: str | os.PathLike | LabelledImages,
    eval_data: str | os.PathLike | LabelledImages | None,
    recipe: FineTuning,
    seed: int,
) -> TrainingJob:
    """The data, the HyperRule for it, and a zero-initialised head on the pretrained body."""
    train_set = as_dataset(data)
    train_set.check_trainable()
    unreadable: list[tuple[str, str]] = []
    if recipe.shots is not None:
        if train_set.multi_label:
            raise ValueError("--shots needs single-label data: a multi-label image would count for several classes.")
        shots, unreadable = readable_few_shot_subset(train_set, recipe.shots, seed)
        train_set = train_set.subset(shots)
    weights = class_weights_for(recipe.class_weights, train_set)  # before the model loads: a bad file fails fast
    network = classifier_for(model, dict(enumerate(train_set.classes)), train_set.multi_label)
    typical = train_set.typical_image_size(seed=seed)
    rule = hyperrule(len(train_set), typical[:2], recipe.preset, recipe.batch_size, recipe.base_lr,
                     recipe.lr_scaling, architecture=architecture_of(network.config))  # fmt: skip
    rule = rescale_steps(rule, recipe.steps) if recipe.steps is not None else rule
    chosen = dict(resize=recipe.resize, crop=recipe.crop, mixup_alpha=recipe.mixup_alpha)
    rule = dataclasses.replace(rule, **{key: value for key, value in chosen.items() if value is not None})
    if rule.crop > rule.resize:
        raise ValueError(f"--crop {rule.crop} is larger than --resize {rule.resize}: crop must fit inside the resize.")
    if rule.zero_init_head:  # BiT: a zero head starts every class at equal odds and trains stably
        torch.nn.init.zeros_(network.classifier[1].weight)
        torch.nn.init.zeros_(network.classifier[1].bias)
    torch.manual_seed(seed)
    processor = eval_processor(rule.crop)
    augment = functools.partial(hyperrule_augment, resize=rule.resize, crop=rule.crop, flip=recipe.flip)
    name = getattr(model.config, "_name_or_path", "") if isinstance(model, BitPreTrainedModel) else str(model)
    losses = loss_record(recipe.label_smoothing, weights, train_set.classes)
    return TrainingJob(
        what=f"fine-tune {name}", network=network, train_set=train_set,
        eval_set=as_dataset(eval_data) if eval_data is not None else None,
        regime=Regime(rule, augment, image_size=rule.crop, label_smoothing=recipe.label_smoothing,
                      class_weights=weights), processor=processor,
        fingerprint={"model": name, "classes": train_set.classes, "examples": len(train_set), **train_set.resume_identity(), "seed": seed,
                     "shots": recipe.shots, "rule": dataclasses.asdict(rule), "flip": recipe.flip,
                     **({"multi_label": True} if train_set.multi_label else {}), **losses},
        report={"rule": dataclasses.asdict(rule), "base_model": name, **losses}, shots=recipe.shots, eval_every=recipe.eval_every,
        plan_details={"image_size": {"height": typical.height, "width": typical.width, "statistic": typical.statistic},
                      "model_resolution": native_resolution(model),
                      **({"unreadable_skipped": [name for name, _ in unreadable]} if recipe.shots and unreadable else {})},
    )  # fmt: skip


def native_resolution(model: str | os.PathLike | BitPreTrainedModel) -> int | None:
    """The side the checkpoint's own preprocessing feeds it (its processor's eval size), which a CPU run's plan
    offers instead of the HyperRule's larger crops; None when the checkpoint names none."""
    name = getattr(model.config, "_name_or_path", None) if isinstance(model, BitPreTrainedModel) else model
    try:
        return min(BitImageProcessor.from_pretrained(name).eval_transform().fixed_size()) if name else None
    except (OSError, ValueError):
        return None


def finetune_runs(
    runs: int,
    model: str | os.PathLike | BitPreTrainedModel,
    data: str | os.PathLike | LabelledImages,
    eval_data: str | os.PathLike | LabelledImages | None = None,
    *,
    recipe: FineTuning = FineTuning(),
    run: RunOptions = RunOptions(),
) -> dict[str, Any]:
    """Repeat a (few-shot) fine-tuning over `runs` consecutive seeds from `run.seed`, each in `run.out`/seed-N;
    mean ± std of eval top-1 (mAP for multi-label data), also written to `run.out`/runs.json; `run.out`/config.yaml
    is the run file of them all (each seed-N/ holds its own). A dry run shows the first run's plan."""
    if run.push_to_hub is not None and runs > 1:
        raise ValueError(f"--push-to-hub with --runs {runs}: every run would replace the last one in {run.push_to_hub}; "
                         "run once, or push the run you choose afterwards with `hf upload REPO RUN/seed-N/model`.")  # fmt: skip
    seeds = list(range(run.seed, run.seed + runs))
    config = run_file_of("finetune", recipe=recipe, run=run, data=data, eval_data=eval_data, model=model, runs=runs)
    if run.dry_run:
        return {**finetune(model, data, eval_data, recipe=recipe, run=run), "config": config}
    if int(os.environ.get("RANK", "0")) == 0:
        for seed in seeds:  # before config.yaml replaces the one of a run that is still there
            prepare_output(Path(run.out) / f"seed-{seed}", run.resume)
        Path(run.out).mkdir(parents=True, exist_ok=True)
        write_run_file(Path(run.out), config)
    results = [finetune(model, data, eval_data, recipe=recipe,
                        run=dataclasses.replace(run, seed=seed, out=Path(run.out) / f"seed-{seed}")) for seed in seeds]  # fmt: skip
    evaluations = [r["eval"] for r in results if "eval" in r]
    summary: dict[str, Any] = {"runs": results, "seeds": seeds}
    if evaluations:
        key = headline(evaluations[0])  # top1, or map for multi-label data
        values = [evaluation[key] for evaluation in evaluations]
        summary[f"eval_{key}_mean"] = float(np.mean(values))
        summary[f"eval_{key}_std"] = float(statistics.pstdev(values)) if len(values) > 1 else 0.0
        if int(os.environ.get("RANK", "0")) == 0:
            write_json(Path(run.out) / "runs.json", {"seeds": seeds, f"eval_{key}": values,
                       f"eval_{key}_mean": summary[f"eval_{key}_mean"], f"eval_{key}_std": summary[f"eval_{key}_std"]})  # fmt: skip
    return summary
