"""bigtransfer: BiT (Big Transfer) models, drop-in compatible with transformers' BiT API and checkpoints."""

from . import _moved
from ._util.package import package_version
from .inference.auto_classes import register, unregister
from .inference.pipelines import pipeline
from .models.config import BitConfig
from .models.modeling import BitBackbone, BitForImageClassification, BitModel, BitPreTrainedModel
from .processing.base import BatchFeature
from .processing.exact import BitImageProcessor
from .processing.fast import BitImageProcessorFast

_moved.install()

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
__version__ = package_version()
