"""ResNet-v2 BiT: stem, residual blocks, stages, and the three public models (base, classifier, backbone).

Module names and parameter keys are those of transformers' `modeling_bit.py`, so checkpoints
move between the two libraries unchanged.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import BitConfig
from .layers import (
    DropPath,
    DynamicPad2d,
    GroupNormActivation,
    WeightStandardizedConv2d,
    activation,
    make_div,
)
from .model_card import ModelCardMixin
from .outputs import BackboneOutput, BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention
from .pretrained import PretrainedMixin
from .timm_surface import TimmBackboneMixin, TimmClassifierMixin, TimmFeaturesMixin

BOTTLE_RATIO = 0.25


def stem_width(config: BitConfig) -> int:
    return config.embedding_size * config.width_factor


def stage_widths(config: BitConfig) -> list[int]:
    """Output channels of each stage; unlike transformers, width_factor scales them *and* the head."""
    return [make_div(size * config.width_factor) for size in config.hidden_sizes[: len(config.depths)]]


def drop_path_rates(config: BitConfig) -> list[list[float]]:
    """Linearly increasing stochastic-depth rates over all blocks, split per stage (float32 as in HF)."""
    rates = np.linspace(0, config.drop_path_rate, sum(config.depths)).astype(np.float32).tolist()
    bounds = np.cumsum([0] + list(config.depths))
    return [rates[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


class BitEmbeddings(nn.Module):
    """Stem: 7×7/2 WS-conv → (zero border) → (GN+act for bottleneck) → 3×3/2 max-pool."""

    def __init__(self, config: BitConfig):
        super().__init__()
        self.num_channels = config.num_channels
        width = stem_width(config)
        self.convolution = WeightStandardizedConv2d(
            config.num_channels, width, kernel_size=7, stride=2, padding=config.global_padding
        )
        # A 0-valued (not -inf) border before the pool: preact stems have no ReLU, so pre-pool
        # values can be negative and this border is part of what the checkpoints learnt.
        self.pad = nn.Identity() if config.global_padding == "SAME" else nn.ConstantPad2d(1, 0.0)
        self.norm = (
            GroupNormActivation(width, config.num_groups, config.hidden_act)
            if config.layer_type == "bottleneck"
            else nn.Identity()
        )
        self.pool_pad = DynamicPad2d(3, 2) if config.embedding_dynamic_padding else nn.Identity()
        self.pooler = nn.MaxPool2d(kernel_size=3, stride=2)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be a 4-D (batch, channels, height, width) tensor, got shape "
                f"{tuple(pixel_values.shape)}; add a batch axis with `pixel_values[None]` for one image."
            )
        if pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                "Make sure that the channel dimension of the pixel values match with the one set in the "
                f"configuration: got {pixel_values.shape[1]} channels, config.num_channels={self.num_channels} "
                "(channels-last input needs `.permute(0, 3, 1, 2)`)."
            )
        hidden = self.norm(self.pad(self.convolution(pixel_values)))
        return self.pooler(self.pool_pad(hidden))


class BitDownsampleConv(nn.Module):
    """Projection shortcut: 1×1 strided WS-conv, followed by GN (no act) in the bottleneck layout."""

    def __init__(self, config: BitConfig, in_channels: int, out_channels: int, stride: int, preact: bool):
        super().__init__()
        self.conv = WeightStandardizedConv2d(in_channels, out_channels, 1, stride=stride, padding=config.global_padding)
        self.norm = nn.Identity() if preact else GroupNormActivation(out_channels, config.num_groups, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def _block_padding(config: BitConfig) -> str | None:
    # "VALID" 3×3 convs would shrink the residual branch below its shortcut (transformers
    # crashes there); VALID therefore applies to the stem, and blocks keep symmetric padding.
    return None if config.global_padding == "VALID" else config.global_padding


class BitPreActivationBottleneckLayer(nn.Module):
    """ResNet-v2 block: GN+act before each conv; the shortcut projects the pre-activated input.

    Unlike transformers, the 3×3 conv honours dilation (output_stride 16/8), as timm and BiT do.
    """

    def __init__(self, config, in_channels, out_channels, stride, dilation, drop_path_rate, is_first_layer):
        super().__init__()
        mid = make_div(out_channels * BOTTLE_RATIO)
        padding, groups = _block_padding(config), config.num_groups
        if is_first_layer:
            self.downsample = BitDownsampleConv(config, in_channels, out_channels, stride, preact=True)
        else:
            self.downsample = None
        self.norm1 = GroupNormActivation(in_channels, groups, config.hidden_act)
        self.conv1 = WeightStandardizedConv2d(in_channels, mid, 1, padding=padding)
        self.norm2 = GroupNormActivation(mid, groups, config.hidden_act)
        self.conv2 = WeightStandardizedConv2d(mid, mid, 3, stride=stride, dilation=dilation, padding=padding)
        self.norm3 = GroupNormActivation(mid, groups, config.hidden_act)
        self.conv3 = WeightStandardizedConv2d(mid, out_channels, 1, padding=padding)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preactivated = self.norm1(x)
        shortcut = self.downsample(preactivated) if self.downsample is not None else x
        hidden = self.conv1(preactivated)
        hidden = self.conv2(self.norm2(hidden))
        hidden = self.conv3(self.norm3(hidden))
        return self.drop_path(hidden) + shortcut


class BitBottleneckLayer(nn.Module):
    """ResNet-v1.5 block (ViT-/DPT-hybrid): conv → GN+act, last GN without act, ReLU after the add."""

    def __init__(self, config, in_channels, out_channels, stride, dilation, drop_path_rate, is_first_layer):
        super().__init__()
        mid = make_div(out_channels * BOTTLE_RATIO)
        padding, groups = _block_padding(config), config.num_groups
        if is_first_layer:
            self.downsample = BitDownsampleConv(config, in_channels, out_channels, stride, preact=False)
        else:
            self.downsample = None
        self.conv1 = WeightStandardizedConv2d(in_channels, mid, 1, padding=padding)
        self.norm1 = GroupNormActivation(mid, groups, config.hidden_act)
        self.conv2 = WeightStandardizedConv2d(mid, mid, 3, stride=stride, dilation=dilation, padding=padding)
        self.norm2 = GroupNormActivation(mid, groups, config.hidden_act)
        self.conv3 = WeightStandardizedConv2d(mid, out_channels, 1, padding=padding)
        self.norm3 = GroupNormActivation(out_channels, groups, act=None)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.activation = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x) if self.downsample is not None else x
        hidden = self.norm1(self.conv1(x))
        hidden = self.norm2(self.conv2(hidden))
        hidden = self.norm3(self.conv3(hidden))
        return self.activation(self.drop_path(hidden) + shortcut)


class BitStage(nn.Module):
    """`depth` blocks; the first one strides and projects the shortcut."""

    def __init__(self, config, in_channels, out_channels, stride, dilation, depth, drop_path_rates):
        super().__init__()
        block = BitBottleneckLayer if config.layer_type == "bottleneck" else BitPreActivationBottleneckLayer
        # Block 0 keeps dilation 1 when entering a dilation-2 stage (it is the one that would have
        # strided); timm and the original DeepLab-style dilation schedule agree on this.
        first_dilation = 1 if dilation in (1, 2) else 2
        self.layers = nn.Sequential(
            *(
                block(
                    config,
                    in_channels if index == 0 else out_channels,
                    out_channels,
                    stride if index == 0 else 1,
                    first_dilation if index == 0 else dilation,
                    drop_path_rates[index],
                    is_first_layer=index == 0,
                )
                for index in range(depth)
            )
        )

        self.checkpointed: frozenset[int] = frozenset()  # blocks whose activations are recomputed in backward
        self.checkpoint_call: Callable[..., torch.Tensor] = checkpoint

    @property
    def gradient_checkpointing(self) -> bool:
        return bool(self.checkpointed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.checkpointed or not (self.training and torch.is_grad_enabled()):
            return self.layers(x)
        for index, layer in enumerate(self.layers):  # a checkpointed block keeps only its input
            x = self.checkpoint_call(layer, x) if index in self.checkpointed else layer(x)
        return x


def _checkpoint_offloaded(function: Callable[..., torch.Tensor], *args: Any, **options: Any) -> torch.Tensor:
    """Checkpoint, holding the saved block inputs in (pinned) host memory instead of the accelerator's."""
    with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
        return checkpoint(function, *args, **options)


