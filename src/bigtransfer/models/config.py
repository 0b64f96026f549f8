"""BitConfig: the architecture and head of a BiT model, validated, with a transformers-compatible JSON form."""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any

from .._util.files import atomic_write_text, read_json
from ..checkpoints.hub import CONFIG_NAME, PushToHubMixin
from ..checkpoints.loading_options import split_loading_options, without_loading_options
from ..checkpoints.sources import checkpoint_settings
from ..checkpoints.weights import as_dtype
from .layers import ACTIVATIONS
from .transformers_auto import split_auto_call

logger = logging.getLogger(__name__)

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def _check_out_features(out_features: Any, stage_names: list[str]) -> None:
    if not isinstance(out_features, list):
        raise ValueError(f"out_features must be a list got {type(out_features)}")
    if any(name not in stage_names for name in out_features):
        raise ValueError(f"out_features must be a subset of stage_names: {stage_names} got {out_features}")
    if len(out_features) != len(set(out_features)):
        raise ValueError(f"out_features must not contain any duplicates, got {out_features}")
    expected = [name for name in stage_names if name in out_features]
    if out_features != expected:
        raise ValueError(
            f"out_features must be in the same order as stage_names, expected {expected} got {out_features}"
        )


def _check_out_indices(out_indices: Any, stage_names: list[str]) -> None:
    if not isinstance(out_indices, list):
        raise ValueError(f"out_indices must be a list, got {type(out_indices)}")
    n = len(stage_names)
    if any(not isinstance(i, int) or not -n <= i < n for i in out_indices):
        raise ValueError(f"out_indices must be valid indices for stage_names {stage_names}, got {out_indices}")
    positive = [i % n for i in out_indices]
    if len(positive) != len(set(positive)):
        raise ValueError(f"out_indices must not contain any duplicates, got {out_indices}")
    if positive != sorted(positive):
        raise ValueError(
            f"out_indices must be in the same order as stage_names, expected {sorted(out_indices, key=lambda i: i % n)} "
            f"got {out_indices}"
        )


# Far beyond any BiT (R152x4: 256-wide stem, 8,192-wide last stage, 36 blocks), far below what would exhaust
# memory merely by being built: a config.json with widths of 100,000 allocated 22.5 GB before any check.
MAX_WIDTH, MAX_BLOCKS, MAX_WIDTH_FACTOR, MAX_CHANNELS = 32_768, 256, 16, 64


def _check_sizes(embedding_size: int, hidden_sizes: list, depths: list, width_factor: int, num_channels: int) -> None:
    too_large = [
        f"{name}={value}" for name, value, limit in (
            ("embedding_size", embedding_size, MAX_WIDTH), ("hidden_sizes", max(hidden_sizes, default=0), MAX_WIDTH),
            ("depths", max(depths, default=0), MAX_BLOCKS), ("width_factor", width_factor, MAX_WIDTH_FACTOR),
            ("num_channels", num_channels, MAX_CHANNELS),
        ) if isinstance(value, int) and value > limit
    ]  # fmt: skip
    if isinstance(embedding_size, int) and isinstance(width_factor, int):
        widest = max([embedding_size, *[w for w in hidden_sizes if isinstance(w, int)]]) * width_factor
        if widest > MAX_WIDTH:
            too_large.append(f"a {widest}-channel layer (width × width_factor)")
    if too_large:
        raise ValueError(
            f"BitConfig sizes beyond any BiT ({', '.join(too_large)}; limits: widths {MAX_WIDTH:,} channels, "
            f"{MAX_BLOCKS} blocks per stage, width_factor {MAX_WIDTH_FACTOR}, {MAX_CHANNELS} input channels): the "
            "config.json is damaged or not meant for this model."
        )


def align_backbone_outputs(
    out_features: list[str] | None, out_indices: list[int] | None, stage_names: list[str]
) -> tuple[list[str], list[int]]:
    """Fill in whichever of out_features / out_indices is missing; both missing → the last stage."""
    if out_features is not None:
        _check_out_features(out_features, stage_names)
    if out_indices is not None:
        _check_out_indices(out_indices, stage_names)
    if out_features is None and out_indices is None:
        return [stage_names[-1]], [len(stage_names) - 1]
    if out_features is None:
        return [stage_names[i] for i in out_indices], list(out_indices)
    if out_indices is None:
        return list(out_features), [stage_names.index(name) for name in out_features]
    if len(out_features) != len(out_indices):
        raise ValueError("out_features and out_indices should have the same length if both are set")
    if out_features != [stage_names[i] for i in out_indices]:
        raise ValueError("out_features and out_indices should correspond to the same stages if both are set")
    return list(out_features), list(out_indices)


