"""The module paths of release 0.1, before the package was cut into layers: importing one still works for this
release, with a DeprecationWarning naming the new path. Remove this file (and its install in `__init__`) in the
next release."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED = {
    "bigtransfer.config": "bigtransfer.models.config",
    "bigtransfer.layers": "bigtransfer.models.layers",
    "bigtransfer.outputs": "bigtransfer.models.outputs",
    "bigtransfer.modeling": "bigtransfer.models.modeling",
    "bigtransfer.pretrained": "bigtransfer.models.pretrained",
    "bigtransfer.io": "bigtransfer.checkpoints.io",
    "bigtransfer.hub": "bigtransfer.checkpoints.hub",
    "bigtransfer.download": "bigtransfer.checkpoints.download",
    "bigtransfer.zoo": "bigtransfer.checkpoints.catalogue",
    "bigtransfer.sources": "bigtransfer.checkpoints.sources",
    "bigtransfer.labels": "bigtransfer.checkpoints.labels",
    "bigtransfer.convert": "bigtransfer.checkpoints.timm",
    "bigtransfer.convert.npz": "bigtransfer.checkpoints.npz",
    "bigtransfer.convert.timm": "bigtransfer.checkpoints.timm",
    "bigtransfer.image_inputs": "bigtransfer.processing.decoding",
    "bigtransfer.processing_base": "bigtransfer.processing.base",
    "bigtransfer.processing_fast": "bigtransfer.processing.fast",
    "bigtransfer.loading": "bigtransfer.data.workers",
    "bigtransfer.pipeline": "bigtransfer.inference.pipelines",
    "bigtransfer.train.data": "bigtransfer.data.datasets",
    "bigtransfer.train.evaluate": "bigtransfer.inference.predict",
    "bigtransfer.train.few_shot": "bigtransfer.inference.few_shot",
}


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module now living at the new one (the same object, not a copy)."""

    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.target}; the old path goes away in the next release.",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(self.target)
        self.original_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.original_spec  # the import system stamped the alias's spec on it


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(MOVED[fullname]))


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
