"""`bigtransfer finetune | evaluate | pretrain`: transfer learning with the BiT-HyperRule, and its upstream."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from typing import TYPE_CHECKING

from ._options import (
    add_compile_argument,
    add_data_arguments,
    add_device_arguments,
    add_inference_arguments,
    add_model_argument,
    add_model_name_arguments,
    add_output_arguments,
    add_workers_argument,
    below_one,
    emit,
    inference_settings,
    load_data_arguments,
    non_negative_float,
    positive_float,
    positive_int,
    repository_model,
    shot_counts,
)

if TYPE_CHECKING:
    from ..models.config import BitConfig
    from ..train import RunOptions


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `RunOptions`, which every training command shares."""
    parser.add_argument("--config", metavar="FILE",
                        help="read the options from a run file (YAML, or TOML by its .toml suffix; keys are the "
                        "options' names, base_lr or base-lr for --base-lr), such as the config.yaml every run writes "
                        "into its --out: `--config RUN/config.yaml --out NEW` replays RUN; flags given beside it win")  # fmt: skip
    parser.add_argument("--out", default=None,
                        help="run directory (default: a new runs/<command>-<date>-<time>; an existing run is refused "
                        "unless --resume)")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--save-every", type=positive_int, default=None, help="also checkpoint every N steps")
    parser.add_argument(
        "--batch-split",
        type=positive_int,
        default=1,
        help="micro-batches per step: same update, less memory (default 1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for data order, augmentation, few-shot subsets")
    add_device_arguments(parser)
    add_workers_argument(parser, training=True)
    add_compile_argument(parser)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels-last memory layout (default: on with CUDA, off on CPU)")  # fmt: skip
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="recompute each block's activations in backward: same gradients, less memory "
                        "(R50x1 at 224 px on CPU: 35-39%% lower peak), slower steps (there ×1.3-1.6)")  # fmt: skip
    parser.add_argument("--keep-best", action="store_true",
                        help="with --eval-every: save the weights of the best held-out evaluation (top-1; mAP with "
                        "--multi-label; a tie keeps the earlier) as OUT/model, the final ones as OUT/model-last when "
                        "they are not the best; metrics.json names the best step and value")  # fmt: skip
    parser.add_argument("--early-stopping", type=positive_int, default=None, metavar="P",
                        help="with --eval-every: stop after P evaluations without a better held-out top-1 (mAP); "
                        "OUT/model then holds the weights at the stop (the best ones with --keep-best)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (data, schedule, device) and the run file it would write, and stop")  # fmt: skip
    hub = parser.add_argument_group("the Hugging Face Hub", "with a token from HF_TOKEN or `hf auth login`")
    hub.add_argument("--push-to-hub", metavar="REPO",
                     help="at the end of the run, upload model/ (weights, preprocessing, model card) to this Hub repo, "
                     "e.g. me/bit-flowers (created when missing); a failed push keeps the run, prints the command "
                     "that pushes it later and exits 2")  # fmt: skip
    hub.add_argument("--hub-private-repo", action="store_true", default=None,
                     help="create the --push-to-hub repo private (default: the account's default visibility)")  # fmt: skip
    parser.add_argument("--report-to", type=trackers, default=(), metavar="TRACKERS",
                        help="also record the run in experiment trackers: a comma list of tensorboard (event files in "
                        "OUT/tensorboard), mlflow (MLFLOW_TRACKING_URI, experiment MLFLOW_EXPERIMENT_NAME or "
                        "bigtransfer), wandb (project WANDB_PROJECT or bigtransfer; WANDB_MODE=offline works), or "
                        "all; default none. Each needs its extra: pip install -e '.[tensorboard]' …")  # fmt: skip
    add_output_arguments(parser, "print the final metrics as JSON")


