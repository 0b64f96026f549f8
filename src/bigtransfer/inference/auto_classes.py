"""Opt-in registration of bigtransfer's classes with transformers' Auto classes: after `register()`,
`AutoConfig`, `AutoModel`, `AutoModelForImageClassification`, `AutoBackbone` and `AutoImageProcessor` load
BiT checkpoints (model_type "bit") as bigtransfer's classes. Never done on import: "bit" is transformers' own
model type, so registering replaces transformers' BiT for the whole process until `unregister()`."""

from __future__ import annotations

from typing import Any

from ..models.config import BitConfig
from ..models.modeling import BitBackbone, BitForImageClassification, BitModel
from ..processing.exact import BitImageProcessor
from ..processing.fast import BitImageProcessorFast

_replaced: list[tuple[Any, Any, Any]] | None = None  # (mapping, our key, what it held there before register())


def _mappings() -> dict[str, tuple[Any, Any, Any]]:
    """Each Auto mapping we take over: (the mapping, our key in it, our value)."""
    try:
        from transformers.models.auto import configuration_auto, image_processing_auto, modeling_auto
    except ImportError:
        raise ImportError("bigtransfer.register() needs transformers: `pip install transformers`.") from None
    # transformers 5 maps a config to {backend: processor}; 4.x to a (slow, fast) pair
    dict_form = isinstance(image_processing_auto.IMAGE_PROCESSOR_MAPPING_NAMES["bit"], dict)
    processors = {"pil": BitImageProcessor, "torchvision": BitImageProcessorFast} if dict_form else (
        BitImageProcessor, BitImageProcessorFast)  # fmt: skip
    return {
        "AutoConfig": (configuration_auto.CONFIG_MAPPING, "bit", BitConfig),
        "AutoModel": (modeling_auto.MODEL_MAPPING, BitConfig, BitModel),
        "AutoModelForImageClassification": (
            modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING, BitConfig, BitForImageClassification),
        "AutoBackbone": (modeling_auto.MODEL_FOR_BACKBONE_MAPPING, BitConfig, BitBackbone),
        "AutoImageProcessor": (image_processing_auto.IMAGE_PROCESSOR_MAPPING, BitConfig, processors),
    }  # fmt: skip


def register() -> None:
    """Make transformers' Auto classes load "bit" checkpoints as bigtransfer's classes (idempotent).

    `AutoImageProcessor` picks our `BitImageProcessorFast` for its default torchvision backend and our exact
    `BitImageProcessor` for backend="pil", as it picks between transformers' two BiT processors. Each mapping's
    own `register(key, value, exist_ok=True)` is called: AutoConfig.register and AutoModel.register call it too,
    while AutoImageProcessor.register accepts transformers' processor subclasses only.
    """
    global _replaced
    if _replaced is not None:
        return
    mappings = _mappings()
    _replaced = [(mapping, key, mapping._extra_content.get(key)) for mapping, key, _ in mappings.values()]
    for mapping, key, value in mappings.values():
        mapping.register(key, value, exist_ok=True)


def unregister() -> None:
    """Give the Auto classes back what `register()` found (transformers' own BiT, unless something else had
    registered "bit" before). transformers has no public way to remove a registration, so this edits the
    mappings' registry of added entries."""
    global _replaced
    if _replaced is None:
        return
    for mapping, key, before in _replaced:
        if before is None:
            mapping._extra_content.pop(key, None)
        else:
            mapping._extra_content[key] = before
    _replaced = None
