"""`bigtransfer fewshot | embed`: what a model's frozen pooled features are worth (linear few-shot accuracy),
and the features themselves for retrieval or clustering."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ._options import (
    add_data_argument,
    add_images_argument,
    add_inference_arguments,
    add_model_argument,
    add_output_arguments,
    collect_images,
    emit,
    image_inputs,
    inference_settings,
    load_data,
    positive_float,
    positive_int,
    report_skipped,
    shot_counts,
)


def run_fewshot(args: argparse.Namespace) -> dict:
    from ..inference.few_shot import FewShotProtocol, fewshot

    protocol = FewShotProtocol(shots=args.shots, seeds=args.runs, l2_reg=args.l2_reg)
    return fewshot(
        args.model, load_data(args.data, None), load_data(args.eval_data, None),
        classes=args.classes.split(",") if args.classes else None, protocol=protocol,
        settings=inference_settings(args), progress=not args.quiet,
    )  # fmt: skip


def print_fewshot_table(result: dict) -> None:
    print(f"linear few-shot top-1 on {result['eval_examples']} images, {len(result['classes'])} classes, "
          f"{result['feature_dim']}-d features, l2 {result['l2_reg']:g}:")  # fmt: skip
    print(f"  {'shots':>5}  {'mean':>6}  {'std':>6}  runs (seeds 0…{result['seeds'] - 1})")
    for shots, row in result["shots"].items():
        runs = " ".join(f"{accuracy:.4f}" for accuracy in row["runs"])
        print(f"  {shots:>5}  {row['mean']:.4f}  {row['std']:.4f}  {runs}")


def sidecar_of(out: Path) -> Path:
    """features.npy → features.paths.txt: the image path of each row, in order."""
    return out.with_suffix(".paths.txt")


def run_embed(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    import numpy as np
    import torch

    from .._util.device import resolve_device
    from .._util.files import atomic_path
    from .._util.text import printable
    from ..data.datasets import ImageDataset
    from ..inference.predict import pooled_features
    from ..models.modeling import BitModel
    from ..processing.exact import BitImageProcessor
    from ..runtime.classifier import load_classifier
    from ..runtime.exported import is_export_directory

    out = Path(args.out)
    if out.suffix != ".npy":
        raise ValueError(f"--out {out}: give a .npy file name (the paths go beside it in {sidecar_of(out).name}).")
    if not args.overwrite and (out.exists() or sidecar_of(out).exists()):
        raise FileExistsError(
            f"{out} (or {sidecar_of(out).name}) already exists: choose another --out, or --overwrite."
        )
    inputs = image_inputs(args)
    files, errors = collect_images(inputs), []
    if not files:
        raise FileNotFoundError(f"No images found in {', '.join(inputs)}.")
    settings = inference_settings(args)
    if is_export_directory(args.model):  # an OpenVINO export gives pooled features beside the logits
        model = load_classifier(args.model, settings)
    else:
        model = BitModel.from_pretrained(args.model).to(resolve_device(settings.device))
        model = torch.compile(model) if settings.compile else model
    images = ImageDataset(np.zeros(len(files), dtype=np.int64), [], "the inputs", paths=files)
    pooled = pooled_features(model, images, BitImageProcessor.from_pretrained(args.model), settings,
                             progress=not args.quiet)  # fmt: skip
    errors += [{"file": printable(name), "error": printable(error)} for name, error in pooled.failures]
    if not len(pooled.indices):
        raise ValueError(f"None of the {len(files)} images could be read.")
    paths = [files[i] for i in pooled.indices]
    with atomic_path(out) as features_tmp, atomic_path(sidecar_of(out)) as paths_tmp:
        with open(features_tmp, "wb") as file:
            np.save(file, pooled.rows.astype(np.float32))
        paths_tmp.write_bytes(b"".join(os.fsencode(path) + b"\n" for path in paths))  # the exact names, any bytes
    summary = {"out": str(out), "paths": str(sidecar_of(out)), "rows": len(paths), "dim": int(pooled.rows.shape[1])}
    return summary, errors


def handle_fewshot(args: argparse.Namespace) -> int:
    result = run_fewshot(args)
    emit(result, args.json, print_fewshot_table)
    skipped = result["skipped_train_images"] + result["skipped_eval_images"]
    return report_skipped([{"file": name, "error": "unreadable, skipped"} for name in skipped])


def _print_embedding(summary: dict) -> None:
    print(f"wrote {summary['rows']} × {summary['dim']} features to {summary['out']} (paths: {summary['paths']})")


def handle_embed(args: argparse.Namespace) -> int:
    summary, errors = run_embed(args)
    emit({**summary, "errors": errors} if args.json else summary, args.json, _print_embedding)
    return report_skipped(errors)


def register(commands) -> None:
    fewshot = commands.add_parser(
        "fewshot",
        help="linear few-shot accuracy of a model's frozen features (seconds, no fine-tuning)",
        description="big_vision's few-shot linear evaluation: for each shot count and seed, a balanced seeded "
        "subset of --data; the model's pooled pre-logit features (computed once per image); closed-form "
        "L2-regularised least squares onto ±1 one-hot targets; top-1 on all of --eval-data.",
    )
    add_model_argument(fewshot, "the model whose features are measured (a classifier's head is ignored)")
    add_data_argument(fewshot, "images to draw the few shots from")
    fewshot.add_argument("--eval-data", required=True, help="labelled test images with the same class names")
    fewshot.add_argument("--classes", help="use only these classes (comma-separated names or indices of --data)")
    fewshot.add_argument("--shots", type=shot_counts, default=[1, 5, 10], help="images per class (default 1,5,10)")
    fewshot.add_argument("--runs", "--seeds", type=positive_int, default=3, dest="runs",
                         help="subsets per shot count, seeds 0…N−1, as finetune --runs repeats (default 3)")  # fmt: skip
    fewshot.add_argument(
        "--l2-reg", type=positive_float, default=2.0**10, help="ridge strength (default 1024, as big_vision)"
    )
    add_inference_arguments(fewshot)
    add_output_arguments(fewshot, "print the result as JSON")
    fewshot.set_defaults(handler=handle_fewshot)

    embed = commands.add_parser(
        "embed",
        help="pooled features of images, as a .npy matrix",
        description="Pooled pre-logit features (BitModel's pooler_output, flattened): one float32 row per "
        "readable image in FILE.npy, their paths in FILE.paths.txt. Unreadable images are reported and skipped "
        "(exit code 1); both files appear whole or not at all.",
    )
    add_images_argument(embed, "image files and/or directories (searched recursively)")
    add_model_argument(embed, "the model whose features are written (a classifier's head is ignored)")
    embed.add_argument("--out", required=True, metavar="FILE.npy", help="the features file to write")
    embed.add_argument("--overwrite", action="store_true", help="replace an existing FILE.npy")
    add_inference_arguments(embed)
    add_output_arguments(embed, "print a JSON summary")
    embed.set_defaults(handler=handle_embed)