class BitEncoder(nn.Module):
    """Stages with strides 1, 2, 2, …; once the stride would pass `output_stride`, dilate instead."""

    def __init__(self, config: BitConfig):
        super().__init__()
        current_stride, dilation, in_channels = 4, 1, stem_width(config)
        stages = []
        for index, (depth, out_channels, rates) in enumerate(
            zip(config.depths, stage_widths(config), drop_path_rates(config))
        ):
            stride = 1 if index == 0 else 2
            if current_stride >= config.output_stride:
                dilation *= stride
                stride = 1
            stages.append(BitStage(config, in_channels, out_channels, stride, dilation, depth, rates))
            current_stride *= stride
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)

    def forward(self, hidden: torch.Tensor, num_stages: int | None = None) -> list[torch.Tensor]:
        """Return [stem output, stage1 output, …], running only the first `num_stages` stages."""
        outputs = [hidden]
        for stage in self.stages[:num_stages]:
            hidden = stage(hidden)
            outputs.append(hidden)
        return outputs


class BitPreTrainedModel(ModelCardMixin, PretrainedMixin, nn.Module):
    """Shared weight init and checkpoint IO of the BiT models."""

    config_class = BitConfig
    base_model_prefix = "bit"
    main_input_name = "pixel_values"
    # What generic transformers code (Trainer, PEFT, accelerate, its test mixins) reads from any model, with
    # transformers' values for BiT: nothing tied, ignored on load, kept in float32 or exempt from device splits.
    _no_split_modules = ["BitEmbeddings"]
    _keys_to_ignore_on_load_missing = None
    _keys_to_ignore_on_load_unexpected = None
    _keep_in_fp32_modules: frozenset[str] = frozenset()
    _keep_in_fp32_modules_strict: frozenset[str] = frozenset()
    _tied_weights_keys = None
    _supports_sdpa = _supports_flash_attn = _supports_flex_attn = False

    @classmethod
    def can_generate(cls) -> bool:
        return False

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        return False

    @classmethod
    def _can_set_experts_implementation(cls) -> bool:
        return False

    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.base_model_prefix, self)

    def get_input_embeddings(self) -> nn.Module:
        raise NotImplementedError(
            f"{type(self).__name__} has no input embeddings: a BiT starts with a convolution on pixels "
            "(`enable_input_require_grads()` works without them)."
        )

    def get_output_embeddings(self) -> None:
        return None

    def enable_input_require_grads(self) -> None:
        """Make the stem's output require grad, so reentrant checkpointing of frozen early blocks still
        back-propagates (what transformers does through the input embeddings, which a BiT lacks)."""
        self._require_grads_hook = self.base_model.embedder.register_forward_hook(
            lambda _m, _i, output: output.requires_grad_(True)
        )

    def disable_input_require_grads(self) -> None:
        hook = getattr(self, "_require_grads_hook", None)
        if hook is not None:
            hook.remove()
            del self._require_grads_hook

    def post_init(self) -> None:
        """Run at the end of each model's __init__, as in transformers: `gradient_checkpointing` in an older
        config turns activation checkpointing on."""
        if getattr(self.config, "gradient_checkpointing", False):
            self.activation_checkpointing_enable()

    def __init__(self, config: BitConfig):
        super().__init__()
        if not isinstance(config, BitConfig):
            raise TypeError(f"{type(self).__name__} needs a BitConfig, got {type(config).__name__}.")
        self.config = config

    def init_weights(self) -> None:
        for module in self.modules():
            self._init_weights(module)

    def _init_weights(self, module: nn.Module) -> None:
        """Kaiming-normal (fan_out) convs; GroupNorm weight 1 / bias 0; Linear keeps torch's default."""
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # -- activation (gradient) checkpointing, under transformers' names: Trainer calls them --------------------
    supports_gradient_checkpointing = True

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict[str, Any] | None = None, every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:  # fmt: skip
        """Trade compute for memory in training: every `every_n_layers`-th residual block keeps only its input
        and recomputes its activations during backward (same gradients; DropPath's draws are replayed).
        `offload` holds those inputs in host memory; the kwargs go to torch.utils.checkpoint."""
        if every_n_layers < 1:
            raise ValueError(f"every_n_layers must be ≥ 1, got {every_n_layers}.")
        options = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        call = functools.partial(_checkpoint_offloaded if offload else checkpoint, **options)
        block = 0
        for stage in self._stages():
            chosen = [index for index in range(len(stage.layers)) if (block + index) % every_n_layers == 0]
            stage.checkpointed, stage.checkpoint_call = frozenset(chosen), call
            block += len(stage.layers)

    def activation_checkpointing_disable(self) -> None:
        for stage in self._stages():
            stage.checkpointed = frozenset()

    @property
    def is_activation_checkpointing(self) -> bool:
        """True when any block recomputes its activations in backward (each stage says so as
        `gradient_checkpointing`, the per-module flag transformers' layers carry)."""
        return any(stage.checkpointed for stage in self._stages())

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None,
                                      **options: Any) -> None:  # fmt: skip
        """transformers' earlier name for `activation_checkpointing_enable` (still the one most code calls)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **options)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.is_activation_checkpointing

    def _stages(self) -> list[BitStage]:
        return [module for module in self.modules() if isinstance(module, BitStage)]

    def _flags(self, output_hidden_states: bool | None, return_dict: bool | None) -> tuple[bool, bool]:
        """The output switches, from the call or else the config. `forward` also takes, and ignores, the keyword
        arguments transformers passes to every model (output_attentions, num_items_in_batch, …), as
        transformers' BiT does: a BiT has no attention, cache or token counts."""
        return (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states,
            self.config.return_dict if return_dict is None else return_dict,
        )


