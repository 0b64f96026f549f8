"""One training run, whichever the recipe: its options, its plan, the loop, and the run directory it leaves —
never overwritten without resume, and closed with the saved model and its report. Fine-tuning and pre-training
prepare a `TrainingJob` and hand it to `run_training`."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from .._util.device import resolve_device
from .._util.files import exclusive, write_json
from ..data.datasets import LabelledImages
from ..data.workers import resolve_workers
from ..inference.metrics import headline
from ..inference.plots import plot_confusion, plot_curves
from ..inference.predict import evaluate
from ..models.model_card import TRAINING_RECORD
from ..models.modeling import BitForImageClassification
from ..processing.exact import BitImageProcessor
from ..runtime.settings import InferenceSettings
from .best import BestWeights, best_fingerprint, check_best_options
from .distributed import Distributed, process_group
from .hub_push import check_hub_repo, hub_token_found, push_run
from .loop import CHECKPOINT, METRICS, Monitor, Regime, Saving, Speed, append_metrics, require_finite, train
from .tracking import Trackers, check_trackers, open_trackers, resolve_report_to

MODEL_DIR = "model"
LAST_MODEL_DIR = "model-last"  # with keep_best: the final weights, when model/ holds earlier, better ones
LOCK = ".run.lock"  # held by the process that runs in the folder (rank 0)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What every training run takes besides its recipe: where it writes and how it resumes, where it runs, and
    settings that change its speed or memory but not its result."""

    out: str | os.PathLike = "bigtransfer-run"
    seed: int = 0  # data order, augmentation, MixUp and few-shot subsets
    resume: bool = False  # continue the run in `out` from its checkpoint
    save_every: int | None = None  # also checkpoint every N steps (always at the end)
    device: str | None = None  # None: CUDA when available
    bf16: bool = False  # bfloat16 autocast for the forward pass and evaluation
    progress: bool = True
    speed: Speed = Speed()
    grad_checkpointing: bool = False  # recompute block activations in backward: same gradients, less memory
    on_plan: Callable[[dict[str, Any]], None] | None = None  # receives the plan before step 1 (rank 0)
    dry_run: bool = False  # return {"plan": …} instead of training
    push_to_hub: str | None = None  # a Hub repo that gets model/ at the end of the run (hub_push.py)
    hub_private_repo: bool | None = None  # create that repo private; None: the account's default visibility
    keep_best: bool = False  # with eval_every: model/ holds the best held-out evaluation's weights (`best.py`)
    early_stopping: int | None = None  # with eval_every: stop after this many evaluations without improvement

    report_to: tuple[str, ...] = ()  # experiment trackers: "tensorboard", "mlflow", "wandb" (tracking/)

    def __post_init__(self) -> None:
        """The trackers by their names (a comma list, "all" and "none" too), each checked before any work is done:
        a missing library is one line naming its install line; a Hub repo name the Hub would refuse fails now,
        not after the run."""
        object.__setattr__(self, "report_to", resolve_report_to(self.report_to))
        check_trackers(self.report_to)
        if self.push_to_hub is not None:
            check_hub_repo(self.push_to_hub)


@dataclasses.dataclass
class TrainingJob:
    """What a recipe prepares for `run_training`: the network, the data, how it trains, and what it reports."""

    what: str  # e.g. "fine-tune BiT-M-R50x1", for the plan
    network: BitForImageClassification
    train_set: LabelledImages
    eval_set: LabelledImages | None
    regime: Regime  # schedule and augmentation
    processor: BitImageProcessor  # the evaluation transform: training normalises with it; saved beside the model
    fingerprint: dict[str, Any]  # what a resumed run must share with this one
    report: dict[str, Any]  # the recipe's entries of the plan and of metrics.json
    plan_details: dict[str, Any] = dataclasses.field(default_factory=dict)  # plan-only entries
    shots: int | None = None
    eval_every: int | None = None  # held-out top-1 every N steps
    extra_monitor: Callable[..., Monitor] | None = None  # (network, processor, run options) → a Monitor
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # the resolved run file (run_file.run_file_of)


def prepare_output(out: Path, resume: bool) -> None:
    """Never overwrite a run: a directory holding a checkpoint or a model needs --resume. (Metrics alone are
    what a run stopped before its first checkpoint leaves: nothing to continue, so a new run starts there.)"""
    if out.exists() and any((out / name).exists() for name in (CHECKPOINT, MODEL_DIR)) and not resume:
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another --out.")


