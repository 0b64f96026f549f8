"""Run files from Python: `load_run_file(path)` gives what `finetune` or `pretrain` takes — to change before it
runs (dataclasses.replace) — and `replay(path, out=…)` runs it again, as `bigtransfer finetune --config FILE
--out NEW` does:

    from bigtransfer.train import load_run_file, replay

    replay("runs/flowers/config.yaml", out="runs/flowers-again")   # the same weights, on the same machine
    spec = load_run_file("runs/flowers/config.yaml")
    spec = dataclasses.replace(spec, recipe=dataclasses.replace(spec.recipe, base_lr=0.01))
    spec.start()
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any

from ..data.reading import DataReading
from ..models.config import BitConfig
from .architecture import architecture_config
from .fine_tuning import FineTuning, finetune, finetune_runs
from .loop import Speed
from .pre_training import FewShotCheck, Pretraining, pretrain
from .run import RunOptions
from .run_file import options_of, read_run_file


@dataclasses.dataclass(frozen=True)
class RunFile:
    """A run file read back: the arguments of `finetune` (model, recipe, run; `runs` seeds: `finetune_runs`) or of
    `pretrain` (architecture, recipe, run, fewshot_check), and the data options that read its data."""

    command: str  # "finetune" or "pretrain"
    data: DataReading
    recipe: FineTuning | Pretraining
    run: RunOptions
    model: str | None = None
    architecture: BitConfig | None = None
    fewshot_check: FewShotCheck | None = None
    runs: int = 1

    def start(self) -> dict[str, Any]:
        """Read the data and run; returns the run's metrics, as `finetune`/`pretrain` do."""
        data, eval_data = self.data.load(self.run.seed)
        if self.command == "pretrain":
            return pretrain(data, self.architecture, eval_data, recipe=self.recipe, run=self.run,
                            fewshot_check=self.fewshot_check)  # fmt: skip
        if self.runs > 1:
            return finetune_runs(self.runs, self.model, data, eval_data, recipe=self.recipe, run=self.run)
        return finetune(self.model, data, eval_data, recipe=self.recipe, run=self.run)


def replay(path: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the run file at `path` again, into `out` (default: the file's own --out, which holds a run already
    unless that run was moved away)."""
    spec = load_run_file(path)
    if out is not None:
        spec = dataclasses.replace(spec, run=dataclasses.replace(spec.run, out=out))
    return spec.start()


def load_run_file(path: str | os.PathLike, command: str | None = None) -> RunFile:
    """The run file at `path` (YAML, or TOML by its suffix) as the objects a run takes. An option the file leaves
    out or sets to null takes its default. Read by the reader the command line uses (`run_file.read_run_file`:
    unknown keys, another command's file); each value is checked against the field it fills, and ranges by the
    recipe's own checks; all as ValueError naming the file and the option."""
    command, values = read_run_file(path, command)
    try:
        fields = _fields(command, values)
        return _run_file(command, fields)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None


def _fields(command: str, values: dict[str, Any]) -> dict[str, Any]:
    """The values set (not null) placed by the table: {"recipe": {"base_lr": …}, "run": {"speed": {…}}, …}."""
    tree: dict[str, Any] = {}
    for option in options_of(command):
        value = values.get(option.name)
        if value is None:
            continue
        if option.negated:
            value = not _checked(option.name, value, bool)
        *parents, leaf = option.field.split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = (option.name, value)
    return tree


def _run_file(command: str, tree: dict[str, Any]) -> RunFile:
    run = dict(tree.get("run", {}))
    speed = _called(Speed, run.pop("speed", {}))
    recipe = _called(FineTuning if command == "finetune" else Pretraining, tree.get("recipe", {}))
    if "data" not in tree.get("data", {}):
        raise ValueError("no data: set `data:` (the --data option)")
    common = dict(command=command, data=_called(DataReading, tree["data"]), recipe=recipe,
                  run=dataclasses.replace(_called(RunOptions, run), speed=speed))  # fmt: skip
    if command == "finetune":
        if "model" not in tree:
            raise ValueError("no model: set `model:` (the --model option)")
        runs = _checked(*tree["runs"], int) if "runs" in tree else 1
        return RunFile(**common, model=_checked(*tree["model"], str), runs=runs)
    fewshot = {name: (f"fewshot_{name}", None) for name in ("every", "data", "eval_data", "classes")}
    fewshot |= {"shots": ("fewshot_shots", FewShotCheck.shots), **tree.get("fewshot", {})}  # class attribute: default
    fewshot["shots"] = ("fewshot_shots", _shot_counts(fewshot["shots"][1]))
    return RunFile(**common, architecture=_called(architecture_config, tree.get("architecture", {})),
                   fewshot_check=_called(FewShotCheck.from_options, fewshot))  # fmt: skip


def _called(function: Any, given: dict[str, tuple[str, Any]]) -> Any:
    """`function(**given)` (a dataclass or a function), each value checked against its parameter's annotated
    type; `given` maps a parameter to (the option that set it, its value)."""
    hints = typing.get_type_hints(function)
    return function(**{field: _checked(name, value, hints[field]) for field, (name, value) in given.items()})


def _checked(name: str, value: Any, hint: Any) -> Any:
    """`value` if it is of the type `hint` names; YAML's lists stand for tuples."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for kind in allowed:
        if isinstance(value, list) and (typing.get_origin(kind) or kind) is tuple:
            return tuple(value)
        if _is(value, kind):
            return value
    wanted = " or ".join(getattr(kind, "__name__", str(kind)) for kind in allowed if kind is not type(None))
    raise ValueError(f"{name}: {value!r} is not a {wanted}")


def _is(value: Any, kind: Any) -> bool:
    kind = typing.get_origin(kind) or kind
    if isinstance(value, bool):  # YAML's true is no number
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(kind, type) and isinstance(value, kind)


def _shot_counts(shots: Any) -> list[int]:
    counts = shots.split(",") if isinstance(shots, str) else shots
    try:
        return [int(count) for count in counts]
    except (TypeError, ValueError):
        raise ValueError(f"fewshot_shots: {shots!r} is not a list of counts, e.g. [1, 5, 10]") from None