def _add_loss_arguments(parser: argparse.ArgumentParser) -> None:
    """The loss options of `FineTuning` and `Pretraining`: opt-in, both off in BiT's recipes."""
    parser.add_argument("--label-smoothing", type=below_one, default=0.0, metavar="EPS",
                        help="softmax targets (1-EPS)·one-hot + EPS/classes, as torch's cross_entropy(label_smoothing=) "
                        "and Trainer's label_smoothing_factor; sigmoid (multi-label) targets y·(1-EPS) + EPS/2 "
                        "(default 0: off, as BiT)")  # fmt: skip
    parser.add_argument("--class-weights", metavar="balanced|FILE",
                        help="per-class loss weights: 'balanced' (n / (classes · images of the class), scikit-learn's, "
                        'counted on the training set used), or a JSON {"class": weight} or CSV class,weight file '
                        "naming every class (default: none)")  # fmt: skip


def _add_eval_every_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval-every", type=positive_int, default=None, metavar="N",
                        help="evaluate on --eval-data every N steps (curve in the PNG; what --keep-best and "
                        "--early-stopping follow)")  # fmt: skip


def trackers(text: str) -> tuple[str, ...]:
    """An argparse type: the --report-to list, in the library's own vocabulary (train/tracking)."""
    from ..train.tracking import resolve_report_to

    try:
        return resolve_report_to(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_multi_label_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--multi-label", action="store_true",
                        help="several classes per image: a CSV's labels separated by ';', or a folder whose images "
                        "(same path below the class folder) appear in several class folders; sigmoid + binary "
                        "cross-entropy, evaluated by mAP and F1")  # fmt: skip


