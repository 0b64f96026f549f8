"""The models below a folder, by name and version, as `serve REPO`, `predict --model-name` and `evaluate
--model-name` find them: model folders (config.json and weights), runs (their model/), export folders, and the
Triton layout `export --format triton` writes (REPO/<name>/config.pbtxt beside version folders 1/, 2/ …, served
under config.pbtxt's version_policy as Triton serves them). Files only: nothing is loaded here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..checkpoints.hub import CONFIG_NAME, TRITON_CONFIG_NAME, WEIGHT_CANDIDATES
from ..checkpoints.naming import check_model_name, default_model_name
from .exported import is_export_directory

RUN_MODEL = "model"  # the folder of a finetune or pretrain run that holds its model
MODEL_KINDS = (
    "model folders (config.json and weights), runs (holding model/), export folders (model.onnx, "
    "openvino_model.xml or model.pt2) or Triton models (config.pbtxt beside version folders 1/, 2/ …)"
)
SINGLE_VERSION = "1"  # the version of a model that is not in Triton's layout


def is_model_folder(path: Path) -> bool:
    """A folder that `load_classifier` runs as it is: an export, or config.json beside weights."""
    if is_export_directory(path):
        return True
    return (path / CONFIG_NAME).is_file() and any((path / name).is_file() for name in WEIGHT_CANDIDATES)


def is_single_model(path: str | os.PathLike) -> bool:
    """A model folder, or a run holding one: served as one model, named for its folder (`default_model_name`)."""
    path = Path(path)
    return path.is_dir() and (is_model_folder(path) or is_model_folder(path / RUN_MODEL))


def is_triton_model(path: Path) -> bool:
    return (path / TRITON_CONFIG_NAME).is_file()


def discover(folder: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """{name: {version: the folder `load_classifier` runs}} of a model repository, a Triton model, or one model.

    A repository's models are its subfolders of the kinds above (others, and hidden ones such as unfinished
    exports, are passed over): a Triton model by its folder's name, which Triton requires to be a usable name,
    any other by `default_model_name`, the name `serve MODEL` gives it alone."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: a model repository is a folder of {MODEL_KINDS}.")
    if is_single_model(folder):
        return {default_model_name(folder): {SINGLE_VERSION: _model_of(folder)}}
    if is_triton_model(folder):
        return {_triton_name(folder): triton_versions(folder)}
    models: dict[str, dict[str, Path]] = {}
    places: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_dir():
            continue
        if is_triton_model(path):
            name, versions = _triton_name(path), triton_versions(path)
        elif is_single_model(path):
            name, versions = default_model_name(path), {SINGLE_VERSION: _model_of(path)}
        else:
            continue
        if name in models:
            raise ValueError(
                f"Two models of {folder} are named {name!r} ({places[name].name}/ and {path.name}/): rename one "
                "folder, so that each model has its own name."
            )
        models[name], places[name] = versions, path
    if not models:
        found = "is empty" if not any(folder.iterdir()) else "holds no model"
        raise ValueError(
            f"{folder} {found}: serve and --model-name take one model or a repository of {MODEL_KINDS} "
            "(`bigtransfer export MODEL REPO --format triton` adds one)."
        )
    return models


def model_in(folder: str | os.PathLike, name: str | None = None, version: str | None = None) -> Path:
    """The folder that runs model `name` (at `version`; default: its highest) of the repository `folder` —
    which need not name a model when it holds one only; a folder that is one model is itself."""
    models = discover(folder)
    names = ", ".join(sorted(models))
    if name is None:
        if len(models) > 1:
            raise ValueError(f"{folder} holds several models ({names}): pick one with --model-name NAME.")
        (name,) = models
    if name not in models:
        raise ValueError(f"{folder} has no model named {name!r}: it has {names}.")
    versions = models[name]
    if version is None:
        return versions[max(versions, key=int)]
    if version not in versions:
        raise ValueError(f"Model {name!r} of {folder} has no version {version}: it has {', '.join(versions)}.")
    return versions[version]


def is_repository(path: str | os.PathLike) -> bool:
    """A folder of models or a Triton model (its versions), rather than one model or a name to resolve."""
    return Path(path).is_dir() and not is_single_model(path)


def one_model(model: str | os.PathLike) -> str | os.PathLike:
    """What runs a MODEL that is not a repository: a run's model/, else MODEL as given (a folder, file or name)."""
    path = Path(model)
    return path / RUN_MODEL if path.is_dir() and not is_model_folder(path) and is_single_model(path) else model


def _model_of(path: Path) -> Path:
    return Path(one_model(path))


def _triton_name(path: Path) -> str:
    try:
        check_model_name(path.name)
    except ValueError as error:
        raise ValueError(f"The Triton model folder {path}: {error}") from None
    return path.name


def triton_versions(model: Path) -> dict[str, Path]:
    """The version folders Triton serves of the Triton model `model`: its numbered folders holding a model, those
    config.pbtxt's version_policy picks (by default, as Triton, the latest one only), in numeric order."""
    numbered = sorted(int(path.name) for path in model.iterdir() if path.name.isdigit() and path.is_dir())
    present = [version for version in numbered if is_model_folder(model / str(version))]
    chosen = served_versions((model / TRITON_CONFIG_NAME).read_text(encoding="utf-8", errors="replace"), present)
    if not chosen:
        raise ValueError(
            f"The Triton model {model} has no version to serve: it needs a version folder (1/, 2/ …) holding an "
            "export or a model folder, among those its config.pbtxt's version_policy names."
        )
    return {str(version): model / str(version) for version in chosen}


def served_versions(config_text: str, versions: list[int]) -> list[int]:
    """The versions (of those present, in ascending order) that config.pbtxt's version_policy serves: all of them,
    the latest N (`latest { num_versions: N }`; 1 when there is no policy, as in Triton) or specific ones."""
    text = re.sub(r"#[^\n]*", "", config_text)
    policy = re.search(r"version_policy\s*:?\s*\{\s*(all|latest|specific)\s*:?\s*\{([^}]*)\}", text)
    kind, body = policy.groups() if policy else ("latest", "")
    if kind == "all":
        return versions
    if kind == "specific":
        wanted = {int(number) for number in re.findall(r"\d+", body)}
        return [version for version in versions if version in wanted]
    count = re.search(r"num_versions\s*:\s*(\d+)", body)
    return versions[-int(count[1]) :] if count and int(count[1]) > 0 else versions[-1:]