class BitConfig(PushToHubMixin):
    """Arguments, defaults and validation of transformers' `BitConfig`, plus checks it lacks.

    Unknown keyword arguments are kept as attributes and serialised, as real hub configs carry
    keys such as `conv_layer`, `torch_dtype` or `architectures`.
    """

    model_type = "bit"
    layer_types = ["preactivation", "bottleneck"]
    supported_padding = [None, "SAME", "VALID"]
    # What generic transformers code (Trainer, PEFT, accelerate, its test mixins) reads from any config: a BiT is
    # one image encoder — no sub-configs, decoder, attention or tensor-parallel plan.
    sub_configs: dict[str, type] = {}
    attribute_map: dict[str, str] = {}
    is_encoder_decoder = False
    output_attentions = False
    base_model_tp_plan = None
    base_model_pp_plan = None

    def __init__(
        self,
        num_channels: int = 3,
        embedding_size: int = 64,
        hidden_sizes: list[int] | tuple[int, ...] = (256, 512, 1024, 2048),
        depths: list[int] | tuple[int, ...] = (3, 4, 6, 3),
        layer_type: str = "preactivation",
        hidden_act: str = "relu",
        global_padding: str | None = None,
        num_groups: int = 32,
        drop_path_rate: float = 0.0,
        embedding_dynamic_padding: bool = False,
        output_stride: int = 32,
        width_factor: int = 1,
        out_features: list[str] | None = None,
        out_indices: list[int] | None = None,
        *,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        label2id: dict[str, int] | None = None,
        problem_type: str | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        **kwargs: Any,
    ):
        if layer_type not in self.layer_types:
            raise ValueError(f"layer_type={layer_type} is not one of {','.join(self.layer_types)}")
        if global_padding is not None:
            if not isinstance(global_padding, str) or global_padding.upper() not in ("SAME", "VALID"):
                raise ValueError(f"Padding strategy {global_padding} not supported: use None, 'same' or 'valid'.")
            global_padding = global_padding.upper()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act={hidden_act!r} is not supported; use one of {', '.join(sorted(ACTIVATIONS))}."
            )
        depths, hidden_sizes = list(depths), list(hidden_sizes)
        if not depths or any(not isinstance(d, int) or d < 1 for d in depths):
            raise ValueError(f"depths must be a non-empty list of positive ints (blocks per stage), got {depths}.")
        if len(hidden_sizes) < len(depths) or (layer_type == "preactivation" and len(hidden_sizes) != len(depths)):
            raise ValueError(
                f"hidden_sizes has {len(hidden_sizes)} entries but depths has {len(depths)}: give one output "
                "width per stage (only the bottleneck layout tolerates extra, unused widths)."
            )
        _check_sizes(embedding_size, hidden_sizes, depths, width_factor, num_channels)
        if not isinstance(output_stride, int) or output_stride < 4:
            raise ValueError(f"output_stride must be an int ≥ 4 (the stem alone has stride 4), got {output_stride}.")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}.")
        if not isinstance(width_factor, int) or width_factor < 1:
            raise ValueError(f"width_factor must be a positive int (1 for R50x1, 3 for R50x3 …), got {width_factor}.")
        if problem_type is not None and problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type={problem_type!r} is not one of {', '.join(PROBLEM_TYPES)} (or None).")

        self.num_channels = num_channels
        self.embedding_size = embedding_size
        self.hidden_sizes = hidden_sizes
        self.depths = depths
        self.layer_type = layer_type
        self.hidden_act = hidden_act
        self.global_padding = global_padding
        self.num_groups = num_groups
        self.drop_path_rate = drop_path_rate
        self.embedding_dynamic_padding = embedding_dynamic_padding
        self.output_stride = output_stride
        self.width_factor = width_factor
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, len(depths) + 1)]
        self._out_features, self._out_indices = align_backbone_outputs(out_features, out_indices, self.stage_names)

        self.problem_type = problem_type
        self.output_hidden_states = output_hidden_states
        self.return_dict = return_dict
        kwargs.pop("stage_names", None)  # derived from depths, never trusted from a file
        kwargs.pop("model_type", None)
        self._attn_implementation = kwargs.pop("attn_implementation", None)
        legacy_dtype = kwargs.pop("torch_dtype", None)  # transformers 4's name for it
        self.dtype = as_dtype(kwargs.pop("dtype", None) or legacy_dtype)
        self._set_labels(num_labels, id2label, label2id)
        for key, value in without_loading_options(kwargs).items():  # how a file was fetched is no setting
            setattr(self, key, value)

    # -- labels -----------------------------------------------------------------------------
    def _set_labels(self, num_labels: int | None, id2label: dict | None, label2id: dict | None) -> None:
        if id2label is not None:
            if num_labels is not None and num_labels != len(id2label):
                raise ValueError(
                    f"num_labels={num_labels} disagrees with id2label, which has {len(id2label)} entries: "
                    "pass one of them, or make them agree."
                )
            self.id2label = id2label
        else:
            self.num_labels = 2 if num_labels is None else num_labels
        if label2id is not None:
            self._keep_label2id_if_consistent(label2id)

    def _keep_label2id_if_consistent(self, label2id: dict) -> None:
        """A given label2id is kept as given when it inverts id2label (with duplicate names either index will
        do); otherwise it is stale, e.g. written by a tool that changed id2label alone, and is rebuilt."""
        as_ints = {str(k): int(v) for k, v in label2id.items()}
        if set(as_ints) == set(self.id2label.values()) and all(self.id2label.get(i) == n for n, i in as_ints.items()):
            self.label2id = dict(label2id)
        else:
            logger.warning("label2id in the config disagrees with id2label; rebuilt it from id2label.")

    @property
    def id2label(self) -> dict[int, str]:
        return self._id2label

    @id2label.setter
    def id2label(self, value: dict) -> None:
        """Assigning id2label also sets label2id, so the two never disagree."""
        self._id2label = {int(k): v for k, v in value.items()}
        self.label2id = {name: i for i, name in self._id2label.items()}

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"num_labels must be an int ≥ 0 (0 gives a model without a head), got {value!r}.")
        if getattr(self, "_id2label", None) is None or len(self.id2label) != value:
            self.id2label = {i: f"LABEL_{i}" for i in range(value)}

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict

    # -- backbone outputs ---------------------------------------------------------------------
    @property
    def out_features(self) -> list[str]:
        return self._out_features

    @out_features.setter
    def out_features(self, value: list[str] | None) -> None:
        self._out_features, self._out_indices = align_backbone_outputs(value, None, self.stage_names)

    @property
    def out_indices(self) -> list[int]:
        return self._out_indices

    @out_indices.setter
    def out_indices(self, value: list[int] | None) -> None:
        self._out_features, self._out_indices = align_backbone_outputs(None, value, self.stage_names)

    # -- generic config surface ---------------------------------------------------------------
    @property
    def torch_dtype(self):
        """transformers 4's name for `dtype`."""
        return self.dtype

    @torch_dtype.setter
    def torch_dtype(self, value) -> None:
        self.dtype = as_dtype(value)

    @property
    def name_or_path(self) -> str:
        return getattr(self, "_name_or_path", "")

    @name_or_path.setter
    def name_or_path(self, value: str | os.PathLike) -> None:
        self._name_or_path = str(value)

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> BitConfig:
        """The config that holds the "text" settings: for a single-model config, itself (as in transformers)."""
        return self

    def __iter__(self):
        """The attribute names, as iterating a transformers config yields them."""
        yield from self.to_dict()

    # -- serialisation ------------------------------------------------------------------------
    def to_diff_dict(self) -> dict[str, Any]:
        """Only the values that differ from a default BitConfig (model_type always), as transformers writes them."""
        default = type(self)().to_dict()
        return {key: value for key, value in self.to_dict().items() if key == "model_type" or default.get(key) != value}

    def to_dict(self) -> dict[str, Any]:
        output = {key: copy.deepcopy(value) for key, value in self.__dict__.items() if not key.startswith("_")}
        output["out_features"] = list(self._out_features)
        output["out_indices"] = list(self._out_indices)
        output["model_type"] = self.model_type
        output["id2label"] = {str(k): v for k, v in self.id2label.items()}
        output["dtype"] = str(self.dtype).removeprefix("torch.") if self.dtype is not None else None
        return dict(sorted(output.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        atomic_write_text(Path(path), self.to_json_string())

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **overrides: Any) -> BitConfig:
        overrides, auto_call = split_auto_call(overrides, set(config_dict) | set(inspect.signature(cls).parameters))
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(
                f"This config describes a {model_type!r} model, not BiT ('bit'): point bigtransfer at a BiT checkpoint."
            )
        merged = {**config_dict, **overrides}
        # An override replaces what the file derived from the old value (as attribute assignment would).
        if "num_labels" in overrides and "id2label" not in overrides:
            merged.pop("id2label", None)
        if {"num_labels", "id2label"} & set(overrides) and "label2id" not in overrides:
            merged.pop("label2id", None)
        for given, derived in (("out_features", "out_indices"), ("out_indices", "out_features")):
            if given in overrides and derived not in overrides:
                merged.pop(derived, None)
        if "depths" in overrides and not {"out_features", "out_indices"} & set(overrides):
            merged.pop("out_features", None)
            merged.pop("out_indices", None)
        return auto_call.result(cls(**merged))

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> BitConfig:
        return cls.from_dict(read_json(Path(path)))

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise NotADirectoryError(f"{save_directory} is a file: save_pretrained needs a directory path.")
        save_directory.mkdir(parents=True, exist_ok=True)
        self.to_json_file(save_directory / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> BitConfig:
        """The config of anything the models' `from_pretrained` takes, found by the same rule (a directory's or
        Hub repo's config.json, a JSON file, a bundled or zoo name, an .npz or timm weights); keywords other than
        loading options override its values."""
        options = split_loading_options(kwargs)
        return cls.from_dict(checkpoint_settings(name_or_path, options.subfolder, options.hub), **options.values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BitConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"
