"""The `bigtransfer` command line."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from .image_inputs import IMAGE_SUFFIXES


def _demo_image(path: str | None):
    if path:
        return path, path
    try:
        import skimage.data
    except ImportError:
        sys.exit("The demo photo comes from scikit-image: `pip install scikit-image`, or pass --image PATH.")
    from PIL import Image

    return Image.fromarray(skimage.data.chelsea()), "scikit-image chelsea (a cat)"


def run_demo(args: argparse.Namespace) -> dict:
    """Build a BiT-R50x1, save it, reload it, check both agree, and classify a photo."""
    from . import BitConfig, BitForImageClassification, BitImageProcessor

    torch.manual_seed(args.seed)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bigtransfer-demo-"))
    config = BitConfig(num_labels=args.num_labels)
    model = BitForImageClassification(config).eval()
    model.save_pretrained(out)
    reloaded = BitForImageClassification.from_pretrained(out)
    processor = BitImageProcessor()
    processor.save_pretrained(out)
    image, image_name = _demo_image(args.image)
    pixel_values = BitImageProcessor.from_pretrained(out)(image, return_tensors="pt")["pixel_values"]
    start = time.perf_counter()
    with torch.inference_mode():
        logits = reloaded(pixel_values).logits
        same = torch.equal(logits, model(pixel_values).logits)
    elapsed = time.perf_counter() - start
    probabilities = logits.softmax(-1)[0]
    top = probabilities.topk(min(args.top_k, probabilities.numel()))
    return {
        "model": f"BiT-R50x1 (random weights, seed {args.seed}: no pretrained checkpoint is needed offline)",
        "parameters": reloaded.num_parameters(),
        "saved_to": str(out),
        "reloaded_logits_identical": same,
        "image": image_name,
        "input_shape": list(pixel_values.shape),
        "seconds": round(elapsed, 3),
        "top_k": [
            {"label": config.id2label[int(i)], "score": round(float(p), 6)} for p, i in zip(top.values, top.indices)
        ],
    }


def _print_demo(result: dict) -> None:
    print(f"{result['model']}: {result['parameters']:,} parameters, saved to {result['saved_to']}")
    print(f"reloaded from disk, logits identical to the saved model: {result['reloaded_logits_identical']}")
    print(f"{result['image']} → pixel_values {result['input_shape']}, forward in {result['seconds']} s")
    for rank, entry in enumerate(result["top_k"], 1):
        print(f"  {rank}. {entry['label']:<12} {entry['score']:.4f}")


def run_models(args: argparse.Namespace) -> list[dict]:
    from .download import cache_dir
    from .zoo import ZOO

    return [
        {
            "name": entry.name,
            "parameters": entry.parameters,
            "upstream": entry.upstream,
            "head": entry.num_labels,
            "resolution": entry.preprocessing.crop or entry.preprocessing.size,
            "top1": entry.top1,
            "cached": (cache_dir() / entry.file).is_file(),
            "url": entry.url,
        }
        for entry in ZOO.values()
    ]


def _print_models(rows: list[dict]) -> None:
    print(f"{'name':28} {'params':>8} {'head':>6} {'res':>4} {'top-1':>6}  upstream")
    for row in rows:
        top1 = f"{row['top1']:.2f}" if row["top1"] else "–"
        cached = "  (cached)" if row["cached"] else ""
        print(
            f"{row['name']:28} {row['parameters'] / 1e6:7.1f}M {row['head']:>6} {row['resolution']:>4} {top1:>6}  "
            f"{row['upstream']}{cached}"
        )


def run_info(args: argparse.Namespace) -> dict:
    from . import BitForImageClassification, BitImageProcessor
    from .download import cache_dir
    from .zoo import find_entry

    entry = find_entry(args.model)
    if entry is not None and not (cache_dir() / entry.file).is_file():  # describe it without a download
        row = next(row for row in run_models(args) if row["name"] == entry.name)
        return row | {"preprocessing": entry.preprocessing.processor_settings(), "notes": entry.notes}
    model = BitForImageClassification.from_pretrained(args.model)
    processor = BitImageProcessor.from_pretrained(args.model) if _has_preprocessing(args.model) else None
    crop = processor.crop_size if processor and processor.do_center_crop else (processor.size if processor else None)
    return {
        "model": args.model,
        "parameters": model.num_parameters(),
        "num_labels": model.config.num_labels,
        "input_size": crop,
        "preprocessing": processor.to_dict() if processor else None,
        "config": model.config.to_dict() | {"id2label": f"{model.config.num_labels} labels"},
    }


def _has_preprocessing(name: str) -> bool:
    from . import BitImageProcessor

    try:
        BitImageProcessor.from_pretrained(name)
    except FileNotFoundError:
        return False
    return True


def collect_images(inputs: list[str]) -> tuple[list[Path], list[dict]]:
    """Files as given, directories searched recursively for images; missing paths reported, not fatal."""
    files, errors = [], []
    for name in inputs:
        path = Path(name).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            errors.append({"file": name, "error": "no such file or directory"})
    return files, errors


def run_predict(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    from tqdm.auto import tqdm

    from .image_inputs import load_image
    from .pipeline import pipeline

    classifier = pipeline("image-classification", model=args.model, device=args.device, batch_size=args.batch_size)
    files, errors = collect_images(args.inputs)
    results = []
    with tqdm(total=len(files), unit="img", disable=len(files) <= args.batch_size or args.quiet) as bar:
        for start in range(0, len(files), args.batch_size):
            batch, names = [], []
            for path in files[start : start + args.batch_size]:
                try:
                    batch.append(load_image(path))
                    names.append(str(path))
                except (OSError, ValueError, ImportError) as error:
                    errors.append({"file": str(path), "error": str(error)})
            if batch:
                ranked = classifier.ranked(classifier.scores(batch), args.top_k)
                results += [{"file": name, "predictions": top} for name, top in zip(names, ranked)]
            bar.update(len(files[start : start + args.batch_size]))
    return results, errors


def _write_predictions_csv(path: str, results: list[dict]) -> None:
    import csv
    import io

    from .io import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "rank", "label", "score"])
    for result in results:
        for rank, prediction in enumerate(result["predictions"], 1):
            writer.writerow([result["file"], rank, prediction["label"], f"{prediction['score']:.6f}"])
    atomic_write_text(Path(path), buffer.getvalue())


def run_convert(args: argparse.Namespace) -> dict:
    from . import BitForImageClassification, BitImageProcessor

    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        sys.exit(f"{out} is not empty: choose a new directory or pass --overwrite (nothing was written).")
    model = BitForImageClassification.from_pretrained(args.source)
    processor = (
        BitImageProcessor.from_pretrained(args.source) if _has_preprocessing(args.source) else BitImageProcessor()
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return {
        "source": args.source,
        "saved_to": str(out),
        "parameters": model.num_parameters(),
        "num_labels": model.config.num_labels,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bigtransfer",
        description="BiT (Big Transfer) models: pretrained checkpoints, prediction and conversion.",
        epilog="A MODEL is a zoo name (see `bigtransfer models`), an original BiT .npz file, a transformers "
        "directory or Hub id, or a timm checkpoint (file or timm/… Hub id).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="offline tour: build a BiT-R50x1, save, reload and classify a photo",
        description="Build a BiT-R50x1 (random weights), save it with its preprocessor config, reload both, "
        "verify the reload gives identical logits and print the top-k classes of a photo.",
    )
    demo.add_argument("--out", help="directory to save the model into (default: a new temporary directory)")
    demo.add_argument("--image", help="photo to classify (default: scikit-image's cat)")
    demo.add_argument("--num-labels", type=int, default=1000, help="head size (default 1000)")
    demo.add_argument("--top-k", type=int, default=5, help="how many classes to print (default 5)")
    demo.add_argument("--seed", type=int, default=0, help="seed for the random weights (default 0)")
    demo.add_argument("--json", action="store_true", help="print the result as JSON")

    models = commands.add_parser("models", help="list the released BiT checkpoints by name")
    models.add_argument("--json", action="store_true", help="print the list as JSON")

    info = commands.add_parser("info", help="config, parameter count and input size of a model")
    info.add_argument("model", help="MODEL (see below)")
    info.add_argument("--json", action="store_true", help="print as JSON")

    predict = commands.add_parser(
        "predict",
        help="classify image files and folders",
        description="Classify images (files, or folders searched recursively). Unreadable images are reported "
        "and skipped; the exit code is 1 when any input failed.",
    )
    predict.add_argument("inputs", nargs="+", help="image files and/or directories")
    predict.add_argument("--model", required=True, help="MODEL: zoo name, .npz, directory, Hub id or timm weights")
    predict.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    predict.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    predict.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    output = predict.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print results as JSON")
    output.add_argument("--csv", metavar="FILE", help="write file,rank,label,score rows to FILE")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")

    convert = commands.add_parser(
        "convert",
        help="write any MODEL as a transformers directory",
        description="Write config.json, model.safetensors and preprocessor_config.json that transformers loads "
        "(BitForImageClassification.from_pretrained) with identical outputs.",
    )
    convert.add_argument("source", help="MODEL to convert")
    convert.add_argument("out_dir", help="directory to create")
    convert.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty directory")
    convert.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_training_commands(commands)
    return parser


def _add_data_arguments(parser: argparse.ArgumentParser, eval_required: bool = False) -> None:
    parser.add_argument(
        "--data",
        required=True,
        help="training data: image folder (one sub-folder per class), "
        "CSV (path,label), IDX images file (MNIST/Fashion-MNIST, .gz or not) or a saved `datasets` dir",
    )
    parser.add_argument("--eval-data", required=eval_required, help="evaluation data, in any of the same forms")
    parser.add_argument("--classes", help="use only these classes (comma-separated names or indices)")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="run directory (refuses an existing run unless --resume)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--save-every", type=int, default=None, help="also checkpoint every N steps")
    parser.add_argument("--batch-split", type=int, default=1, help="micro-batches per step (same update, less memory)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data order, augmentation, few-shot subsets")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward pass")
    parser.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_training_commands(commands) -> None:
    finetune = commands.add_parser(
        "finetune",
        help="fine-tune a pretrained BiT with the BiT-HyperRule",
        description="Fine-tune with the BiT-HyperRule: resolution, schedule and MixUp follow from the dataset; "
        "SGD momentum 0.9, zero-initialised head. Multi-process: torchrun --nproc_per_node N -m bigtransfer finetune …",
    )
    finetune.add_argument("--model", required=True, help="pretrained MODEL (zoo name, .npz, directory, Hub id)")
    _add_data_arguments(finetune)
    finetune.add_argument("--shots", type=int, default=None, help="K examples per class (balanced, seeded)")
    finetune.add_argument("--runs", type=int, default=1, help="repeat over this many seeds; report mean ± std")
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

    evaluate = commands.add_parser("evaluate", help="accuracy of a fine-tuned model on labelled data")
    evaluate.add_argument("--model", required=True, help="model directory (from finetune: RUN/model)")
    evaluate.add_argument("--data", required=True, help="labelled data, as for finetune --data")
    evaluate.add_argument("--classes", help="use only these classes (comma-separated names or indices)")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")

    pretrain = commands.add_parser(
        "pretrain",
        help="train a BiT from scratch with the upstream recipe",
        description="Upstream BiT training: SGD momentum 0.9, lr 0.03·batch/256, weight decay 1e-4, linear warm-up, "
        "÷10 at 1/3, 2/3 and 8/9 of training, Inception crop + flip.",
    )
    _add_data_arguments(pretrain)
    pretrain.add_argument("--arch", default="R50x1", help="R50x1 … R152x4, or 'custom' with the options below")
    pretrain.add_argument("--depths", help="custom: blocks per stage, e.g. 1,1,1,1")
    pretrain.add_argument("--hidden-sizes", help="custom: stage widths, e.g. 64,128,256,512")
    pretrain.add_argument("--embedding-size", type=int, default=64, help="custom: stem width")
    pretrain.add_argument("--num-groups", type=int, default=32, help="GroupNorm groups")
    pretrain.add_argument("--epochs", type=float, default=90)
    pretrain.add_argument("--warmup-epochs", type=float, default=5)
    pretrain.add_argument("--batch-size", type=int, default=256)
    pretrain.add_argument("--crop", type=int, default=224, help="training and eval resolution")
    _add_run_arguments(pretrain)


def _dataset(source: str, classes: str | None):
    from .train.data import load_dataset

    dataset = load_dataset(source)
    return dataset.select_classes(classes.split(",")) if classes else dataset


def run_finetune(args: argparse.Namespace) -> dict:
    from .train.finetune import finetune, finetune_runs

    options = dict(
        model=args.model, data=_dataset(args.data, args.classes),
        eval_data=_dataset(args.eval_data, args.classes) if args.eval_data else None, shots=args.shots,
        preset=args.preset, batch_size=args.batch_size, batch_split=args.batch_split, steps=args.steps,
        resize=args.resize, crop=args.crop, base_lr=args.base_lr, lr_scaling=args.lr_scaling, mixup_alpha=args.mixup,
        flip=not args.no_flip, resume=args.resume, save_every=args.save_every, eval_every=args.eval_every,
        device=args.device, bf16=args.bf16, progress=not args.quiet,
    )  # fmt: skip
    out = args.out or "bigtransfer-finetune"
    if args.runs > 1:
        return finetune_runs(args.runs, args.seed, out, **options)
    return finetune(out=out, seed=args.seed, **options)


def run_pretrain(args: argparse.Namespace) -> dict:
    from .config import BitConfig
    from .train.pretrain import pretrain
    from .zoo import ARCHITECTURES

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
    return pretrain(
        _dataset(args.data, args.classes), config, out=args.out or "bigtransfer-upstream",
        eval_data=_dataset(args.eval_data, args.classes) if args.eval_data else None, epochs=args.epochs,
        warmup_epochs=args.warmup_epochs, batch_size=args.batch_size, batch_split=args.batch_split, crop=args.crop,
        seed=args.seed, resume=args.resume, save_every=args.save_every, device=args.device, bf16=args.bf16,
        progress=not args.quiet,
    )  # fmt: skip


def run_evaluate(args: argparse.Namespace) -> dict:
    from . import BitForImageClassification, BitImageProcessor
    from .train.evaluate import evaluate

    model = BitForImageClassification.from_pretrained(args.model)
    return evaluate(
        model, _dataset(args.data, args.classes), BitImageProcessor.from_pretrained(args.model), args.batch_size
    )


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (OSError, ValueError, ImportError) as error:
        print(f"bigtransfer {args.command}: {error}", file=sys.stderr)
        return 2


def _without_confusion(metrics):
    """JSON output keeps everything but the (large) confusion matrices, which metrics.json holds."""
    if isinstance(metrics, dict):
        return {k: _without_confusion(v) for k, v in metrics.items() if k != "confusion"}
    if isinstance(metrics, list):
        return [_without_confusion(v) for v in metrics]
    return metrics


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        if args.out and (Path(args.out) / "model.safetensors").exists():
            sys.exit(f"{args.out} already holds a model: choose another --out (nothing was overwritten).")
        result = run_demo(args)
        print(json.dumps(result, indent=2)) if args.json else _print_demo(result)
    elif args.command in ("finetune", "pretrain", "evaluate"):
        runner = {"finetune": run_finetune, "pretrain": run_pretrain, "evaluate": run_evaluate}[args.command]
        metrics = runner(args)
        if metrics.get("rank", 0) == 0:
            print(json.dumps(_without_confusion(metrics), indent=2)) if args.json else _print_metrics(metrics)
    elif args.command == "models":
        rows = run_models(args)
        print(json.dumps(rows, indent=2)) if args.json else _print_models(rows)
    elif args.command == "info":
        result = run_info(args)
        print(json.dumps(result, indent=2, default=str))
    elif args.command == "convert":
        result = run_convert(args)
        print(
            json.dumps(result, indent=2)
            if args.json
            else f"wrote {result['saved_to']} ({result['parameters']:,} parameters)"
        )
    elif args.command == "predict":
        results, errors = run_predict(args)
        if args.json:
            print(json.dumps({"results": results, "errors": errors}, indent=2))
        elif args.csv:
            _write_predictions_csv(args.csv, results)
            print(f"wrote {len(results)} predictions to {args.csv}")
        else:
            for result in results:
                print(result["file"])
                for prediction in result["predictions"]:
                    print(f"  {prediction['score']:7.2%}  {prediction['label']}")
        for error in errors:
            print(f"skipped {error['file']}: {error['error']}", file=sys.stderr)
        return 1 if errors else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