def register(commands) -> None:
    finetune = commands.add_parser(
        "finetune",
        help="fine-tune a pretrained BiT with the BiT-HyperRule",
        description="Fine-tune with the BiT-HyperRule: resolution, schedule and MixUp follow from the dataset; "
        "SGD momentum 0.9, zero-initialised head. Multi-process: torchrun --nproc_per_node N -m bigtransfer finetune …",
    )
    add_model_argument(finetune, "the pretrained model")
    add_data_arguments(finetune, "training data", "evaluation data, in any of the same forms")
    _add_multi_label_argument(finetune)
    finetune.add_argument("--shots", type=positive_int, default=None, help="K examples per class (balanced, seeded)")
    finetune.add_argument("--runs", "--seeds", type=positive_int, default=1, dest="runs",
                          help="repeat over this many consecutive seeds from --seed; report mean ± std (default 1), "
                          "as fewshot --runs")  # fmt: skip
    finetune.add_argument(
        "--preset", choices=["code", "paper"], default="code", help="HyperRule variant (default code)"
    )
    finetune.add_argument("--batch-size", type=positive_int, default=512,
                          help="global batch (default 512, the HyperRule's; --batch-split if it does not fit)")  # fmt: skip
    finetune.add_argument(
        "--base-lr", type=positive_float, default=0.003, help="learning rate at batch 512 (default 0.003)"
    )
    finetune.add_argument("--lr-scaling", choices=["none", "linear", "sqrt"], default="none",
                          help="adapt base-lr to the batch size (default none, as the original)")  # fmt: skip
    finetune.add_argument(
        "--steps", type=positive_int, default=None, help="override the schedule length (boundaries scale)"
    )
    finetune.add_argument("--resize", type=positive_int, default=None, help="override the square resize")
    finetune.add_argument("--crop", type=positive_int, default=None, help="override the random-crop / eval size")
    finetune.add_argument("--mixup", type=non_negative_float, default=None, help="override the MixUp alpha (0 = off)")
    finetune.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    _add_eval_every_argument(finetune)
    _add_loss_arguments(finetune)
    _add_run_arguments(finetune)

    evaluate = commands.add_parser(
        "evaluate",
        help="accuracy of a fine-tuned model on labelled data",
        description="Top-1, top-5 (with more than 5 classes) and per-class accuracy — with --multi-label, mAP, "
        "micro AP and F1 at 0.5 — read and preprocessed exactly as `predict` does; the data's class names must be "
        "among the model's labels.",
    )
    add_model_argument(evaluate, "the classifier (from finetune: RUN/model; or an export directory)")
    add_model_name_arguments(evaluate)
    add_data_arguments(evaluate, "labelled data", for_eval=True)
    _add_multi_label_argument(evaluate)
    add_inference_arguments(evaluate)
    add_output_arguments(evaluate, "print the metrics as JSON")

    pretrain = commands.add_parser(
        "pretrain",
        help="train a BiT from scratch with the upstream recipe",
        description="Upstream BiT training: SGD momentum 0.9, lr 0.03·batch/256, weight decay 1e-4, linear warm-up, "
        "÷10 at 1/3, 2/3 and 8/9 of training, Inception crop + flip.",
    )
    add_data_arguments(pretrain, "training data", "evaluation data (its classes), in any of the same forms")
    pretrain.add_argument(
        "--arch", default="R50x1", help="R50x1 … R152x4, or 'custom' with the options below (default R50x1)"
    )
    pretrain.add_argument("--depths", help="custom: blocks per stage, e.g. 1,1,1,1")
    pretrain.add_argument("--hidden-sizes", help="custom: stage widths, e.g. 128,256,512,1024 (a bottleneck is a "
                          "quarter of its stage's width, and --num-groups must divide it)")  # fmt: skip
    pretrain.add_argument("--embedding-size", type=positive_int, default=64, help="custom: stem width (default 64)")
    pretrain.add_argument("--num-groups", type=positive_int, default=32, help="GroupNorm groups (default 32)")
    pretrain.add_argument("--epochs", type=positive_float, default=90, help="passes over --data (default 90, as BiT-S)")
    pretrain.add_argument(
        "--warmup-epochs", type=non_negative_float, default=5, help="linear learning-rate warm-up (default 5)"
    )
    pretrain.add_argument("--batch-size", type=positive_int, default=256,
                          help="images per step, all processes (default 256: lr 0.03·batch/256 is BiT's rule)")  # fmt: skip
    pretrain.add_argument("--crop", type=positive_int, default=224, help="training and eval resolution (default 224)")
    pretrain.add_argument("--loss", choices=["softmax", "sigmoid"], default=None,
                          help="softmax cross-entropy, or sigmoid binary cross-entropy on one-hot (multi-hot) targets "
                          "as BiT's upstream training used (default: softmax; sigmoid with --multi-label)")  # fmt: skip
    _add_multi_label_argument(pretrain)
    _add_eval_every_argument(pretrain)
    _add_loss_arguments(pretrain)
    check = pretrain.add_argument_group("few-shot check", "linear few-shot accuracy on a downstream dataset while "
                                        "training (as `bigtransfer fewshot`), in metrics.jsonl and curves.png")  # fmt: skip
    check.add_argument("--fewshot-every", type=positive_int, metavar="N", help="measure every N steps and at the end")
    check.add_argument("--fewshot-data", help="downstream images to draw the shots from (any --data form)")
    check.add_argument("--fewshot-eval-data", help="downstream test images")
    check.add_argument("--fewshot-classes", help="downstream classes to use (comma-separated)")
    check.add_argument("--fewshot-shots", type=shot_counts, default=[1, 5, 10],
                       help="images per class (default 1,5,10)")  # fmt: skip
    _add_run_arguments(pretrain)
    for command in (finetune, evaluate, pretrain):
        command.set_defaults(handler=handle)


def run_options(args: argparse.Namespace, command: str) -> RunOptions:
    """The options every training command shares, from its arguments."""
    from ..train import RunOptions, Speed
    from ..train.best import check_best_options

    held_out = args.eval_data is not None or args.val_split is not None
    check_best_options(args.keep_best, args.early_stopping, args.eval_every, held_out)  # before any data is read
    return RunOptions(
        out=args.out or default_out(command), seed=args.seed, resume=args.resume, save_every=args.save_every,
        device=args.device, bf16=args.bf16, progress=not args.quiet,
        speed=Speed(args.workers, args.compile, args.channels_last, args.batch_split),
        grad_checkpointing=args.grad_checkpointing, dry_run=args.dry_run, keep_best=args.keep_best,
        early_stopping=args.early_stopping, push_to_hub=args.push_to_hub, hub_private_repo=args.hub_private_repo,
        report_to=args.report_to,
        on_plan=functools.partial(print_plan, stream=sys.stderr if args.json else sys.stdout),
    )  # fmt: skip


