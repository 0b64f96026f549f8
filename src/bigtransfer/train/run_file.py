"""Run files: a training run's options as YAML, every value it used (defaults included) in the command line's
vocabulary, so that a run can be read, compared and run again. Every run writes its resolved one as OUT/config.yaml
before step 1 (`run_file_of`, `write_run_file`); `bigtransfer finetune|pretrain --config FILE` and
`replaying.load_run_file` read one back (`read_run_file`).

One table maps each option to where its value lives in the objects a run receives — the recipe (FineTuning or
Pretraining), the RunOptions and their Speed, the data's `DataReading`, the model, the architecture, the few-shot
check — and serves both directions. A new option is one row: in INPUTS, RECIPE or RUN below (tests/test_run_file.py
fails while an option of `finetune` or `pretrain` has none).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from .._util.files import atomic_write_text
from .._util.package import package_version
from ..data.datasets import LabelledImages
from ..data.reading import DataReading
from ..models.config import BitConfig
from ..models.modeling import BitPreTrainedModel
from .architecture import architecture_options

logger = logging.getLogger(__name__)
RUN_FILE = "config.yaml"
COMMANDS = ("finetune", "pretrain")
FINETUNE, PRETRAIN = ("finetune",), ("pretrain",)


@dataclasses.dataclass(frozen=True)
class Option:
    """A row of the table: an option (by its dest) and the field that holds its value."""

    name: str  # the option's dest: base_lr for --base-lr
    field: str  # "<object>.<field>[.<field>]", among the objects `run_file_of` is given (see `_sources`)
    commands: tuple[str, ...] = COMMANDS
    negated: bool = False  # the field holds the opposite (--no-flip ↔ FineTuning.flip)
    resumable: bool = False  # may change when a run resumes: the checkpoint's fingerprint does not hold it

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


INPUTS = (
    Option("model", "model", FINETUNE),
    Option("data", "data.data"),
    Option("eval_data", "data.eval_data", resumable=True),
    Option("classes", "data.classes"),
    Option("split", "data.split"),
    Option("eval_split", "data.eval_split", resumable=True),
    Option("image_column", "data.image_column"),
    Option("label_column", "data.label_column"),
    Option("multi_label", "data.multi_label"),
    Option("val_split", "data.val_split"),
    Option("arch", "architecture.arch", PRETRAIN),
    Option("depths", "architecture.depths", PRETRAIN),
    Option("hidden_sizes", "architecture.hidden_sizes", PRETRAIN),
    Option("embedding_size", "architecture.embedding_size", PRETRAIN),
    Option("num_groups", "architecture.num_groups", PRETRAIN),
)
RECIPE = (  # what the run learns and how; label_smoothing and class_weights go here (recipe.…)
    Option("shots", "recipe.shots", FINETUNE),
    Option("preset", "recipe.preset", FINETUNE),
    Option("batch_size", "recipe.batch_size"),
    Option("base_lr", "recipe.base_lr", FINETUNE),
    Option("lr_scaling", "recipe.lr_scaling", FINETUNE),
    Option("steps", "recipe.steps", FINETUNE),
    Option("epochs", "recipe.epochs", PRETRAIN),
    Option("warmup_epochs", "recipe.warmup_epochs", PRETRAIN),
    Option("resize", "recipe.resize", FINETUNE),
    Option("crop", "recipe.crop"),
    Option("mixup", "recipe.mixup_alpha", FINETUNE),
    Option("no_flip", "recipe.flip", FINETUNE, negated=True),
    Option("loss", "recipe.loss", PRETRAIN),
    Option("label_smoothing", "recipe.label_smoothing"),
    Option("class_weights", "recipe.class_weights"),
    Option("seed", "run.seed"),
    Option("runs", "runs", FINETUNE, resumable=True),
    Option("eval_every", "recipe.eval_every", resumable=True),
    Option("fewshot_every", "fewshot.every", PRETRAIN, resumable=True),
    Option("fewshot_data", "fewshot.data", PRETRAIN, resumable=True),
    Option("fewshot_eval_data", "fewshot.eval_data", PRETRAIN, resumable=True),
    Option("fewshot_classes", "fewshot.classes", PRETRAIN, resumable=True),
    Option("fewshot_shots", "fewshot.shots", PRETRAIN, resumable=True),
)
RUN = (  # where and how fast it runs; report_to, keep_best, early_stopping, push_to_hub go here (run.…)
    Option("out", "run.out", resumable=True),
    Option("save_every", "run.save_every", resumable=True),
    Option("device", "run.device", resumable=True),
    Option("bf16", "run.bf16", resumable=True),
    Option("workers", "run.speed.workers", resumable=True),
    Option("compile", "run.speed.compile", resumable=True),
    Option("channels_last", "run.speed.channels_last", resumable=True),
    Option("batch_split", "run.speed.batch_split", resumable=True),
    Option("grad_checkpointing", "run.grad_checkpointing", resumable=True),
    Option("push_to_hub", "run.push_to_hub", resumable=True),
    Option("hub_private_repo", "run.hub_private_repo", resumable=True),
    Option("report_to", "run.report_to", resumable=True),
    Option("keep_best", "run.keep_best"),
    Option("early_stopping", "run.early_stopping"),
)
SECTIONS = {"the model and the data": INPUTS, "the recipe": RECIPE, "where and how it runs": RUN}
# Options of the commands that a file does not set, and why.
NOT_IN_FILES = {
    "config": "a run file cannot name another run file",
    "dry_run": "a dry run is a choice for one invocation: pass --dry-run beside --config",
    "json": "the output format is a choice for one invocation: pass --json beside --config",
    "quiet": "the progress bar is a choice for one invocation: pass --quiet beside --config",
    "resume": "resuming is a choice for one invocation: pass --resume beside --config",
    "help": "not an option of a run",
}
HEADER = (
    "# The resolved run file of a bigtransfer run: every option it used, defaults included (null: not set).\n"
    "# Run it again with `bigtransfer {command} --config FILE --out NEW_DIR` (a flag beside --config wins).\n"
)


def options_of(command: str) -> list[Option]:
    """The rows of `command`'s options, in the file's order."""
    return [option for rows in SECTIONS.values() for option in rows if command in option.commands]


# -- the run → its file ---------------------------------------------------------------------------


def run_file_of(
    command: str,
    *,
    recipe: Any,
    run: Any,
    data: str | os.PathLike | LabelledImages,
    eval_data: str | os.PathLike | LabelledImages | None = None,
    model: str | os.PathLike | BitPreTrainedModel | None = None,
    architecture: BitConfig | None = None,
    fewshot_check: Any = None,
    runs: int = 1,
) -> dict[str, Any]:
    """The resolved run file of a run given these objects: "command", "bigtransfer_version", then every option's
    value (None where unset). What cannot be said in options (data or a model given as objects) is named under
    "not_replayable" rather than written as if it were exact."""
    caveats: list[str] = []
    sources: dict[str, Any] = {"recipe": recipe, "run": run, "runs": runs,
                               "data": _data_options(data, eval_data, run.seed, caveats)}  # fmt: skip
    if command == "finetune":
        sources["model"] = _model_name(model, caveats)
    else:
        sources["architecture"] = _architecture_options(architecture, caveats)
        sources["fewshot"] = _fewshot_options(fewshot_check, caveats)
    values = {option.name: _plain(_value_of(option, sources)) for option in options_of(command)}
    marks = {"command": command, "bigtransfer_version": package_version()}
    return {**marks, **({"not_replayable": caveats} if caveats else {}), **values}


def _value_of(option: Option, sources: dict[str, Any]) -> Any:
    root, *fields = option.field.split(".")
    value = sources[root]
    for name in fields:
        value = value[name] if isinstance(value, dict) else getattr(value, name)
    return (not value) if option.negated else value


def _plain(value: Any) -> Any:
    """A value as YAML writes it: paths as text, tuples as lists."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return list(value) if isinstance(value, tuple) else value


