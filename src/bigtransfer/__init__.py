"""bigtransfer: BiT (Big Transfer) models, drop-in compatible with transformers' BiT API and checkpoints.

The public names are resolved on first use (PEP 562): `import bigtransfer` (and so `bigtransfer --version` and
`--help`) loads no torch; `bigtransfer.BitConfig` or `from bigtransfer import pipeline` imports the module that
defines it, once.
"""

import importlib
from typing import TYPE_CHECKING

from . import _moved

_moved.install()

# each public name, and the module (relative to this package) that defines it
_PUBLIC = {
    "BatchFeature": ".processing.base",
    "BitBackbone": ".models.modeling",
    "BitConfig": ".models.config",
    "BitForImageClassification": ".models.modeling",
    "BitImageProcessor": ".processing.exact",
    "BitImageProcessorFast": ".processing.fast",
    "BitModel": ".models.modeling",
    "BitPreTrainedModel": ".models.modeling",
    "pipeline": ".inference.pipelines",
    "register": ".inference.auto_classes",
    "unregister": ".inference.auto_classes",
}
__all__ = [
    "BatchFeature",
    "BitBackbone",
    "BitConfig",
    "BitForImageClassification",
    "BitImageProcessor",
    "BitImageProcessorFast",
    "BitModel",
    "BitPreTrainedModel",
    "pipeline",
    "register",
    "unregister",
]

if TYPE_CHECKING:  # what type checkers and editors read (the package ships py.typed): _PUBLIC's names
    from .inference.auto_classes import register, unregister
    from .inference.pipelines import pipeline
    from .models.config import BitConfig
    from .models.modeling import BitBackbone, BitForImageClassification, BitModel, BitPreTrainedModel
    from .processing.base import BatchFeature
    from .processing.exact import BitImageProcessor
    from .processing.fast import BitImageProcessorFast


def __getattr__(name: str):
    if name == "__version__":
        value = importlib.import_module("._util.package", __name__).package_version()
    elif name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # found directly from now on; __getattr__ runs once a name
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "__version__"})