def run_finetune(args: argparse.Namespace) -> dict:
    from ..train import FineTuning, finetune, finetune_runs

    recipe = FineTuning(
        shots=args.shots, preset=args.preset, batch_size=args.batch_size, steps=args.steps, resize=args.resize,
        crop=args.crop, base_lr=args.base_lr, lr_scaling=args.lr_scaling, mixup_alpha=args.mixup,
        flip=not args.no_flip, eval_every=args.eval_every, label_smoothing=args.label_smoothing,
        class_weights=args.class_weights,
    )  # fmt: skip
    run = run_options(args, "finetune")  # first: its checks need no data read
    data, eval_data = load_data_arguments(args)
    if args.runs > 1:
        return finetune_runs(args.runs, args.model, data, eval_data, recipe=recipe, run=run)
    return finetune(args.model, data, eval_data, recipe=recipe, run=run)


def default_out(command: str) -> str:
    """A new run directory per run, so that a second run without --out does not meet the first one. Under torchrun
    every process would name its own (they start in different seconds), so there --out is required."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(f"{command} under torchrun needs --out DIR: every process must write to the same run folder.")
    return f"runs/{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def print_plan(plan: dict, stream) -> None:
    """What a training run is about to do, and a hint when that looks slow for the device."""
    shots = f", {plan['shots']} per class" if plan["shots"] else ""
    lines = [f"plan: {plan['what']} on {plan['images']} images of {len(plan['classes'])} classes{shots} from "
             f"{plan['data']}" + (f"; evaluate on {plan['eval_images']} from {plan['eval_data']}"
                                  if plan["eval_images"] else "")]  # fmt: skip
    if "rule" in plan:
        rule, crop, typical = plan["rule"], plan["rule"]["crop"], plan["image_size"]
        decays = ", ".join(map(str, rule["decay_steps"])) or "none"
        lines.append(f"  images {typical['height']}×{typical['width']} ({typical['statistic']})")
        lines.append(f"  HyperRule ({rule['preset']}): resize {rule['resize']} → crop {crop}, {rule['steps']} steps "
                     f"(warm-up {rule['warmup_steps']}, ÷10 at {decays}), batch {rule['batch_size']} (micro-batch "
                     f"{rule['batch_size'] // plan['batch_split']}), MixUp α {rule['mixup_alpha']:g}, lr {rule['base_lr']:g}")  # fmt: skip
        quicker = _quicker_on_cpu(crop, plan.get("model_resolution"))
    else:
        schedule, crop = plan["schedule"], plan["crop"]
        lines.append(f"  upstream recipe: Inception crop {crop} + flip, {schedule['steps']} steps (warm-up "
                     f"{schedule['warmup_steps']}, ÷10 at 1/3, 2/3, 8/9), batch {schedule['batch_size']} (micro-batch "
                     f"{schedule['batch_size'] // plan['batch_split']}), lr {schedule['base_lr']:g}, weight decay "
                     f"{schedule['weight_decay']:g}" + (", sigmoid loss" if plan["objective"] == "sigmoid" else ""))  # fmt: skip
        quicker = "--crop 128 --batch-size 64 (or fewer --epochs)" if crop >= 224 else None
    if plan["keep_best"] or plan["early_stopping"]:
        lines.append(_best_plan(plan))
    lines += _loss_lines(plan)
    lines.append(f"  {plan['device']}, {'bfloat16 autocast' if plan['bf16'] else 'float32'}, {plan['workers']} "
                 f"loading workers → {plan['out']}" + (f", reported to {', '.join(plan['report_to'])}"
                                                       if plan.get("report_to") else ""))  # fmt: skip
    lines += _hub_lines(plan)
    if plan["device"] == "cpu" and quicker:
        threads = "; with loading workers on a few cores, OMP_NUM_THREADS=1 trained fastest (benchmarks/RESULTS.md)"
        lines.append(f"  note: {crop}-px crops are slow on a CPU; for a quicker run pass {quicker}, or use a GPU "
                     f"(--device cuda){threads if plan['workers'] else ''}")  # fmt: skip
    print("\n".join(lines), file=stream, flush=True)


def _best_plan(plan: dict) -> str:
    """The plan's line for --keep-best and --early-stopping."""
    parts = [f"  evaluate every {plan['eval_every']} steps"]
    if plan["keep_best"]:
        parts.append("keep the best evaluation's weights as model/ (the final ones as model-last/)")
    if plan["early_stopping"]:
        parts.append(f"early stopping after {plan['early_stopping']} evaluations without improvement")
    return "; ".join(parts)