def _data_options(data: Any, eval_data: Any, seed: int, caveats: list[str]) -> dict[str, Any]:
    """The data options that read `data` and `eval_data`: the `DataReading` that read both, or their paths."""
    reading, held_out_with = getattr(data, "reading", None) or (None, None)
    evaluated_by_it = reading is not None and (reading.eval_data is not None or bool(reading.val_split))
    same = eval_data is None if not evaluated_by_it else getattr(eval_data, "reading", None) is data.reading
    if reading is None or not same:
        given = [(value, name) for value, name in ((data, "data"), (eval_data, "eval_data")) if value is not None]
        paths = {name: _source(value, name, caveats) for value, name in given}
        reading = DataReading(paths["data"], paths.get("eval_data"), multi_label=getattr(data, "multi_label", False))
    elif reading.val_split and held_out_with != seed:
        caveats.append(f"--val-split held the evaluation images out with seed {held_out_with}, not this run's seed "
                       f"{seed}: run alone, this file holds out others")  # fmt: skip
    return dataclasses.asdict(reading)


def _source(data: Any, name: str, caveats: list[str]) -> str:
    if isinstance(data, LabelledImages):
        caveats.append(f"{name} was given as a {type(data).__name__} object, recorded by its source {data.source!r}: "
                       f"--{name.replace('_', '-')} may not read the same images")  # fmt: skip
        return data.source
    return os.fspath(data)


def _model_name(model: Any, caveats: list[str]) -> str:
    if not isinstance(model, BitPreTrainedModel):
        return os.fspath(model)
    name = getattr(model.config, "_name_or_path", "") or ""
    caveats.append(f"the model was given as a {type(model).__name__} object" + (f" loaded from {name!r}: --model "
                   "reads that checkpoint, not any change made to the object" if name else " with no name to load"))  # fmt: skip
    return name


