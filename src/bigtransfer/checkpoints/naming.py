"""How a model is named from where it lives: one rule for its card's title, `serve`'s /v2/models/NAME and the
Triton repository's folder, so that what a user reads in one they find in the others."""

from __future__ import annotations

import os
import re
from pathlib import Path


def default_model_name(model: str | os.PathLike) -> str:
    """A model name from how the model was named: the last part of its path or Hub id (a file's without its
    suffix; a run's `…/food/model` is "food"), with every run of other characters replaced by '_'."""
    path = Path(model)
    if path.exists():
        path = path.resolve()
    if path.is_dir() and path.name == "model" and path.parent.name:  # what finetune and pretrain leave
        path = path.parent
    return usable_name(path.stem if path.is_file() else path.name)


def usable_name(text: str) -> str:
    """`text` as a name Triton and URLs take: letters, digits, '_', '-' and '.' (not first)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).lstrip(".") or "bit"


# Letters, digits, '_', '-' and '.': safe as a folder name, in the URL paths of the KServe v2 protocol
# (/v2/models/<name>/infer) and unquoted inside config.pbtxt; a leading '.' would make a hidden folder.
MODEL_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def check_model_name(name: str) -> None:
    if not MODEL_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a usable Triton model name: use letters, digits, '_', '-' and '.' (not first), "
            f"e.g. {usable_name(name)!r}."
        )
