"""`bigtransfer models | info | convert`: the named checkpoints, what a model is, and export to transformers."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .training import MODEL_HELP


def run_models(args: argparse.Namespace) -> list[dict]:
    from ..download import cache_dir
    from ..zoo import ZOO

    return _bundled_rows() + [
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


def _bundled_rows() -> list[dict]:
    """The models shipped inside the package (no download), described from their own files."""
    from safetensors import safe_open

    from ..io import read_json
    from ..sources import BUNDLED_MODELS, bundled_model
    from ..train.evaluate import fixed_output_size

    rows = []
    for name, upstream in BUNDLED_MODELS.items():
        directory = bundled_model(name)
        with safe_open(directory / "model.safetensors", "pt") as weights:
            parameters = sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())  # noqa: SIM118 (safe_open is not iterable)
        config, processor = read_json(directory / "config.json"), read_json(directory / "preprocessor_config.json")
        rows.append({"name": name, "parameters": parameters, "upstream": upstream,
                     "head": len(config["id2label"]), "resolution": fixed_output_size(processor)[0], "top1": None,
                     "cached": True, "url": None})  # fmt: skip
    return rows


def _print_models(rows: list[dict]) -> None:
    print(f"{'name':28} {'params':>8} {'head':>6} {'res':>4} {'top-1':>6}  upstream")
    for row in rows:
        top1 = f"{row['top1']:.2f}" if row["top1"] else "–"
        cached = "  (cached)" if row["cached"] and row["url"] else ""
        print(
            f"{row['name']:28} {row['parameters'] / 1e6:7.1f}M {row['head']:>6} {row['resolution']:>4} {top1:>6}  "
            f"{row['upstream']}{cached}"
        )


def run_info(args: argparse.Namespace) -> dict:
    from .. import BitForImageClassification, BitImageProcessor
    from ..download import cache_dir
    from ..zoo import find_entry

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
    from .. import BitImageProcessor

    try:
        BitImageProcessor.from_pretrained(name)
    except FileNotFoundError:
        return False
    return True


def run_convert(args: argparse.Namespace) -> dict:
    from .. import BitForImageClassification, BitImageProcessor

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


def handle_models(args: argparse.Namespace) -> int:
    rows = run_models(args)
    print(json.dumps(rows, indent=2)) if args.json else _print_models(rows)
    return 0


def readable_lines(data: dict, indent: int = 0) -> list[str]:
    """`key: value` lines, nested dicts indented under their key (the text form of `info`)."""
    lines = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            lines += [" " * indent + f"{key}:"] + readable_lines(value, indent + 2)
        else:
            shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
            lines.append(" " * indent + f"{key}: {shown}")
    return lines


def handle_info(args: argparse.Namespace) -> int:
    info = run_info(args)
    print(json.dumps(info, indent=2, default=str) if args.json else "\n".join(readable_lines(info)))
    return 0


def handle_convert(args: argparse.Namespace) -> int:
    result = run_convert(args)
    summary = f"wrote {result['saved_to']} ({result['parameters']:,} parameters)"
    print(json.dumps(result, indent=2) if args.json else summary)
    return 0


def register(commands) -> None:
    models = commands.add_parser(
        "models",
        help="list the models that load by name",
        description="The models that load by name: the one shipped in the package, and Google's released BiT "
        "checkpoints (downloaded on first use into the cache; '(cached)' marks those already there). top-1 is "
        "the ILSVRC-2012 validation accuracy Google reports for the fine-tuned heads.",
    )
    models.add_argument("--json", action="store_true", help="print the list as JSON (with URLs)")

    info = commands.add_parser(
        "info",
        help="config, parameter count and input size of a model",
        description="What a model is: parameters, head, input size, preprocessing and config. A zoo name not yet "
        "downloaded is described from the catalogue, without downloading it.",
    )
    info.add_argument("model", help=MODEL_HELP)
    info.add_argument("--json", action="store_true", help="print as JSON")
    models.set_defaults(handler=handle_models)
    info.set_defaults(handler=handle_info)

    convert = commands.add_parser(
        "convert",
        help="write any MODEL as a transformers directory",
        description="Write config.json, model.safetensors and preprocessor_config.json that transformers loads "
        "(BitForImageClassification.from_pretrained) with identical outputs.",
    )
    convert.add_argument("source", help="the model to convert: " + MODEL_HELP)
    convert.add_argument("out_dir", help="directory to create")
    convert.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty directory")
    convert.add_argument("--json", action="store_true", help="print the summary as JSON")
    convert.set_defaults(handler=handle_convert)