def _architecture_options(config: BitConfig | None, caveats: list[str]) -> dict[str, Any]:
    options, exact = architecture_options(config)
    if not exact:
        caveats.append("the architecture holds more than --arch and its options can say (its layer type, padding, "
                       "width factor or drop-path rate): the options build the nearest custom network")  # fmt: skip
    return options


def _fewshot_options(check: Any, caveats: list[str]) -> dict[str, Any]:
    """The --fewshot-* options of a `FewShotCheck` (all None without one)."""
    if check is None:
        return dict.fromkeys(("every", "data", "eval_data", "classes", "shots"))
    if check.seeds != type(check).seeds:  # a dataclass's class attribute: the field's default
        caveats.append(f"the few-shot check averages over {check.seeds} seeds, which no option sets")
    return {"every": check.every, "data": _source(check.data, "fewshot_data", caveats),
            "eval_data": _source(check.eval_data, "fewshot_eval_data", caveats),
            "classes": ",".join(check.classes) if check.classes else None, "shots": list(check.shots)}  # fmt: skip


def run_file_text(config: dict[str, Any]) -> str:
    """The run file as written: the marks, then each section under its title."""
    marks = [key for key in ("command", "bigtransfer_version", "not_replayable") if key in config]
    parts = [HEADER.format(command=config.get("command", "finetune"))] + [_line(key, config[key]) for key in marks]
    for title, rows in SECTIONS.items():
        lines = [_line(option.name, config[option.name]) for option in rows if option.name in config]
        if lines:
            parts += [f"\n# {title}\n", *lines]
    return "".join(parts)


def _line(key: str, value: Any) -> str:
    """`key: value`; counts as [1, 5, 10], other lists as `- item` lines."""
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return f"{key}: [{', '.join(map(str, value))}]\n"
    return yaml.safe_dump({key: value}, allow_unicode=True, width=120, default_flow_style=False)


def write_run_file(out: Path, config: dict[str, Any]) -> None:
    """OUT/config.yaml, whole or not at all."""
    atomic_write_text(out / RUN_FILE, run_file_text(config))


# -- a file → the options it sets -----------------------------------------------------------------


def read_run_file(path: str | os.PathLike, command: str | None = None) -> tuple[str, dict[str, Any]]:
    """(the command, the options the file sets by dest, values as written), for `command` or the one the file
    names; a key may spell '-' for '_'. The file's own marks are checked here: another command's file, a key no
    option has (with the nearest one), one that a file cannot set. Values are the caller's to check: the command
    line runs each through its option's type, as a flag; `replaying.load_run_file` through the fields it fills."""
    path = Path(path)
    raw = _parsed(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not a run file: expected `option: value` lines, found a {type(raw).__name__}.")
    values = {str(key).replace("-", "_"): value for key, value in raw.items()}
    written_for = values.pop("command", None)
    if written_for is not None and command is not None and written_for != command:
        raise ValueError(f"{path} is a run file of `bigtransfer {written_for}`: run it with `bigtransfer "
                         f"{written_for} --config {path}`.")  # fmt: skip
    command = command or written_for
    if command not in COMMANDS:
        raise ValueError(f"{path} names no command: add a line `command: finetune` (or pretrain).")
    version = values.pop("bigtransfer_version", None)
    if version is not None and str(version) != package_version():
        logger.warning("%s was written by bigtransfer %s, this is %s: a run is replayed exactly only by the version "
                       "that wrote it.", path, version, package_version())  # fmt: skip
    caveats = values.pop("not_replayable", None)
    if caveats:
        logger.warning("%s does not replay its run exactly: %s.", path, "; ".join(map(str, caveats)))
    known = [option.name for option in options_of(command)]
    for key in values:
        if key in NOT_IN_FILES:
            raise ValueError(f"{path}: {key}: {NOT_IN_FILES[key]}.")
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {near[0]}?)" if near else f"; the options of {command} are {', '.join(known)}"
            raise ValueError(f"{path}: unknown option {key!r}{hint}.")
    return command, values


def _parsed(path: Path) -> Any:
    """The file's content: TOML by its .toml suffix, YAML otherwise (an empty file sets nothing)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            raise ValueError(f"{path}: TOML run files need Python 3.11 or newer: write it as YAML.") from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path} is not valid TOML: {error}.") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}: {error.problem})" if mark is not None else ""
        raise ValueError(f"{path} is not valid YAML{where}.") from None
    return {} if loaded is None else loaded


# -- resuming -------------------------------------------------------------------------------------


def changed_recipe(previous: Path, now: dict[str, Any]) -> list[str]:
    """'--option before → now' for each option that a resumed run must keep (not `resumable`) and that differs
    between the run file `previous` (of the run being resumed) and `now`; [] without a readable previous file."""
    try:
        before = yaml.safe_load(previous.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []
    if not isinstance(before, dict):
        return []
    return [f"{option.flag} {_shown(before[option.name])} → {_shown(now.get(option.name))}"
            for option in options_of(now.get("command", ""))
            if not option.resumable and option.name in before and before[option.name] != now.get(option.name)]  # fmt: skip


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)
