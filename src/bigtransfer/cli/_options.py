"""What the commands share: one builder per option (one name per idea, the same help everywhere), the data
reader, and one way to print a result as text or `--json`."""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

MODEL_HELP = (
    "MODEL: a name from `bigtransfer models` (e.g. BiT-M-R50x1, or the bundled bit-tiny-glyphs), an original BiT "
    ".npz file, a transformers model directory or Hub id, timm weights (a file or a timm/… Hub id), or for "
    "predict/evaluate an export directory; an existing local path always wins over a name"
)
DATA_HELP = (
    "image folder (one sub-folder per class), CSV (path,label), IDX images file (MNIST/Fashion-MNIST, .gz or not) "
    "a saved `datasets` directory, a `datasets` name (e.g. food101: its cache, or the Hub when reachable), or tar "
    "shards written by `bigtransfer shard` (their folder, a pattern like 'OUT/shard-{000000..000099}.tar', pipe: or "
    "https:// URLs)"
)
INFERENCE_BATCH = 32  # R50x1 at 448 px: ~2 GB of activations per forward pass; large models need less


class CommandParser(argparse.ArgumentParser):
    """argparse whose errors a person reads at once: one line naming the command and the problem, with the
    nearest valid spelling of a mistyped option or choice and a pointer to --help (argparse prints its whole
    usage block first, 20 lines that hide the one that matters); exit code 2 as argparse's. Options are never
    abbreviated: `--lr` must not quietly mean `--lr-scaling`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {_with_suggestion(message)} (see {self.prog} --help)\n")
        sys.exit(2)

    def reject_unknown(self, unknown: list[str]) -> NoReturn:
        """Fail on the arguments no option of this command took, suggesting the option each one was meant as."""
        named = []
        for argument in unknown:
            option = argument.split("=", 1)[0]
            near = difflib.get_close_matches(option, self._visible_options(), n=1) if option.startswith("-") else []
            named.append(f"{argument} (did you mean {near[0]}?)" if near else argument)
        self.error(f"unrecognized arguments: {' '.join(named)}")

    def command_parser(self, command: str | None) -> CommandParser:
        """The parser of `command` (a sub-command's name), or this one: errors are told in the command's name."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and command in action.choices:
                return action.choices[command]
        return self

    def _visible_options(self) -> list[str]:
        return [name for action in self._actions if action.help != argparse.SUPPRESS for name in action.option_strings]


class RenamedOption(argparse.Action):
    """An option's old spelling, hidden from --help: it still sets the new option, and says on stderr that it is
    going (`note`)."""

    def __init__(self, option_strings: list[str], dest: str, note: str, **kwargs: Any):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.note = note

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog}: {self.note}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _with_suggestion(message: str) -> str:
    """argparse's "invalid choice: 'x' (choose from …)" with the nearest choice named first."""
    found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if not found:
        return message
    choices = re.findall(r"'([^']*)'", found.group(2)) or [c.strip() for c in found.group(2).split(",")]
    near = difflib.get_close_matches(found.group(1), choices, n=1)
    return f"{message}; did you mean {near[0]!r}?" if near else message