def plan_of(job: TrainingJob, options: RunOptions) -> dict[str, Any]:
    """What a training run is about to do, for `on_plan`."""
    return {"what": job.what, "images": len(job.train_set), "classes": job.train_set.classes, "shots": job.shots,
            "data": job.train_set.source, "eval_data": job.eval_set.source if job.eval_set is not None else None,
            "eval_images": len(job.eval_set) if job.eval_set is not None else None, **job.report, **job.plan_details,
            "batch_split": options.speed.batch_split, "device": str(resolve_device(options.device)),
            "bf16": options.bf16, "workers": resolve_workers(options.speed.workers), "out": str(options.out),
            "eval_every": job.eval_every, "keep_best": options.keep_best, "early_stopping": options.early_stopping,
            **({"push_to_hub": options.push_to_hub, "hub_token_found": hub_token_found()} if options.push_to_hub else {}),
            "report_to": list(options.report_to)}  # fmt: skip


def show_plan(plan: dict[str, Any], on_plan: Callable[[dict[str, Any]], None] | None) -> None:
    """Hand the plan to `on_plan` once: on the first process of a multi-process run."""
    if on_plan is not None and int(os.environ.get("RANK", "0")) == 0:
        on_plan(plan)


def run_training(job: TrainingJob, options: RunOptions) -> dict[str, Any]:
    """Plan, then train on this process's share (torchrun), evaluate, save model/ and the report; returns the
    final metrics (on ranks other than 0, the loop's summary). The run folder is held for the whole run: a
    second run into it is refused, naming the process that holds it."""
    out = Path(options.out)
    check_best_options(options.keep_best, options.early_stopping, job.eval_every, job.eval_set is not None)
    plan = plan_of(job, options)
    if options.dry_run:
        prepare_output(out, options.resume)
        show_plan(plan, options.on_plan)
        return {"plan": plan, "config": job.config}
    if job.eval_every and job.extra_monitor:
        raise ValueError("A run measures one thing while it trains: held-out top-1 (eval_every) or its own monitor.")
    held = exclusive(out / LOCK, wait=False) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()
    with held:
        prepare_output(out, options.resume)
        show_plan(plan, options.on_plan)
        return _train_and_report(job, options, out)


def _train_and_report(job: TrainingJob, options: RunOptions, out: Path) -> dict[str, Any]:
    if options.grad_checkpointing:
        job.network.gradient_checkpointing_enable()
    eval_examples = len(job.eval_set) if job.eval_set is not None else 0
    kept = best_fingerprint(options.keep_best, options.early_stopping, job.eval_every, eval_examples)
    saving = Saving({**job.fingerprint, **kept}, options.resume, options.save_every, run_file=job.config)
    reporting = open_trackers(options.report_to, out, job.config, options.resume)
    with process_group(options.device) as context, reporting as trackers:
        evaluation = evaluation_of(job.network, job.eval_set, job.processor, options, context)
        monitor = job.extra_monitor(job.network, job.processor, options) if job.extra_monitor else None
        if monitor is not None:
            monitor = dataclasses.replace(
                monitor, measure=functools.partial(reported_measure, monitor.measure, trackers)
            )
        if evaluation is not None and job.eval_every:
            monitor = Monitor(job.eval_every, functools.partial(headline_only, evaluation, trackers), sharded=True)
        best = (BestWeights(out, options.keep_best, options.early_stopping, writes=context.is_main)
                if options.keep_best or options.early_stopping else None)  # fmt: skip
        summary = train(job.network, job.train_set, job.regime, out, transform=job.processor.eval_transform(),
                        context=context, seed=options.seed, bf16=options.bf16, saving=saving, monitor=monitor,
                        progress=options.progress, speed=options.speed, best=best, reporter=trackers)  # fmt: skip
        metrics = {"train_examples": len(job.train_set), "classes": job.train_set.classes, **job.report}
        if monitor is not None and not monitor.sharded:  # a rank-0 measurement (few-shot), once more at the end
            metrics[monitor.name] = monitor.measure(summary["steps"]) if context.is_main else {}
            context.wait_for_main()
            if context.is_main:
                row = {f"eval_{key}": value for key, value in metrics[monitor.name].items()}
                append_metrics(out / METRICS, {"step": summary["steps"], **row})
        metrics = finish_run(job.network, job.processor, out, summary, metrics, evaluation, best, options.push_to_hub)
        trackers.log_outcome(metrics, out)
    if options.push_to_hub is not None and summary["rank"] == 0:  # the run is complete and saved: now publish it
        metrics = push_run(job.network, out / MODEL_DIR, metrics, options.push_to_hub, options.hub_private_repo)
    return metrics


