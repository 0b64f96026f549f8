"""`bigtransfer predict`: classify files and folders; unreadable images are reported, not fatal."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..image_inputs import IMAGE_SUFFIXES
from .training import add_inference_arguments


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
    """Decoded and preprocessed exactly as `evaluate` does (same workers, same code), so the two agree."""
    import numpy as np
    import torch

    from ..pipeline import class_scores, load_classifier, load_processor, ranked
    from ..processing import BitImageProcessor
    from ..train.data import ImageDataset
    from ..train.evaluate import predict_logits

    files, errors = collect_images(args.inputs)
    if not files:
        return [], errors
    model = load_classifier(args.model, args.device, compile=args.compile, bf16=args.bf16)
    images = ImageDataset(np.zeros(len(files), dtype=np.int64), [], "the inputs", paths=files)
    predictions = predict_logits(model, images, load_processor(args.model, BitImageProcessor), args.batch_size,
                                 workers=args.workers, bf16=args.bf16, progress=len(files) > args.batch_size and not args.quiet)  # fmt: skip
    errors += [{"file": name, "error": error} for name, error in predictions.failures]
    scores = class_scores(torch.from_numpy(predictions.logits), model.config)
    top = ranked(scores, args.top_k, model.config.id2label)
    return [{"file": str(files[i]), "predictions": best} for i, best in zip(predictions.indices, top)], errors


def _write_predictions_csv(path: str, results: list[dict]) -> None:
    import csv
    import io

    from ..io import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "rank", "label", "score"])
    for result in results:
        for rank, prediction in enumerate(result["predictions"], 1):
            writer.writerow([result["file"], rank, prediction["label"], f"{prediction['score']:.6f}"])
    atomic_write_text(Path(path), buffer.getvalue())


def handle(args: argparse.Namespace) -> int:
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
    return report_skipped(errors)


def report_skipped(errors: list[dict]) -> int:
    """Each input that could not be used, on stderr; the exit code: 1 when there were any."""
    for error in errors:
        print(f"skipped {error['file']}: {error['error']}", file=sys.stderr)
    return 1 if errors else 0


def register(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="classify image files and folders",
        description="Classify images (files, or folders searched recursively). Unreadable images are reported "
        "and skipped; the exit code is 1 when any input failed.",
    )
    predict.add_argument("inputs", nargs="+", help="image files and/or directories")
    predict.add_argument("--model", required=True,
                         help="MODEL: zoo name, .npz, directory, Hub id, timm weights, or an export directory")  # fmt: skip
    predict.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    predict.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    add_inference_arguments(predict)
    output = predict.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print results as JSON")
    output.add_argument("--csv", metavar="FILE", help="write file,rank,label,score rows to FILE")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(handler=handle)
