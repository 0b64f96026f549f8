"""Images into model input: decoding (one path for every command), the evaluation transform, and the exact and
fast image processors."""

from .exact import BitImageProcessor
from .fast import BitImageProcessorFast

__all__ = ["BitImageProcessor", "BitImageProcessorFast"]