class BitModel(TimmFeaturesMixin, BitPreTrainedModel):
    """Feature extractor: stem, stages, final GN+act (preact only) and global average pooling."""

    def __init__(self, config: BitConfig):
        super().__init__(config)
        self.embedder = BitEmbeddings(config)
        self.encoder = BitEncoder(config)
        self.num_features = stage_widths(config)[-1]
        self.norm = (
            GroupNormActivation(self.num_features, config.num_groups, config.hidden_act)
            if config.layer_type == "preactivation"
            else nn.Identity()
        )
        self.pooler = nn.AdaptiveAvgPool2d((1, 1))
        self.init_weights()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        output_hidden_states, return_dict = self._flags(output_hidden_states, return_dict)
        stage_outputs = self.encoder(self.embedder(pixel_values))
        last_hidden_state = self.norm(stage_outputs[-1])
        pooled = self.pooler(last_hidden_state)
        hidden_states = tuple(stage_outputs) if output_hidden_states else None
        if not return_dict:
            return (last_hidden_state, pooled) + ((hidden_states,) if hidden_states is not None else ())
        return BaseModelOutputWithPoolingAndNoAttention(last_hidden_state, pooled, hidden_states)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: BitConfig) -> torch.Tensor:
    """transformers' rule: the first call picks `problem_type` from num_labels and label dtype, and records it."""
    labels = labels.to(logits.device)
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        if config.num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if config.problem_type == "single_label_classification":
        if labels.dtype not in (torch.long, torch.uint8):
            raise ValueError(
                f"Single-label classification needs integer class ids as torch.long, got {labels.dtype}: "
                "pass `labels.long()`."
            )
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1), ignore_index=-100)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class BitForImageClassification(TimmClassifierMixin, BitPreTrainedModel):
    """BitModel + Flatten + Linear head (Identity when num_labels == 0)."""

    def __init__(self, config: BitConfig):
        super().__init__(config)
        self.bit = BitModel(config)
        head = nn.Linear(self.bit.num_features, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.classifier = nn.Sequential(nn.Flatten(), head)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        output_hidden_states, return_dict = self._flags(output_hidden_states, return_dict)
        outputs = self.bit(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(outputs.pooler_output)
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        if not return_dict:
            extra = (outputs.hidden_states,) if outputs.hidden_states is not None else ()
            return ((loss,) if loss is not None else ()) + (logits,) + extra
        return ImageClassifierOutputWithNoAttention(loss, logits, outputs.hidden_states)


class BackboneType(str, enum.Enum):
    """transformers' names for where a backbone comes from; a BitBackbone is the transformers kind."""

    TRANSFORMERS = "transformers"


class BitBackbone(TimmBackboneMixin, BitPreTrainedModel):
    """Multi-scale features for detection/segmentation heads: the raw outputs of the chosen stages.

    Stages after the last requested one are not run (transformers runs the whole network).
    """

    backbone_type = BackboneType.TRANSFORMERS

    def __init__(self, config: BitConfig):
        super().__init__(config)
        self.bit = BitModel(config)
        self.num_features = [stem_width(config)] + stage_widths(config)
        self.post_init()

    @property
    def stage_names(self) -> list[str]:
        return self.config.stage_names

    @property
    def out_features(self) -> list[str]:
        return self.config.out_features

    @out_features.setter
    def out_features(self, value: list[str] | None) -> None:
        self.config.out_features = value

    @property
    def out_indices(self) -> list[int]:
        return self.config.out_indices

    @out_indices.setter
    def out_indices(self, value: list[int] | None) -> None:
        self.config.out_indices = value

    @property
    def out_feature_channels(self) -> dict[str, int]:
        return dict(zip(self.stage_names, self.num_features))

    @property
    def channels(self) -> list[int]:
        return [self.out_feature_channels[name] for name in self.out_features]

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BackboneOutput | tuple:
        output_hidden_states, return_dict = self._flags(output_hidden_states, return_dict)
        indices = [self.stage_names.index(name) for name in self.out_features]
        num_stages = None if output_hidden_states else max(indices)
        stage_outputs = self.bit.encoder(self.bit.embedder(pixel_values), num_stages=num_stages)
        feature_maps = tuple(stage_outputs[i] for i in indices)
        hidden_states = tuple(stage_outputs) if output_hidden_states else None
        if not return_dict:
            return (feature_maps,) + ((hidden_states,) if hidden_states is not None else ())
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states)
