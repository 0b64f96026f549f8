"""An export's model file as a runtime reads it: a model.pt2 is refused when it holds more than `export` writes,
and a file that a runtime cannot read is one line naming it, not a runtime's 30- to 48-line traceback.

torch.export.load runs code from an archive in several ways: pickled weights, constants and sample inputs go through
torch.load(weights_only=False) (the latter whenever weights_only fails), Python objects through pickle, symbolic
sizes through sympy's eval, guards are compiled as Python, operators are looked up among torch's attributes
(torch.os.system among them), and AOTInductor parts are shared libraries. An export directory is what people hand
each other, so a model.pt2 is read only when it holds what `export` writes: raw tensors and a graph of aten
operators on a symbolic batch size."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..checkpoints.weights import damaged_zip_member

REEXPORT = "export the model again with `bigtransfer export`"

# the entries of an archive that torch.export.save writes for one program, below its one top folder
PT2_ENTRIES = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/model\.json"
    r"|data/weights/model_weights_config\.json|data/weights/weight_\d+|data/constants/model_constants_config\.json"
    r"|data/constants/tensor_\d+|data/sample_inputs/model\.pt"
)
PAYLOAD_CONFIGS = {"data/weights/model_weights_config.json": "weight_", "data/constants/model_constants_config.json": "tensor_"}  # fmt: skip
ATEN_OPERATOR = re.compile(r"torch\.ops\.aten\.[a-z][a-z0-9_]*\.[A-Za-z][A-Za-z0-9_]*")
# A symbolic size as torch writes it, Symbol('s99', positive=True, integer=True), and integer arithmetic on such:
# no attribute, no underscore, no string but a symbol's name, no power or shift (sympy evaluates 9**9**9).
SIZE_TOKEN = re.compile(r"\s+|\d{1,12}|'[a-z]+\d+'|[A-Za-z]+|[-+*/%(),=<>]")
MAX_SIZE_EXPRESSION = 200  # characters; BiT's batch size is 45
SIZE_NAMES = {"Symbol", "Integer", "Add", "Mul", "Max", "Min", "FloorDiv", "CeilDiv", "Mod", "PythonMod", "CleanDiv",
              "True", "False", "positive", "integer", "nonnegative", "real", "finite"}  # fmt: skip


@contextlib.contextmanager
def reading(model_file: Path) -> Iterator[None]:
    """A runtime's failure to read `model_file` as a ValueError naming it: ONNX Runtime, OpenVINO and torch each
    raise exception classes of their own (ONNX Runtime's derive from Exception alone), with long tracebacks."""
    try:
        yield
    except ImportError:  # a missing runtime, which says what to install
        raise
    except Exception as error:
        detail = next((line.strip() for line in reversed(str(error).splitlines()) if line.strip()), "")
        raise ValueError(
            f"Could not load {model_file} ({type(error).__name__}: {detail}): the export is damaged or incomplete; "
            f"{REEXPORT}."
        ) from None


def check_pt2(path: Path) -> None:
    """Refuse a model.pt2 that holds more than raw tensors and an aten graph (so that torch.export.load would run
    code from it), or whose members fail their CRC check (which torch does not check), before torch reads it."""
    damage = damaged_zip_member(path)
    if damage:
        raise ValueError(f"{path} is damaged ({damage}); {REEXPORT}.")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        top = {name.split("/", 1)[0] for name in names}
        entries = {name.split("/", 1)[-1]: name for name in names}
        unexpected = [name for name in entries if not PT2_ENTRIES.fullmatch(name)]
        if len(top) != 1 or len(entries) != len(names) or unexpected:
            _refuse(path, f"entries `bigtransfer export` never writes ({', '.join(unexpected[:3]) or 'duplicates'})")
        for config_file, prefix in PAYLOAD_CONFIGS.items():
            if config_file in entries:
                _check_payloads(path, archive, entries, config_file, prefix)
        if "models/model.json" in entries:
            _check_program(path, _json(path, archive, entries["models/model.json"]))
        if "data/sample_inputs/model.pt" in entries:
            try:  # torch loads them again with weights_only=False when this fails
                with warnings.catch_warnings():  # torch's notices about the pickle protocol, before the refusal
                    warnings.simplefilter("ignore")
                    torch.load(io.BytesIO(archive.read(entries["data/sample_inputs/model.pt"])), weights_only=True)
            except Exception:
                _refuse(path, "sample inputs that are not plain tensors (a pickle that can run code)")


def _refuse(path: Path, what: str) -> None:
    raise ValueError(
        f"{path} holds {what}, so it was refused: torch.export.load would run code from it. A model.pt2 of "
        f"`bigtransfer export` holds raw tensors and aten operators only; {REEXPORT} from weights you trust."
    )


def _json(path: Path, archive: zipfile.ZipFile, name: str) -> Any:
    try:
        return json.loads(archive.read(name))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is damaged ({name} is not valid JSON: {error}); {REEXPORT}.") from None


def _check_payloads(path: Path, archive: zipfile.ZipFile, entries: dict, config_file: str, prefix: str) -> None:
    """Every weight or constant raw bytes, never pickled, and no larger than its record (torch allocates a record
    of 0 bytes at whatever size its metadata claims)."""
    config = _json(path, archive, entries[config_file]).get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path} is damaged ({config_file} lists no tensors); {REEXPORT}.")
    for name, payload in config.items():
        if not isinstance(payload, dict) or payload.get("use_pickle") is not False:
            _refuse(path, f"a pickled tensor or object ({name} in {config_file})")
        record = entries.get(f"{config_file.rsplit('/', 1)[0]}/{payload.get('path_name')}")
        sizes = [size.get("as_int") for size in (payload.get("tensor_meta") or {}).get("sizes", [{}])]
        if not str(payload.get("path_name")).startswith(prefix) or record is None:
            raise ValueError(f"{path} is damaged ({name} has no data in the archive); {REEXPORT}.")
        if not all(isinstance(size, int) and size >= 0 for size in sizes) or (
            math.prod(sizes) > archive.getinfo(record).file_size
        ):
            raise ValueError(f"{path} is damaged ({name} claims more data than its record holds); {REEXPORT}.")


def _check_program(path: Path, program: Any) -> None:
    """The graph calls aten operators only, its sizes are symbolic arithmetic only, and it brings no guards (which
    torch compiles as Python) or custom objects."""
    if not isinstance(program, dict) or program.get("guards_code"):
        _refuse(path, "guards, which torch compiles as Python")
    for key, value in _items(program):
        if key in ("target", "as_operator") and not ATEN_OPERATOR.fullmatch(str(value)):
            _refuse(path, f"an operator that is not aten's ({str(value)[:80]})")
        if key == "expr_str" and not _plain_size(str(value)):
            _refuse(path, f"a symbolic size that is not arithmetic ({str(value)[:80]})")
        if key in ("as_custom_obj", "custom_obj_values") and value:
            _refuse(path, "a custom Python object")


def _items(tree: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) of a JSON tree, at any depth."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield key, value
            yield from _items(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _items(value)


def _plain_size(expression: str) -> bool:
    if len(expression) > MAX_SIZE_EXPRESSION:
        return False
    position = 0
    while position < len(expression):
        token = SIZE_TOKEN.match(expression, position)
        if token is None or (token[0][0].isalpha() and token[0] not in SIZE_NAMES):
            return False
        position = token.end()
    return True