def _loss_lines(plan: dict) -> list[str]:
    """The opt-in loss options that are on, with the class weights (the first ten, then their range)."""
    parts = [f"label smoothing {plan['label_smoothing']:g}"] if "label_smoothing" in plan else []
    if "class_weights" in plan:
        weights = plan["class_weights"]
        shown = ", ".join(f"{name} {weight:.4g}" for name, weight in list(weights.items())[:10])
        if len(weights) > 10:
            shown += f", … ({len(weights)} classes, {min(weights.values()):.4g} to {max(weights.values()):.4g})"
        parts.append(f"class weights {shown}")
    return [f"  loss: {'; '.join(parts)}"] if parts else []


def _hub_lines(plan: dict) -> list[str]:
    if not plan.get("push_to_hub"):
        return []
    line = f"  then push model/ to the Hugging Face Hub as {plan['push_to_hub']}"
    if not plan["hub_token_found"]:
        line += " (no token found yet: set HF_TOKEN or run `hf auth login` before the run ends)"
    return [line]


def _quicker_on_cpu(crop: int, native: int | None) -> str | None:
    """A fine-tuning's quicker settings for a CPU: the model's own resolution when the rule crops larger (the
    bundled 32-px models train at 36 → 32 in a fraction of the time of the rule's 160 → 128), else smaller
    crops once they reach 224 px; None when the run is already at the model's resolution."""
    if native and native < crop:
        return (f"--resize {native + native // 8} --crop {native} (the model's own resolution: "
                f"{(crop / native) ** 2:.0f}× less compute per image)")  # fmt: skip
    return "--resize 160 --crop 128 --batch-size 64 (or --steps N)" if crop >= 224 else None


def pretrain_config(args: argparse.Namespace) -> BitConfig:
    """The BitConfig that --arch (with --depths, --hidden-sizes, --embedding-size) and --num-groups describe."""
    from ..train.architecture import architecture_config

    return architecture_config(args.arch, args.depths, args.hidden_sizes, args.embedding_size, args.num_groups)


def run_pretrain(args: argparse.Namespace) -> dict:
    from ..train import FewShotCheck, Pretraining, pretrain

    config = pretrain_config(args)
    check = FewShotCheck.from_options(args.fewshot_every, args.fewshot_data, args.fewshot_eval_data,
                                      args.fewshot_classes, args.fewshot_shots)  # fmt: skip
    recipe = Pretraining(epochs=args.epochs, warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
                         crop=args.crop, loss=args.loss, eval_every=args.eval_every,
                         label_smoothing=args.label_smoothing, class_weights=args.class_weights)  # fmt: skip
    run = run_options(args, "pretrain")
    data, eval_data = load_data_arguments(args)
    return pretrain(data, config, eval_data, recipe=recipe, run=run,
                    fewshot_check=check)  # fmt: skip


def run_evaluate(args: argparse.Namespace) -> dict:
    """Read and preprocessed exactly as predict does."""
    from ..inference.predict import evaluate
    from ..processing.exact import BitImageProcessor
    from ..runtime.classifier import load_classifier

    settings, source = inference_settings(args), repository_model(args)
    model = load_classifier(source, settings)
    data, _ = load_data_arguments(args, for_eval=True)
    return evaluate(model, data, BitImageProcessor.from_pretrained(source), settings, progress=not args.quiet)


HEADLINE_NAMES = {"top1": "top-1", "map": "mAP"}  # an evaluation's headline key, as the text output names it


