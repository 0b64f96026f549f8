"""`bigtransfer fewshot | embed`: what a model's frozen pooled features are worth (linear few-shot accuracy),
and the features themselves for retrieval or clustering."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .predict import collect_images, report_skipped
from .training import add_inference_arguments, load_data, shot_counts


def run_fewshot(args: argparse.Namespace) -> dict:
    from ..train.few_shot import fewshot

    return fewshot(
        args.model, load_data(args.data, None), load_data(args.eval_data, None),
        classes=args.classes.split(",") if args.classes else None, shots=args.shots, seeds=args.seeds,
        l2_reg=args.l2_reg, batch_size=args.batch_size, device=args.device, workers=args.workers, bf16=args.bf16,
        compile=args.compile, progress=not args.quiet,
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

    from ..io import atomic_path
    from ..loading import resolve_device
    from ..modeling import BitModel
    from ..pipeline import load_processor
    from ..processing import BitImageProcessor
    from ..train.data import ImageDataset
    from ..train.evaluate import pooled_features

    out = Path(args.out)
    if out.suffix != ".npy":
        raise ValueError(f"--out {out}: give a .npy file name (the paths go beside it in {sidecar_of(out).name}).")
    if not args.overwrite and (out.exists() or sidecar_of(out).exists()):
        raise FileExistsError(
            f"{out} (or {sidecar_of(out).name}) already exists: choose another --out, or --overwrite."
        )
    files, errors = collect_images(args.inputs)
    if not files:
        raise FileNotFoundError(f"No images found in {', '.join(args.inputs)}.")
    model = BitModel.from_pretrained(args.model).to(resolve_device(args.device))
    model = torch.compile(model) if args.compile else model
    images = ImageDataset(np.zeros(len(files), dtype=np.int64), [], "the inputs", paths=files)
    pooled = pooled_features(model, images, load_processor(args.model, BitImageProcessor), args.batch_size,
                             workers=args.workers, bf16=args.bf16, progress=not args.quiet)  # fmt: skip
    errors += [{"file": name, "error": error} for name, error in pooled.failures]
    if not len(pooled.indices):
        raise ValueError(f"None of the {len(files)} images could be read.")
    paths = [str(files[i]) for i in pooled.indices]
    with atomic_path(out) as features_tmp, atomic_path(sidecar_of(out)) as paths_tmp:
        with open(features_tmp, "wb") as file:
            np.save(file, pooled.logits.astype(np.float32))
        paths_tmp.write_text("".join(path + "\n" for path in paths), encoding="utf-8")
    summary = {"out": str(out), "paths": str(sidecar_of(out)), "rows": len(paths), "dim": int(pooled.logits.shape[1])}
    return summary, errors


def handle_fewshot(args: argparse.Namespace) -> int:
    result = run_fewshot(args)
    print(json.dumps(result, indent=2)) if args.json else print_fewshot_table(result)
    return 0


def handle_embed(args: argparse.Namespace) -> int:
    summary, errors = run_embed(args)
    if args.json:
        print(json.dumps({**summary, "errors": errors}, indent=2))
    else:
        print(f"wrote {summary['rows']} × {summary['dim']} features to {summary['out']} (paths: {summary['paths']})")
    return report_skipped(errors)


def register(commands) -> None:
    fewshot = commands.add_parser(
        "fewshot",
        help="linear few-shot accuracy of a model's frozen features (seconds, no fine-tuning)",
        description="big_vision's few-shot linear evaluation: for each shot count and seed, a balanced seeded "
        "subset of --data; the model's pooled pre-logit features (computed once per image); closed-form "
        "L2-regularised least squares onto ±1 one-hot targets; top-1 on all of --eval-data.",
    )
    fewshot.add_argument("--model", required=True, help="MODEL (a classifier's head is ignored)")
    fewshot.add_argument("--data", required=True, help="images to draw the few shots from, as for finetune --data")
    fewshot.add_argument("--eval-data", required=True, help="labelled test images with the same class names")
    fewshot.add_argument("--classes", help="use only these classes (comma-separated names or indices of --data)")
    fewshot.add_argument("--shots", type=shot_counts, default=[1, 5, 10], help="images per class (default 1,5,10)")
    fewshot.add_argument("--seeds", type=int, default=3, help="subsets per shot count, seeds 0…N−1 (default 3)")
    fewshot.add_argument("--l2-reg", type=float, default=2.0**10, help="ridge strength (default 1024, as big_vision)")
    fewshot.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    add_inference_arguments(fewshot)
    fewshot.add_argument("--json", action="store_true", help="print the result as JSON")
    fewshot.add_argument("--quiet", action="store_true", help="no progress bar")
    fewshot.set_defaults(handler=handle_fewshot)

    embed = commands.add_parser(
        "embed",
        help="pooled features of images, as a .npy matrix",
        description="Pooled pre-logit features (BitModel's pooler_output, flattened): one float32 row per "
        "readable image in FILE.npy, their paths in FILE.paths.txt. Unreadable images are reported and skipped "
        "(exit code 1); both files appear whole or not at all.",
    )
    embed.add_argument("inputs", nargs="+", help="image files and/or directories (searched recursively)")
    embed.add_argument("--model", required=True, help="MODEL (a classifier's head is ignored)")
    embed.add_argument("--out", required=True, metavar="FILE.npy", help="where to write the features")
    embed.add_argument("--overwrite", action="store_true", help="replace an existing FILE.npy")
    embed.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    add_inference_arguments(embed)
    embed.add_argument("--json", action="store_true", help="print a JSON summary")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    embed.set_defaults(handler=handle_embed)
