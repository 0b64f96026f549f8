"""bigtransfer: BiT (Big Transfer) models, drop-in compatible with transformers' BiT API and checkpoints."""

from . import sources  # noqa: F401  (tells the processors what zoo names, .npz files and timm ids imply)
from .config import BitConfig
from .modeling import BitBackbone, BitForImageClassification, BitModel, BitPreTrainedModel
from .pipeline import pipeline
from .processing import BitImageProcessor
from .processing_base import BatchFeature
from .processing_fast import BitImageProcessorFast

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
]
__version__ = "0.1.0"
