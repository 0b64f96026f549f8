"""timm's model surface on the BiT models — forward_features / forward_head, the classifier, pretrained_cfg and
feature_info — so code written for timm's ResNetV2 (its data config and transforms, feature extractors, head swaps)
runs on ours unchanged."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..processing.record import preprocessing_settings, timm_pretrained_cfg, timm_processor_settings

logger = logging.getLogger(__name__)


class FeatureInfo(list):
    """timm's `feature_info`: one dict per feature map (num_chs, reduction, module), with the accessors timm's
    feature extractors have, so `model.feature_info.channels()` works as on a `features_only` timm model."""

    def channels(self, idx: int | list[int] | None = None) -> int | list[int]:
        return self._get("num_chs", idx)

    def reduction(self, idx: int | list[int] | None = None) -> int | list[int]:
        return self._get("reduction", idx)

    def module_name(self, idx: int | list[int] | None = None) -> str | list[str]:
        return self._get("module", idx)

    def _get(self, key: str, idx: int | list[int] | None) -> Any:
        if isinstance(idx, int):
            return self[idx][key]
        return [self[i][key] for i in (range(len(self)) if idx is None else idx)]


def stage_feature_info(bit: nn.Module, prefix: str = "") -> FeatureInfo:
    """The stem and every stage of a BitModel (`bit`), read off its modules: channels, stride from the input (it
    stops growing where stages dilate instead), and the module whose output it is. The stem's is after its
    max-pool (timm lists its conv, at stride 2, instead)."""
    reduction = 4  # the stem's 7×7/2 conv and 3×3/2 max-pool
    infos = [dict(num_chs=bit.embedder.convolution.out_channels, reduction=reduction, module=f"{prefix}embedder")]
    for index, stage in enumerate(bit.encoder.stages):
        reduction *= stage.layers[0].conv2.stride[0]  # the first block's 3×3 conv strides
        channels = stage.layers[-1].conv3.out_channels
        infos.append(dict(num_chs=channels, reduction=reduction, module=f"{prefix}encoder.stages.{index}"))
    return FeatureInfo(infos)


class PretrainedCfgMixin:
    """`pretrained_cfg`, the dict timm models carry and `timm.data.resolve_model_data_config` reads."""

    _prefix = "bit."  # where the BitModel's modules sit in this model

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's data config for this model, from the processor settings of the checkpoint it was loaded from (the
        ones `BitImageProcessor.from_pretrained` would read). A model that records none — built from a config, or
        loaded from weights without a preprocessor_config.json — gets timm's BiT defaults: 224 px at crop_pct 0.875,
        bilinear, mean and std 0.5."""
        settings = self._preprocessing if self._preprocessing is not None else timm_processor_settings({})
        return {
            **timm_pretrained_cfg(settings, self.config.num_channels),
            "num_classes": self.num_classes,
            "first_conv": self._prefix + "embedder.convolution",
        }

    @functools.cached_property
    def _preprocessing(self) -> dict[str, Any] | None:
        """The processor settings of the checkpoint this model was loaded from, or None when it has none."""
        source = getattr(self.config, "_name_or_path", "")
        if not source or (source == "state_dict" and not Path(source).exists()):  # built, or from_pretrained(None)
            return None
        try:
            return preprocessing_settings(source, hub_options={"local_files_only": True})  # a property: no download
        except (OSError, ValueError) as error:
            logger.warning("%s; pretrained_cfg holds timm's BiT defaults instead.", error)
            return None

    @property
    def num_classes(self) -> int:
        return 0  # feature models: no classifier, as timm's num_classes=0


class TimmFeaturesMixin(PretrainedCfgMixin):
    """BitModel as a timm model created with num_classes=0: features, then pooled features."""

    _prefix = ""

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The unpooled last feature map, after the final norm (timm's `forward_features`)."""
        return self.norm(self.encoder(self.embedder(pixel_values))[-1])

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, flattened: what this model's pooler gives (there is no classifier)."""
        return torch.flatten(self.pooler(features), 1)

    @property
    def feature_info(self) -> FeatureInfo:
        return stage_feature_info(self)


class TimmClassifierMixin(PretrainedCfgMixin):
    """BitForImageClassification with timm's classifier API; `config.num_labels` always counts the head's outputs."""

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.bit.forward_features(pixel_values)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool and classify `forward_features`' output; `pre_logits=True` stops at the pooled features."""
        pooled = self.bit.forward_head(features)
        return pooled if pre_logits else self.classifier(pooled)

    def get_classifier(self) -> nn.Module:
        return self.classifier[1]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head with `num_classes` outputs, zero-initialised as BiT starts fine-tuning (every class at equal
        odds); 0 leaves an identity head that returns the pooled features. The config follows: a new number of
        classes gets transformers' generic labels (LABEL_0 …), so the model saves and loads back as it is.

        BiT always average-pools (config.json has no pooling field), so `global_pool` may only be None or "avg".
        """
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool={global_pool!r}: BiT models average-pool; pass None or 'avg'.")
        head: nn.Module = nn.Identity()
        if num_classes > 0:
            head = nn.Linear(self.num_features, num_classes, device=self.device, dtype=self.dtype)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.config.num_labels = num_classes
        self.classifier[1] = head

    @property
    def num_classes(self) -> int:
        return self.config.num_labels

    @property
    def num_features(self) -> int:
        """Width of the pooled features the head classifies."""
        return self.bit.num_features

    @property
    def feature_info(self) -> FeatureInfo:
        return stage_feature_info(self.bit, prefix="bit.")

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        return {**super().pretrained_cfg, "classifier": "classifier.1"}


class TimmBackboneMixin(PretrainedCfgMixin):
    """BitBackbone as a timm `features_only` model: `feature_info` describes the maps it returns, in order."""

    @property
    def feature_info(self) -> FeatureInfo:
        stages = stage_feature_info(self.bit, prefix="bit.")
        return FeatureInfo(stages[self.stage_names.index(name)] for name in self.out_features)
