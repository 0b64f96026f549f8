"""bigtransfer: BiT (Big Transfer) models, drop-in compatible with transformers' BiT API and checkpoints."""

from .config import BitConfig
from .modeling import BitBackbone, BitForImageClassification, BitModel, BitPreTrainedModel

__all__ = ["BitBackbone", "BitConfig", "BitForImageClassification", "BitModel", "BitPreTrainedModel"]
__version__ = "0.1.0"
