"""The installed bigtransfer as its metadata describes it: its version, and how to install the optional extras
that features outside the core need."""

from __future__ import annotations

import importlib
import re
from types import ModuleType


def package_version() -> str:
    """bigtransfer's installed version (pyproject.toml is its one source), as checkpoints and exports record it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bigtransfer")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def install_hint(extra: str) -> str:
    """How to install the optional feature `extra`: bigtransfer is installed from its repository (it is not on
    PyPI), so the command is pip's editable install of the extra in a clone; the packages it brings are read from
    the installed metadata, so the hint and pyproject.toml cannot disagree."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        requirements = requires("bigtransfer") or []
    except PackageNotFoundError:
        requirements = []
    marker = re.compile(rf"""extra\s*==\s*["']{re.escape(extra)}["']""")
    packages = [re.split(r"[\s;<>=!~\[]", line, maxsplit=1)[0] for line in requirements if marker.search(line)]
    return f"pip install -e '.[{extra}]' in a bigtransfer clone" + (f" ({', '.join(packages)})" if packages else "")


def optional_import(module: str, needed_for: str, extra: str) -> ModuleType:
    """`module`, which only the optional feature `extra` installs; when it is missing, an ImportError saying what
    needs it (`needed_for`, e.g. "Running an ONNX export needs ONNX Runtime") and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{needed_for}: {install_hint(extra)}.") from None
