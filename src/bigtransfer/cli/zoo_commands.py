"""`bigtransfer models | info | convert`: the named checkpoints, what a model is, and export to transformers."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ._options import add_model_argument, add_out_argument, add_output_arguments, emit


def run_models(args: argparse.Namespace) -> list[dict]:
    from ..checkpoints.catalogue import ZOO
    from ..checkpoints.download import cache_dir

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

    from .._util.files import read_json
    from ..checkpoints.catalogue import BUNDLED_MODELS, bundled_model
    from ..processing import BitImageProcessor

    rows = []
    for name, upstream in BUNDLED_MODELS.items():
        directory = bundled_model(name)
        with safe_open(directory / "model.safetensors", "pt") as weights:
            parameters = sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())  # noqa: SIM118 (safe_open is not iterable)
        config, processor = read_json(directory / "config.json"), BitImageProcessor.from_pretrained(directory)
        rows.append({"name": name, "parameters": parameters, "upstream": upstream,
                     "head": len(config["id2label"]), "resolution": processor.eval_transform().fixed_size()[0],
                     "top1": None,
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
    from ..checkpoints.catalogue import find_entry
    from ..checkpoints.download import cache_dir
    from ..models.modeling import BitForImageClassification
    from ..processing.record import zoo_settings

    entry = None if Path(args.model).expanduser().exists() else find_entry(args.model)  # a local path wins
    if entry is not None and not (cache_dir() / entry.file).is_file():  # describe it without a download
        row = next(row for row in run_models(args) if row["name"] == entry.name)
        return row | {"preprocessing": zoo_settings(entry.preprocessing), "notes": entry.notes}
    model = BitForImageClassification.from_pretrained(args.model)
    processor = _own_preprocessing(args.model)
    crop = processor.crop_size if processor and processor.do_center_crop else (processor.size if processor else None)
    return {
        "model": args.model,
        "parameters": model.num_parameters(),
        "num_labels": model.config.num_labels,
        "input_size": crop,
        "preprocessing": processor.to_dict() if processor else None,
        "config": model.config.to_dict() | {"id2label": f"{model.config.num_labels} labels"},
    }


def _own_preprocessing(name: str):
    """The model's own evaluation processor, or None when it has none (nothing is guessed)."""
    from ..processing.exact import BitImageProcessor

    try:
        return BitImageProcessor.from_pretrained(name)
    except FileNotFoundError:
        return None


def run_convert(args: argparse.Namespace) -> dict:
    from ..models.modeling import BitForImageClassification

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{out} is not empty: choose a new directory or pass --overwrite (nothing was written).")
    model = BitForImageClassification.from_pretrained(args.model)
    processor = _own_preprocessing(args.model)
    model.save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(out)
    else:  # what an earlier conversion into this folder left would be taken for this model's preprocessing
        (out / "preprocessor_config.json").unlink(missing_ok=True)
    return {
        "source": args.model,
        "saved_to": str(out),
        "parameters": model.num_parameters(),
        "num_labels": model.config.num_labels,
        "preprocessing": processor.to_dict() if processor is not None else None,
    }


def handle_models(args: argparse.Namespace) -> int:
    emit(run_models(args), args.json, _print_models)
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
    emit(run_info(args), args.json, lambda info: print("\n".join(readable_lines(info))))
    return 0


def _print_conversion(result: dict) -> None:
    print(f"wrote {result['saved_to']} ({result['parameters']:,} parameters)")
    if result["preprocessing"] is None:
        print(
            f"{result['source']} names no preprocessing, so none was written: save the processor the model was "
            f"trained with into {result['saved_to']} (`processor.save_pretrained(DIR)`) before predicting with it."
        )


def handle_convert(args: argparse.Namespace) -> int:
    emit(run_convert(args), args.json, _print_conversion)
    return 0


def register(commands) -> None:
    models = commands.add_parser(
        "models",
        help="list the models that load by name",
        description="The models that load by name: the one shipped in the package, and Google's released BiT "
        "checkpoints (downloaded on first use into the cache; '(cached)' marks those already there). top-1 is "
        "the ILSVRC-2012 validation accuracy Google reports for the fine-tuned heads.",
    )
    add_output_arguments(models, "print the list as JSON (with URLs)", progress=False)

    info = commands.add_parser(
        "info",
        help="config, parameter count and input size of a model",
        description="What a model is: parameters, head, input size, preprocessing and config. A zoo name not yet "
        "downloaded is described from the catalogue, without downloading it.",
    )
    add_model_argument(info, "the model to describe", positional=True)
    add_output_arguments(info, "print as JSON", progress=False)
    models.set_defaults(handler=handle_models)
    info.set_defaults(handler=handle_info)

    convert = commands.add_parser(
        "convert",
        help="write any MODEL as a transformers directory",
        description="Write config.json, model.safetensors and preprocessor_config.json that transformers loads "
        "(BitForImageClassification.from_pretrained) with identical outputs.",
    )
    add_model_argument(convert, "the model to convert", positional=True)
    add_out_argument(convert, "directory to create", positional=True)
    convert.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty directory")
    add_output_arguments(convert, "print the summary as JSON", progress=False)
    convert.set_defaults(handler=handle_convert)
