"""`bigtransfer predict`: classify files and folders; unreadable images are reported, not fatal."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._options import (
    add_images_argument,
    add_inference_arguments,
    add_model_argument,
    add_model_name_arguments,
    add_output_arguments,
    collect_images,
    emit,
    image_inputs,
    inference_settings,
    positive_int,
    probability,
    report_skipped,
    repository_model,
)

TOP_K = 5  # classes per image a single-label model lists by default


def run_predict(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """Decoded and preprocessed exactly as `evaluate` does (same workers, same code), so the two agree."""
    import numpy as np
    import torch

    from .._util.text import printable
    from ..data.datasets import ImageDataset
    from ..inference.metrics import MULTI_LABEL_THRESHOLD
    from ..inference.pipelines import at_or_above, class_scores, is_multi_label, ranked
    from ..inference.predict import predict_logits
    from ..processing.exact import BitImageProcessor
    from ..runtime.classifier import load_classifier

    files, errors = collect_images(image_inputs(args)), []
    if not files:
        return [], errors
    settings, source = inference_settings(args), repository_model(args)
    model = load_classifier(source, settings)
    images = ImageDataset(np.zeros(len(files), dtype=np.int64), [], "the inputs", paths=files)
    predictions = predict_logits(model, images, BitImageProcessor.from_pretrained(source), settings,
                                 progress=len(files) > args.batch_size and not args.quiet)  # fmt: skip
    errors += [{"file": printable(name), "error": printable(error)} for name, error in predictions.failures]
    scores = class_scores(torch.from_numpy(predictions.rows), model.config)  # sigmoid for a multi-label head
    multi_label = is_multi_label(model.config)
    top = ranked(scores, args.top_k or (scores.shape[-1] if multi_label else TOP_K), model.config.id2label)
    threshold = args.threshold if args.threshold is not None else MULTI_LABEL_THRESHOLD if multi_label else None
    if threshold is not None:
        top = at_or_above(top, threshold)
    results = [{"file": printable(files[i]), "predictions": best} for i, best in zip(predictions.indices, top)]
    return results, errors


def _write_predictions_csv(path: str, results: list[dict]) -> None:
    import csv
    import io

    from .._util.files import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "rank", "label", "score"])
    for result in results:
        for rank, prediction in enumerate(result["predictions"], 1):
            writer.writerow([result["file"], rank, prediction["label"], f"{prediction['score']:.6f}"])
    atomic_write_text(Path(path), buffer.getvalue())


def _print_predictions(results: list[dict]) -> None:
    for result in results:
        print(result["file"])
        for prediction in result["predictions"]:
            print(f"  {prediction['score']:7.2%}  {prediction['label']}")
        if not result["predictions"]:
            print("  no class at or above the threshold")


def handle(args: argparse.Namespace) -> int:
    out = args.out or args.csv
    if out and Path(out).suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--out {out}: name a .csv file (file,rank,label,score rows) or a .json file (the report).")
    if out and Path(out).exists() and not args.overwrite:  # before the model loads: nothing is spent to be refused
        raise FileExistsError(f"{out} already exists: choose another --out, or pass --overwrite to replace it.")
    results, errors = run_predict(args)
    if out and Path(out).suffix.lower() == ".json":
        from .._util.files import write_json

        write_json(Path(out), {"results": results, "errors": errors})
    elif out:
        _write_predictions_csv(out, results)
    if out:
        print(f"wrote {len(results)} predictions to {out}")
    else:
        emit({"results": results, "errors": errors} if args.json else results, args.json, _print_predictions)
    return report_skipped(errors)


def register(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="classify image files and folders",
        description="Classify images (files, or folders searched recursively): the top classes, or for a multi-label "
        "model every class whose sigmoid score reaches --threshold. Unreadable images are reported and skipped; the "
        "exit code is 1 when any input failed.",
    )
    add_images_argument(predict, "image files and/or directories")
    add_model_argument(predict, "the classifier")
    add_model_name_arguments(predict)
    predict.add_argument("--top-k", type=positive_int, default=None,
                         help=f"at most this many classes per image, best first (default {TOP_K}; a multi-label "
                         "model: all of those at or above --threshold)")  # fmt: skip
    predict.add_argument("--threshold", type=probability, default=None,
                         help="list only the classes whose score is at least this (default: 0.5 for a multi-label "
                         "model, whose scores are independent sigmoids; none for a single-label one)")  # fmt: skip
    add_inference_arguments(predict)
    output = predict.add_mutually_exclusive_group()
    output.add_argument("--out", metavar="FILE", help="write the predictions to FILE: .csv for file,rank,label,score "
                        "rows, .json for the report --json prints")  # fmt: skip
    output.add_argument("--csv", metavar="FILE", help="write file,rank,label,score rows to FILE (as --out FILE.csv)")
    add_output_arguments(output, "print results as JSON", progress=False)
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --out FILE")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(handler=handle)
