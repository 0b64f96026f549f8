"""The module paths of release 0.1, before the package was cut into layers, and those of the second cut (issue 32:
_util/ and runtime/): importing one still works for this release, with a DeprecationWarning naming where its
contents went, and every name it held that still exists under that name resolves to the same object. Remove this
file (and its install in `__init__`) in the next release. A path here must not be a module of the package: its
stand-in would shadow the real module (tests/test_layout.py checks).

Not bridged: `bigtransfer.train.pretrain` (now `pre_training`; `bigtransfer.train.pretrain` is the function),
and the Python signatures that changed: `finetune`/`pretrain` take `recipe=` and `run=`, and the converters'
`config_from_*` return settings dicts for `BitConfig(**settings)`.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType

MOVED = {
    "bigtransfer.config": ("bigtransfer.models.config",),
    "bigtransfer.layers": ("bigtransfer.models.layers",),
    "bigtransfer.outputs": ("bigtransfer.models.outputs",),
    "bigtransfer.modeling": ("bigtransfer.models.modeling",),
    "bigtransfer.pretrained": ("bigtransfer.models.pretrained",),
    "bigtransfer.io": ("bigtransfer._util.files",),
    "bigtransfer.hub": ("bigtransfer.checkpoints.hub",),
    "bigtransfer.download": ("bigtransfer.checkpoints.download",),
    "bigtransfer.zoo": ("bigtransfer.checkpoints.catalogue",),
    "bigtransfer.sources": (
        "bigtransfer.checkpoints.sources",
        "bigtransfer.checkpoints.catalogue",
        "bigtransfer.processing.record",
    ),
    "bigtransfer.labels": ("bigtransfer.checkpoints.labels",),
    "bigtransfer.convert": ("bigtransfer.checkpoints.timm", "bigtransfer.checkpoints.npz"),
    "bigtransfer.convert.npz": ("bigtransfer.checkpoints.npz",),
    "bigtransfer.convert.timm": ("bigtransfer.checkpoints.timm",),
    "bigtransfer.image_inputs": ("bigtransfer.processing.decoding",),
    "bigtransfer.processing_base": ("bigtransfer.processing.base", "bigtransfer.processing.transform"),
    "bigtransfer.processing_fast": ("bigtransfer.processing.fast",),
    "bigtransfer.loading": ("bigtransfer.data.workers", "bigtransfer.data.device", "bigtransfer._util.device"),
    "bigtransfer.pipeline": ("bigtransfer.inference.pipelines", "bigtransfer.runtime.classifier"),
    "bigtransfer.train.data": ("bigtransfer.data.datasets", "bigtransfer.data.sources"),
    "bigtransfer.train.evaluate": (
        "bigtransfer.inference.predict",
        "bigtransfer.inference.metrics",
        "bigtransfer.inference.plots",
        "bigtransfer.data.eval_batches",
        "bigtransfer._util.files",
    ),
    "bigtransfer.train.few_shot": ("bigtransfer.inference.few_shot", "bigtransfer.train.pre_training"),
    # the second cut: general helpers to _util/, the runtime of exported graphs to runtime/
    "bigtransfer.checkpoints.io": ("bigtransfer._util.files", "bigtransfer._util.text"),
    "bigtransfer.deploy.runtime": ("bigtransfer.runtime.exported",),
    "bigtransfer.deploy.openvino": ("bigtransfer.runtime.openvino", "bigtransfer.deploy.openvino_ir"),
    "bigtransfer.deploy.model_files": ("bigtransfer.runtime.model_files",),
    "bigtransfer.deploy.quiet": ("bigtransfer._util.quiet",),
}


def _forwarding_module(old: str, targets: tuple[str, ...]) -> ModuleType:
    """A module named `old` whose attributes are looked up in `targets`, in order, on first use (PEP 562
    `__getattr__`), each lookup with a DeprecationWarning."""
    forwarding = ModuleType(old, f"The former {old}, now {', '.join(targets)}.")
    forwarding.__path__ = []  # 0.1 packages (bigtransfer.convert) had children, which are registered too

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        warnings.warn(f"{old} moved to {', '.join(targets)}; the old path goes away in the next release.",
                      DeprecationWarning, stacklevel=2)  # fmt: skip
        for target in targets:
            module = importlib.import_module(target)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"{old} (now {', '.join(targets)}) has no attribute {name!r}")

    forwarding.__getattr__ = __getattr__
    return forwarding


def install() -> None:
    """Register the old paths in sys.modules, so `import bigtransfer.config` finds one without loading anything.
    Registered, not found by an import hook: a hook's result would be set as an attribute of its parent, and
    `bigtransfer.pipeline` (the function) would become the 0.1 module of that name."""
    for old, targets in MOVED.items():
        sys.modules.setdefault(old, _forwarding_module(old, targets))
