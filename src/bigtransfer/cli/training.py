"""`bigtransfer finetune | evaluate | pretrain`: transfer learning with the BiT-HyperRule, and its upstream."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

MODEL_HELP = (
    "a name from `bigtransfer models` (e.g. BiT-M-R50x1, or the bundled bit-tiny-glyphs or bit-tiny-fashion5), an original BiT .npz "
    "file, a transformers model directory or Hub id, or timm weights (a file or a timm/… Hub id)"
)


def _add_data_arguments(parser: argparse.ArgumentParser, eval_required: bool = False) -> None:
    parser.add_argument(
        "--data",
        required=True,
        help="training data: image folder (one sub-folder per class), "
        "CSV (path,label), IDX images file (MNIST/Fashion-MNIST, .gz or not) or a saved `datasets` dir",
    )
    parser.add_argument("--eval-data", required=eval_required, help="evaluation data, in any of the same forms")
    parser.add_argument("--classes", help="use only these classes (comma-separated names or indices)")


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="image-loading processes (default: one per available core, at most 16; 0 = load in this process). "
        "Raise it when metrics.jsonl's data_wait_s is large; lower it when memory is short",
    )  # fmt: skip


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    add_workers_argument(parser)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model: a slow first step (a minute or more), then faster steps")  # fmt: skip


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (PyTorch models)")
    add_speed_arguments(parser)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None,
                        help="run directory (default: a new runs/<command>-<date>-<time>; an existing run is refused "
                        "unless --resume)")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--save-every", type=int, default=None, help="also checkpoint every N steps")
    parser.add_argument(
        "--batch-split", type=int, default=1, help="micro-batches per step: same update, less memory (default 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for data order, augmentation, few-shot subsets")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward pass and evaluation")
    add_speed_arguments(parser)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels-last memory layout (default: on with CUDA, off on CPU)")  # fmt: skip
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="recompute each block's activations in backward: same gradients, less memory "
                        "(R50x1 at 224 px on CPU: 35-39%% lower peak), slower steps (there ×1.3-1.6)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the plan (data, schedule, device) and stop")
    parser.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def shot_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shots {text!r}: give comma-separated counts, e.g. 1,5,10") from None
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"--shots {text!r}: counts must be ≥ 1")
    return counts


def register(commands) -> None:
    finetune = commands.add_parser(
        "finetune",
        help="fine-tune a pretrained BiT with the BiT-HyperRule",
        description="Fine-tune with the BiT-HyperRule: resolution, schedule and MixUp follow from the dataset; "
        "SGD momentum 0.9, zero-initialised head. Multi-process: torchrun --nproc_per_node N -m bigtransfer finetune …",
    )
    finetune.add_argument("--model", required=True, help="the pretrained model: " + MODEL_HELP)
    _add_data_arguments(finetune)
    finetune.add_argument("--shots", type=int, default=None, help="K examples per class (balanced, seeded)")
    finetune.add_argument(
        "--runs", type=int, default=1, help="repeat over this many seeds; report mean ± std (default 1)"
    )
    finetune.add_argument(
        "--preset", choices=["code", "paper"], default="code", help="HyperRule variant (default code)"
    )
    finetune.add_argument("--batch-size", type=int, default=512, help="global batch (default 512)")
    finetune.add_argument("--base-lr", type=float, default=0.003, help="learning rate at batch 512 (default 0.003)")
    finetune.add_argument("--lr-scaling", choices=["none", "linear", "sqrt"], default="none",
                          help="adapt base-lr to the batch size (default none, as the original)")  # fmt: skip
    finetune.add_argument("--steps", type=int, default=None, help="override the schedule length (boundaries scale)")
    finetune.add_argument("--resize", type=int, default=None, help="override the square resize")
    finetune.add_argument("--crop", type=int, default=None, help="override the random-crop / eval size")
    finetune.add_argument("--mixup", type=float, default=None, help="override the MixUp alpha (0 = off)")
    finetune.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    finetune.add_argument("--eval-every", type=int, default=None, help="evaluate every N steps (curve in the PNG)")
    _add_run_arguments(finetune)

    evaluate = commands.add_parser(
        "evaluate",
        help="accuracy of a fine-tuned model on labelled data",
        description="Top-1, top-5 (with more than 5 classes) and per-class accuracy, read and preprocessed exactly "
        "as `predict` does; the data's class names must be among the model's labels.",
    )
    evaluate.add_argument("--model", required=True,
                          help="model directory (from finetune: RUN/model), or an export directory (ONNX Runtime)")  # fmt: skip
    evaluate.add_argument("--data", required=True, help="labelled data, as for finetune --data")
    evaluate.add_argument("--classes", help="use only these classes (comma-separated names or indices)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    add_inference_arguments(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")

    pretrain = commands.add_parser(
        "pretrain",
        help="train a BiT from scratch with the upstream recipe",
        description="Upstream BiT training: SGD momentum 0.9, lr 0.03·batch/256, weight decay 1e-4, linear warm-up, "
        "÷10 at 1/3, 2/3 and 8/9 of training, Inception crop + flip.",
    )
    _add_data_arguments(pretrain)
    pretrain.add_argument(
        "--arch", default="R50x1", help="R50x1 … R152x4, or 'custom' with the options below (default R50x1)"
    )
    pretrain.add_argument("--depths", help="custom: blocks per stage, e.g. 1,1,1,1")
    pretrain.add_argument("--hidden-sizes", help="custom: stage widths, e.g. 64,128,256,512")
    pretrain.add_argument("--embedding-size", type=int, default=64, help="custom: stem width (default 64)")
    pretrain.add_argument("--num-groups", type=int, default=32, help="GroupNorm groups (default 32)")
    pretrain.add_argument("--epochs", type=float, default=90, help="passes over --data (default 90, as BiT-S)")
    pretrain.add_argument("--warmup-epochs", type=float, default=5, help="linear learning-rate warm-up (default 5)")
    pretrain.add_argument("--batch-size", type=int, default=256, help="images per step, all processes (default 256)")
    pretrain.add_argument("--crop", type=int, default=224, help="training and eval resolution (default 224)")
    check = pretrain.add_argument_group("few-shot check", "linear few-shot accuracy on a downstream dataset while "
                                        "training (as `bigtransfer fewshot`), in metrics.jsonl and curves.png")  # fmt: skip
    check.add_argument("--fewshot-every", type=int, metavar="N", help="measure every N steps and at the end")
    check.add_argument("--fewshot-data", help="downstream images to draw the shots from (any --data form)")
    check.add_argument("--fewshot-eval-data", help="downstream test images")
    check.add_argument("--fewshot-classes", help="downstream classes to use (comma-separated)")
    check.add_argument("--fewshot-shots", type=shot_counts, default=[1, 5, 10], help="default 1,5,10")
    _add_run_arguments(pretrain)
    for command in (finetune, evaluate, pretrain):
        command.set_defaults(handler=handle)


def load_data(source: str, classes: str | None):
    """A --data argument as a dataset, restricted to --classes when given."""
    from ..train.data import load_dataset

    dataset = load_dataset(source)
    return dataset.select_classes(classes.split(",")) if classes else dataset


def _speed_options(args: argparse.Namespace) -> dict:
    return {"workers": args.workers, "compile": args.compile, "channels_last": args.channels_last,
            "grad_checkpointing": args.grad_checkpointing}  # fmt: skip


def run_finetune(args: argparse.Namespace) -> dict:
    from ..train.fine_tuning import finetune, finetune_runs

    options = dict(
        model=args.model, data=load_data(args.data, args.classes),
        eval_data=load_data(args.eval_data, args.classes) if args.eval_data else None, shots=args.shots,
        preset=args.preset, batch_size=args.batch_size, batch_split=args.batch_split, steps=args.steps,
        resize=args.resize, crop=args.crop, base_lr=args.base_lr, lr_scaling=args.lr_scaling, mixup_alpha=args.mixup,
        flip=not args.no_flip, resume=args.resume, save_every=args.save_every, eval_every=args.eval_every,
        device=args.device, bf16=args.bf16, progress=not args.quiet, **_speed_options(args),
    )  # fmt: skip
    out = args.out or default_out("finetune")
    options |= {"on_plan": functools.partial(print_plan, stream=sys.stderr if args.json else sys.stdout),
                "dry_run": args.dry_run}  # fmt: skip
    if args.runs > 1 and not args.dry_run:  # a dry run shows the first run's plan
        return finetune_runs(args.runs, args.seed, out, **options)
    return finetune(out=out, seed=args.seed, **options)


def default_out(command: str) -> str:
    """A new run directory per run, so that a second run without --out does not meet the first one."""
    return f"runs/{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def print_plan(plan: dict, stream) -> None:
    """What a training run is about to do, and a hint when that looks slow for the device."""
    shots = f", {plan['shots']} per class" if plan["shots"] else ""
    lines = [f"plan: {plan['what']} on {plan['images']} images of {len(plan['classes'])} classes{shots}"
             + (f"; evaluate on {plan['eval_images']}" if plan["eval_images"] else "")]  # fmt: skip
    if "rule" in plan:
        rule, crop = plan["rule"], plan["rule"]["crop"]
        decays = ", ".join(map(str, rule["decay_steps"])) or "none"
        lines.append(f"  HyperRule ({rule['preset']}): resize {rule['resize']} → crop {crop}, {rule['steps']} steps "
                     f"(warm-up {rule['warmup_steps']}, ÷10 at {decays}), batch {rule['batch_size']} (micro-batch "
                     f"{rule['batch_size'] // plan['batch_split']}), MixUp α {rule['mixup_alpha']:g}, lr {rule['base_lr']:g}")  # fmt: skip
        quicker = "--resize 160 --crop 128 --batch-size 64 (or --steps N)"
    else:
        schedule, crop = plan["schedule"], plan["crop"]
        lines.append(f"  upstream recipe: Inception crop {crop} + flip, {schedule['steps']} steps (warm-up "
                     f"{schedule['warmup_steps']}, ÷10 at 1/3, 2/3, 8/9), batch {schedule['batch_size']} (micro-batch "
                     f"{schedule['batch_size'] // plan['batch_split']}), lr {schedule['base_lr']:g}, weight decay "
                     f"{schedule['weight_decay']:g}")  # fmt: skip
        quicker = "--crop 128 --batch-size 64 (or fewer --epochs)"
    lines.append(f"  {plan['device']}, {'bfloat16 autocast' if plan['bf16'] else 'float32'}, {plan['workers']} "
                 f"loading workers → {plan['out']}")  # fmt: skip
    if plan["device"] == "cpu" and crop >= 224:
        lines.append(f"  note: {crop}-px crops on a CPU take minutes per step; for a quicker run pass e.g. {quicker}, "
                     "or use a GPU (--device cuda)")  # fmt: skip
    print("\n".join(lines), file=stream, flush=True)


def run_pretrain(args: argparse.Namespace) -> dict:
    from ..config import BitConfig
    from ..train.few_shot import FewShotCheck
    from ..train.pretrain import pretrain
    from ..zoo import ARCHITECTURES

    if args.arch == "custom":
        if not (args.depths and args.hidden_sizes):
            raise ValueError("--arch custom needs --depths and --hidden-sizes.")
        depths, widths = [int(d) for d in args.depths.split(",")], [int(w) for w in args.hidden_sizes.split(",")]
        config = BitConfig(
            depths=depths, hidden_sizes=widths, embedding_size=args.embedding_size, num_groups=args.num_groups
        )
    elif args.arch in ARCHITECTURES:
        depths, width_factor = ARCHITECTURES[args.arch]
        config = BitConfig(depths=depths, width_factor=width_factor, num_groups=args.num_groups)
    else:
        raise ValueError(f"Unknown --arch {args.arch!r}: use one of {', '.join(ARCHITECTURES)} or 'custom'.")
    check = None
    if args.fewshot_every:
        if not (args.fewshot_data and args.fewshot_eval_data):
            raise ValueError("--fewshot-every needs --fewshot-data and --fewshot-eval-data (a downstream dataset).")
        classes = args.fewshot_classes.split(",") if args.fewshot_classes else None
        check = FewShotCheck(args.fewshot_data, args.fewshot_eval_data, args.fewshot_every, classes,
                             tuple(args.fewshot_shots))  # fmt: skip
    return pretrain(
        load_data(args.data, args.classes), config, out=args.out or default_out("pretrain"), fewshot_check=check,
        on_plan=functools.partial(print_plan, stream=sys.stderr if args.json else sys.stdout), dry_run=args.dry_run,
        eval_data=load_data(args.eval_data, args.classes) if args.eval_data else None, epochs=args.epochs,
        warmup_epochs=args.warmup_epochs, batch_size=args.batch_size, batch_split=args.batch_split, crop=args.crop,
        seed=args.seed, resume=args.resume, save_every=args.save_every, device=args.device, bf16=args.bf16,
        progress=not args.quiet, **_speed_options(args),
    )  # fmt: skip


def run_evaluate(args: argparse.Namespace) -> dict:
    from .. import BitImageProcessor
    from ..pipeline import load_classifier
    from ..train.evaluate import evaluate

    model = load_classifier(args.model, args.device, compile=args.compile, bf16=args.bf16)
    return evaluate(
        model, load_data(args.data, args.classes), BitImageProcessor.from_pretrained(args.model), args.batch_size,
        workers=args.workers, bf16=args.bf16, progress=not args.quiet,
    )  # fmt: skip


def _print_metrics(metrics: dict) -> None:
    if "runs" in metrics:
        for seed, run in zip(metrics["seeds"], metrics["runs"]):
            print(f"seed {seed}: top-1 {run['eval']['top1']:.4f}" if "eval" in run else f"seed {seed}: done")
        if "eval_top1_mean" in metrics:
            print(
                f"top-1 over {len(metrics['runs'])} seeds: {metrics['eval_top1_mean']:.4f} ± {metrics['eval_top1_std']:.4f}"
            )
        return
    result = metrics.get("eval", metrics if "top1" in metrics else None)
    if "model_dir" in metrics:
        print(f"model saved to {metrics['model_dir']} ({metrics['steps']} steps, {metrics['seconds']} s)")
    if metrics.get("skipped_images"):
        print(f"skipped {len(metrics['skipped_images'])} unreadable training images")
    if result:
        line = f"top-1 {result['top1']:.4f}" + (f", top-5 {result['top5']:.4f}" if "top5" in result else "")
        print(f"{line} on {result['examples']} images")
        for name, accuracy in result["per_class"].items():
            print(f"  {accuracy:7.2%}  {name}")


def _without_confusion(metrics):
    """JSON output keeps everything but the (large) confusion matrices, which metrics.json holds."""
    if isinstance(metrics, dict):
        return {k: _without_confusion(v) for k, v in metrics.items() if k != "confusion"}
    if isinstance(metrics, list):
        return [_without_confusion(v) for v in metrics]
    return metrics


def handle(args: argparse.Namespace) -> int:
    runner = {"finetune": run_finetune, "pretrain": run_pretrain, "evaluate": run_evaluate}[args.command]
    metrics = runner(args)
    if metrics.get("rank", 0) == 0:
        print(json.dumps(_without_confusion(metrics), indent=2)) if args.json else _print_metrics(metrics)
    return 0