def _bounded(kind: type, low: float, inclusive: bool) -> Callable[[str], Any]:
    """An argparse type that refuses values outside [low, ∞) (or (low, ∞)) with the valid range."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a number {'≥' if inclusive else '>'} {low}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _bounded(int, 0, inclusive=False)
non_negative_int = _bounded(int, 0, inclusive=True)
positive_float = _bounded(float, 0, inclusive=False)
non_negative_float = _bounded(float, 0, inclusive=True)


def probability(text: str) -> float:
    """An argparse type for a score threshold: a number in [0, 1]."""
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give a number from 0 to 1")
    return value


def below_one(text: str) -> float:
    """An argparse type for a smoothing factor: a number from 0 up to, not including, 1."""
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give a number ≥ 0 and < 1")
    return value


def add_model_argument(parser: argparse.ArgumentParser, what: str = "the model", positional: bool = False) -> None:
    """--model MODEL; where 0.1 took MODEL as the first positional argument, that spelling still works."""
    if positional:
        parser.add_argument("model_positional", nargs="?", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--model", required=not positional, help=f"{what}: {MODEL_HELP}")


def add_model_name_arguments(parser: argparse.ArgumentParser) -> None:
    """--model-name and --model-version: which model of a repository MODEL (a folder of models, as `serve` takes it)."""
    parser.add_argument("--model-name", metavar="NAME", help="the model to run when MODEL is a model repository (a "
                        "folder of models, as serve takes it); needed when it holds several")  # fmt: skip
    parser.add_argument("--model-version", metavar="N", help="the version of a Triton model to run (default: the "
                        "highest that its config.pbtxt serves)")  # fmt: skip


def repository_model(args: argparse.Namespace) -> str:
    """--model itself, or the folder of the model --model-name (--model-version) picks in the repository --model."""
    from ..runtime.discovery import is_repository, model_in

    if args.model_name is None and args.model_version is None and not is_repository(args.model):
        return args.model
    return str(model_in(args.model, args.model_name, args.model_version))


def add_out_argument(parser: argparse.ArgumentParser, help: str, positional: bool = False, **options: Any) -> None:
    """--out PATH; where 0.1 took it as a positional argument, that spelling still works."""
    if positional:
        parser.add_argument("out_positional", nargs="?", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--out", required=not positional, help=help, **options)


def add_data_argument(
    parser: argparse.ArgumentParser, help: str, positional: bool = False, required: bool = True, **options: Any
) -> None:
    """--data DATA, the one name of every command's input data; `shard DATA OUT` keeps its positional form."""
    if positional:
        parser.add_argument("data_positional", nargs="?", metavar="DATA", help=argparse.SUPPRESS)
    parser.add_argument("--data", required=required and not positional, help=f"{help}: {DATA_HELP}", **options)


def add_images_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """The images a command reads, as positional paths or as --data PATH … (the name every other command uses)."""
    parser.add_argument("inputs", nargs="*", metavar="PATH", help=f"{help} (or give them as --data PATH …)")
    parser.add_argument("--data", nargs="+", action="extend", default=[], metavar="PATH", help=f"{help}, as the "
                        "positional PATHs (one name for input data in every command)")  # fmt: skip


def image_inputs(args: argparse.Namespace) -> list[str]:
    """The paths given positionally and with --data, in that order; at least one."""
    inputs = list(args.inputs) + list(args.data)
    if not inputs:
        raise ValueError("no images given: name image files or folders, positionally or as --data PATH …")
    return inputs