def _print_metrics(metrics: dict) -> None:
    if "plan" in metrics:  # a dry run: the plan is printed already; then the run file it would write
        from ..train.run_file import run_file_text

        print(run_file_text(metrics["config"]), end="")
        return
    if "runs" in metrics:
        for seed, run in zip(metrics["seeds"], metrics["runs"]):
            print(f"seed {seed}: {_headline_text(run['eval'])}" if "eval" in run else f"seed {seed}: done")
        for key, name in HEADLINE_NAMES.items():
            if f"eval_{key}_mean" in metrics:
                print(f"{name} over {len(metrics['runs'])} seeds: {metrics[f'eval_{key}_mean']:.4f} ± "
                      f"{metrics[f'eval_{key}_std']:.4f}")  # fmt: skip
        return
    result = metrics.get("eval", metrics if any(key in metrics for key in HEADLINE_NAMES) else None)
    if "model_dir" in metrics:
        print(f"model saved to {metrics['model_dir']} ({metrics['steps']} steps, {metrics['seconds']} s)")
    for line in _best_summary(metrics):
        print(line)
    if "url" in metrics.get("push_to_hub", {}):
        print(f"pushed to the Hub as {metrics['push_to_hub']['repo']}: {metrics['push_to_hub']['url']}")
    if metrics.get("skipped_images") or metrics.get("skipped_fraction"):
        print(f"skipped {len(metrics['skipped_images'])} unreadable training images: "
              f"{metrics['skipped_fraction']:.1%} of the examples were left out")  # fmt: skip
    if result:
        print(f"{_headline_text(result)} on {result['examples']} images")
        for name in result.get("skipped_images", []):
            print(f"  skipped unreadable image {name}", file=sys.stderr)
        for name, score in result["per_class"].items():
            if isinstance(score, dict):  # multi-label: average precision and F1 of each class
                print(f"  AP {score['ap']:.4f}  F1 {score['f1']:.4f}  {name} ({score['positives']} images)")
            else:
                print(f"  {score:7.2%}  {name}")


def _best_summary(metrics: dict) -> list[str]:
    """Which weights model/ holds with --keep-best, and where --early-stopping ended the run."""
    lines = []
    if "best" in metrics:
        best = metrics["best"]
        kept = f"{HEADLINE_NAMES[best['metric']]} {best['value']:.4f} at step {best['step']}"
        if "model_last_dir" in metrics:
            last = metrics["last_eval"][best["metric"]]
            lines.append(f"model/ holds the best weights ({kept}); the final ones ({HEADLINE_NAMES[best['metric']]} "
                         f"{last:.4f}) are in {metrics['model_last_dir']}")  # fmt: skip
        else:
            lines.append(f"the final weights are the best ({kept}): model/ holds them, no model-last/")
    if "stopped_early" in metrics:
        stop = metrics["stopped_early"]
        best = f"{HEADLINE_NAMES[stop['metric']]} above {stop['best_value']:.4f} (step {stop['best_step']})"
        lines.append(f"stopped early at step {stop['step']}: {stop['patience']} evaluations without a {best}")
    return lines


def _headline_text(result: dict) -> str:
    """One line of an evaluation: top-1 (and top-5), or for multi-label data mAP, micro AP and F1."""
    if "map" in result:
        return (f"mAP {result['map']:.4f}, micro AP {result['micro_ap']:.4f}, F1 at {result['threshold']:g}: "
                f"macro {result['macro_f1']:.4f}, micro {result['micro_f1']:.4f}")  # fmt: skip
    return f"top-1 {result['top1']:.4f}" + (f", top-5 {result['top5']:.4f}" if "top5" in result else "")


def _without_confusion(metrics):
    """JSON output keeps everything but the (large) confusion matrices, which metrics.json holds."""
    if isinstance(metrics, dict):
        return {k: _without_confusion(v) for k, v in metrics.items() if k != "confusion"}
    if isinstance(metrics, list):
        return [_without_confusion(v) for v in metrics]
    return metrics


def handle(args: argparse.Namespace) -> int:
    from ..train.hub_push import HubPushFailed

    runner = {"finetune": run_finetune, "pretrain": run_pretrain, "evaluate": run_evaluate}[args.command]
    try:
        metrics = runner(args)
    except HubPushFailed as failure:  # the run is complete: its results first, then the line saying what failed
        emit(_without_confusion(failure.metrics), args.json, _print_metrics)
        raise
    if metrics.get("rank", 0) == 0:
        emit(_without_confusion(metrics), args.json, _print_metrics)
    return 0