def finish_run(
    model: BitForImageClassification,
    processor: BitImageProcessor,
    out: Path,
    summary: dict[str, Any],
    metrics: dict[str, Any],
    evaluation: Callable[[], dict[str, Any]] | None,
    best: BestWeights | None = None,
    repo_id: str | None = None,
) -> dict[str, Any]:
    """Evaluate (every process takes its share), then on rank 0: save model/ (with the eval transform; its card
    naming the Hub repo `repo_id` it is bound for), write plots and metrics.json. Every other rank returns what
    it has. With `best.keep`, model/ gets the best evaluation's weights, and model-last/ the final ones when they
    are not the best; "eval" is then model/'s evaluation and "last_eval" the final weights'.
    """
    reported = ("skipped_images", "skipped_fraction", "steps", "seconds", "workers", "cuda_peak_memory_gib")
    metrics = {**metrics, **{k: summary[k] for k in reported if k in summary}, "model_dir": str(out / MODEL_DIR)}
    last = result = evaluation() if evaluation is not None else None
    earlier_best = best is not None and best.keep and last is not None and not best.finish(summary["steps"], last)
    if earlier_best:
        if summary["rank"] == 0:
            metrics.update(last_eval=last, model_last_dir=str(out / LAST_MODEL_DIR))
            _save_model(model, processor, out / LAST_MODEL_DIR, training_record({**metrics, "eval": last}))
        best.load_into(model)
        result = evaluation()
    if summary["rank"] != 0:
        return summary
    if best is not None:
        metrics.update(best.report(summary["steps"], result))
    if result is not None:
        metrics["eval"] = result
    _save_model(model, processor, out / MODEL_DIR, training_record(metrics), repo_id)
    if last is not None and "stopped_early" not in metrics:  # an early stop's evaluation is logged already
        key = headline(last)
        append_metrics(out / METRICS, {"step": summary["steps"], f"eval_{key}": last[key]})
    if result is not None and "confusion" in result:  # multi-label evaluations have no confusion matrix
        plot_confusion(result["confusion"], [model.config.id2label[i] for i in range(model.config.num_labels)],
                       out / "confusion.png")  # fmt: skip
    plot_curves(out / METRICS, out / "curves.png")
    write_json(out / "metrics.json", metrics)
    return metrics


def headline_only(evaluation: Callable[[], dict[str, Any]], trackers: Trackers, step: int) -> dict[str, float]:
    """The held-out number a run's curve follows during training: top-1, or mAP for multi-label data (the trackers
    get top-5, or micro AP and F1, too)."""
    result = evaluation()
    trackers.log_evaluation(result, step)
    return {headline(result): result[headline(result)]}


def reported_measure(measure: Callable[[int], dict], trackers: Trackers, step: int) -> dict:
    """A monitor's measurement (pre-training's few-shot accuracies), also handed to the trackers."""
    result = measure(step)
    trackers.log_evaluation(result, step)
    return result


def training_record(metrics: dict[str, Any]) -> dict[str, Any]:
    """What the model card tells of the run (models/model_card.py): the recipe, the data's size, the time, the
    held-out accuracy — not the per-class figures and confusion matrix, which grow with the classes."""
    kept = (
        "base_model",
        "rule",
        "schedule",
        "label_smoothing",
        "class_weights",
        "train_examples",
        "steps",
        "seconds",
        "best",
    )
    record = {key: metrics[key] for key in kept if key in metrics}
    if "eval" in metrics:
        kept = ("examples", "top1", "top5", "map", "micro_ap", "macro_f1", "micro_f1")
        record["eval"] = {key: metrics["eval"][key] for key in kept if key in metrics["eval"]}
    return record


def _save_model(
    model: BitForImageClassification,
    processor: BitImageProcessor,
    directory: Path,
    record: dict[str, Any],
    repo_id: str | None = None,
) -> None:
    """model/ beside the checkpoint, with its eval transform, the run's record and the model card that reads both;
    a full disk is named in one line (each file is written whole or not at all). What gets deployed is checked
    for NaN itself, whichever way the run reached here."""
    require_finite(model.state_dict(), f"in the model to be saved to {directory}")
    try:
        processor.save_pretrained(directory)
        write_json(directory / TRAINING_RECORD, record)
        model.save_pretrained(directory, model_card=True, repo_id=repo_id)  # a failed push: `hf upload` sends it as is
    except (OSError, RuntimeError, SafetensorError) as error:  # safetensors reports a full disk as its own error
        free = shutil.disk_usage(directory.parent).free
        raise OSError(
            f"Could not write the trained model into {directory} ({error}; {free / 2**20:.0f} MiB free on that disk): "
            "free disk space, then run again with --resume, which writes model/ from the final checkpoint."
        ) from None


def evaluation_of(
    model: torch.nn.Module,
    eval_set: LabelledImages | None,
    processor: BitImageProcessor,
    options: RunOptions,
    context: Distributed,
) -> Callable[[], dict[str, Any]] | None:
    """Evaluation during and after a run: same loading workers and precision as training, compiled once if asked,
    shared out over the run's processes."""
    if eval_set is None:
        return None
    speed = options.speed
    evaluated = torch.compile(model) if speed.compile else model
    settings = InferenceSettings(workers=speed.workers, bf16=options.bf16, channels_last=speed.channels_last)
    return functools.partial(evaluate, evaluated, eval_set, processor, settings, rank=context.rank,
                             world_size=context.world_size)  # fmt: skip