def resolve_positionals(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fold the 0.1 positional MODEL, DATA and OUT into --model / --data / --out: positionals fill, in order,
    whichever were not given as options (so `export --model X OUT` works too); more values than gaps is an error."""
    names = [name for name in ("model", "data", "out") if hasattr(args, f"{name}_positional")]
    if not names:
        return
    given = [getattr(args, f"{name}_positional") for name in names]
    values = [value for value in given if value is not None]
    gaps = [name for name in names if getattr(args, name) is None]
    if len(values) > len(gaps):
        options = "/".join(f"--{name}" for name in names)
        parser.error(f"give {' and '.join(n.upper() for n in names)} once each, as {options} or positionally")
    for name, value in zip(gaps, values):
        setattr(args, name, value)
    missing = [name for name in names if getattr(args, name) is None]
    if missing:
        parser.error(f"--{missing[0]} is required")


def add_data_arguments(
    parser: argparse.ArgumentParser, data_help: str, eval_help: str | None = None, for_eval: bool = False
) -> None:
    add_data_argument(parser, data_help)
    if eval_help:
        parser.add_argument("--eval-data", help=eval_help)
    parser.add_argument("--classes", help="use only these classes (comma-separated names or indices)")
    hf = add_datasets_arguments(parser, "--data", "validation, else test" if for_eval else "train")
    if eval_help:
        hf.add_argument("--eval-split", help="the split of --eval-data (default: validation, else test)")
        parser.add_argument(
            "--val-split", type=fraction, metavar="FRACTION",
            help="hold out this fraction of --data (per class, seeded by --seed) as evaluation data, for data "
            "without a validation split; not with --eval-data",
        )  # fmt: skip


def add_datasets_arguments(parser: argparse.ArgumentParser, data: str, default_split: str) -> argparse._ArgumentGroup:
    """--split, --image-column, --label-column: how a Hugging Face dataset is read."""
    hf = parser.add_argument_group("Hugging Face datasets (a saved directory or a dataset name)")
    hf.add_argument("--split", help=f"the split of {data} to read (default: {default_split})")
    hf.add_argument("--image-column", help="the column of images (default: image, img or pixel_values)")
    hf.add_argument("--label-column", help="the column of labels (default: label, labels or fine_label)")
    return hf


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction: give a number between 0 and 1, e.g. 0.15")
    return value


BF16_HELP = "bfloat16 autocast (PyTorch models)"
BF16_EXPORT_HELP = (
    BF16_HELP + "; an OpenVINO export is compiled in bf16 where the CPU has it (AMX or AVX512_BF16; elsewhere it "
    "says so and runs float32)"
)


def add_device_arguments(parser: argparse.ArgumentParser, bf16_help: str = BF16_HELP) -> None:
    parser.add_argument("--device", default=None,
                        help="cpu or cuda (default: cuda when available; OpenVINO exports: cpu)")  # fmt: skip
    parser.add_argument("--bf16", action="store_true", help=bf16_help)


def add_workers_argument(parser: argparse.ArgumentParser, training: bool = False) -> None:
    hint = (
        "; raise it when metrics.jsonl's data_wait_s is large, lower it when memory is short"
        if training
        else "; lower it when memory is short"
    )
    parser.add_argument(
        "--workers", type=non_negative_int, default=None, metavar="N",
        help=f"image-loading processes (default: one per available core, at most 16; 0 = load in this process){hint}",
    )  # fmt: skip


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model: a slow first batch (a minute or more), then faster ones")  # fmt: skip


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """Batch size, device, precision, loading and compilation for the commands that only run a model."""
    parser.add_argument("--batch-size", type=positive_int, default=INFERENCE_BATCH,
                        help=f"images per forward pass (default {INFERENCE_BATCH}: about 2 GB of activations for "
                        "R50x1 at 448 px; lower it for larger models, raise it on a GPU); results do not depend on it")  # fmt: skip
    add_device_arguments(parser, BF16_EXPORT_HELP)
    add_workers_argument(parser)
    add_compile_argument(parser)


def inference_settings(args: argparse.Namespace):
    """The `InferenceSettings` of `add_inference_arguments`' options: built once, for loading and running."""
    from ..runtime.settings import InferenceSettings

    return InferenceSettings(batch_size=args.batch_size, device=args.device, workers=args.workers, bf16=args.bf16,
                             compile=args.compile)  # fmt: skip


def add_output_arguments(parser: argparse.ArgumentParser, json_help: str, progress: bool = True) -> None:
    parser.add_argument("--json", action="store_true", help=json_help)
    if progress:
        parser.add_argument("--quiet", action="store_true", help="no progress bar")


def shot_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shots {text!r}: give comma-separated counts, e.g. 1,5,10") from None
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"--shots {text!r}: counts must be ≥ 1")
    return counts


def collect_images(inputs: list[str]) -> list[Path]:
    """Files as given, directories searched recursively for images. A path that does not exist was named by the
    user and is a mistake (a typo, the wrong folder), not an unreadable image to skip: it fails before any model
    loads, naming every such path."""
    from .._util.text import printable
    from ..processing.decoding import IMAGE_SUFFIXES

    missing = [printable(name) for name in inputs if not Path(name).expanduser().exists()]
    if missing:
        raise FileNotFoundError(f"no such file or directory: {', '.join(missing)} (check the path)")
    files = []
    for name in inputs:
        path = Path(name).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            files.append(path)
    return files


def load_data(source: str, classes: str | None, **reading: Any):
    """`data.reading.read_dataset`, imported only when a command reads data (the CLI starts without torch)."""
    from ..data.reading import read_dataset

    return read_dataset(source, classes, **reading)


def data_reading(args: argparse.Namespace):
    """The command's data options as one `DataReading`."""
    from ..data.reading import DataReading

    return DataReading(
        args.data, getattr(args, "eval_data", None), args.classes, args.split, getattr(args, "eval_split", None),
        args.image_column, args.label_column, args.multi_label, getattr(args, "val_split", None),
    )  # fmt: skip


def load_data_arguments(args: argparse.Namespace, for_eval: bool = False) -> tuple[Any, Any]:
    """(--data, --eval-data or the --val-split held out of --data, or None) as the data options say."""
    return data_reading(args).load(getattr(args, "seed", 0), for_eval)


def emit(result: Any, as_json: bool, as_text: Callable[[Any], None]) -> None:
    """Print a command's result: indented JSON (machine-readable) or the command's own text form."""
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        as_text(result)


def report_skipped(errors: list[dict]) -> int:
    """Each input that could not be used, once, on stderr; the exit code: 1 when there were any."""
    import sys

    for error in errors:
        print(f"skipped {error['file']}: {error['error']}", file=sys.stderr)
    return 1 if errors else 0
