"""The generic surface transformers code (Trainer, PEFT, accelerate, Auto classes, its test mixins) reads from any
config, model and image processor — checked against transformers' own BiT classes where it has them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file

from bigtransfer import (
    BitBackbone,
    BitConfig,
    BitForImageClassification,
    BitImageProcessor,
    BitImageProcessorFast,
    BitModel,
)
from bigtransfer.checkpoints.weights import CheckpointMismatchError
from bigtransfer.processing.exact import BitImageProcessorKwargs
from bigtransfer.processing.fast import BitImageProcessorFastKwargs
from helpers import TINY

ARGS = {key: value for key, value in TINY.items() if key != "num_labels"}


# -- config ---------------------------------------------------------------------------------------------------
def test_config_answers_what_generic_code_asks_as_transformers_does():
    ours, theirs = BitConfig(**ARGS), transformers.BitConfig(**ARGS)
    for name in ("is_encoder_decoder", "output_attentions", "sub_configs", "base_model_tp_plan"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.get_text_config() is ours and ours.get_text_config(decoder=True) is ours
    assert set(ours) == set(ours.to_dict())  # iterating yields the attribute names


def test_diff_dict_holds_only_what_differs_from_the_defaults():
    diff = BitConfig(**ARGS, drop_path_rate=0.1).to_diff_dict()
    assert diff["drop_path_rate"] == 0.1 and diff["model_type"] == "bit" and diff["depths"] == [1, 1, 2, 1]
    assert "num_channels" not in diff and "layer_type" not in diff  # defaults
    assert BitConfig(**diff) == BitConfig(**ARGS, drop_path_rate=0.1)  # what it holds rebuilds the config
    assert BitConfig().to_diff_dict() == {"model_type": "bit"}


def test_dtype_is_a_torch_dtype_in_memory_and_a_name_on_disk(tmp_path):
    config = BitConfig(**ARGS, dtype="float16")
    assert config.dtype is torch.float16 and config.to_dict()["dtype"] == "float16"
    assert BitConfig(torch_dtype="bfloat16").dtype is torch.bfloat16  # transformers 4's key is read
    assert BitConfig(torch_dtype="torch.float16").dtype is torch.float16
    with pytest.raises(ValueError, match="Unknown dtype 'float17': use 'float32'"):
        BitConfig(dtype="float17")
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "float16"
    assert transformers.BitConfig.from_pretrained(tmp_path).dtype == torch.float16


def test_attention_implementation_is_accepted_but_never_saved():
    config = BitConfig(**ARGS, attn_implementation="eager")
    assert config._attn_implementation == "eager"
    assert "attn_implementation" not in config.to_dict() and "_attn_implementation" not in config.to_dict()


def test_a_consistent_label2id_is_kept_as_given():
    assert BitConfig(id2label={0: "cat"}, label2id={"cat": "0"}).label2id == {"cat": "0"}  # as transformers keeps it
    assert BitConfig(id2label={0: "cat"}, label2id={"dog": 0}).label2id == {"cat": 0}  # stale: rebuilt


# -- models ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [BitModel, BitForImageClassification, BitBackbone])
def test_model_class_answers_as_transformers_bit(cls):
    theirs = getattr(transformers, cls.__name__)
    ours_model, their_model = cls(BitConfig(**TINY)), theirs(transformers.BitConfig(**TINY))
    assert cls.can_generate() is theirs.can_generate() is False
    assert ours_model.get_output_embeddings() is their_model.get_output_embeddings() is None
    with pytest.raises(NotImplementedError):
        ours_model.get_input_embeddings()
    assert set(ours_model._no_split_modules) == set(their_model._no_split_modules)
    assert not ours_model._keep_in_fp32_modules and not ours_model._keep_in_fp32_modules_strict
    assert not ours_model._keys_to_ignore_on_load_missing and not ours_model._tied_weights_keys
    assert (ours_model.base_model is ours_model) == (their_model.base_model is their_model)
    assert type(ours_model.base_model).__name__ == type(their_model.base_model).__name__


def test_backbone_type_names_the_transformers_kind():
    assert BitBackbone(BitConfig(**TINY)).backbone_type == "transformers"


def test_from_config_builds_in_the_requested_dtype():
    assert BitForImageClassification._from_config(BitConfig(**TINY), dtype=torch.bfloat16).dtype is torch.bfloat16
    assert BitForImageClassification._from_config(BitConfig(**TINY, dtype="float16")).dtype is torch.float16
    assert BitForImageClassification._from_config(BitConfig(**TINY)).dtype is torch.float32
    model = BitForImageClassification._from_config(BitConfig(**TINY), torch_dtype="bfloat16")
    assert model.config.dtype is model.config.torch_dtype is torch.bfloat16  # the config says what the model holds


def test_a_loaded_models_config_says_its_dtype(tmp_path):
    BitForImageClassification(BitConfig(**TINY)).to(torch.float16).save_pretrained(tmp_path)
    assert BitForImageClassification.from_pretrained(tmp_path).config.dtype is torch.float32  # float32 unless asked
    assert BitForImageClassification.from_pretrained(tmp_path, dtype="auto").config.dtype is torch.float16


def test_from_pretrained_refuses_a_meta_device_context(tmp_path):
    BitModel(BitConfig(**TINY)).save_pretrained(tmp_path)
    with torch.device("meta"), pytest.raises(RuntimeError, match="meta device context manager"):
        BitModel.from_pretrained(tmp_path)


def test_wrong_weights_raise_unless_the_caller_asks_for_the_report(tmp_path):
    """Strict by default (a half-random model would be silently wrong); with output_loading_info=True the keys
    come back and the load goes ahead, as in transformers."""
    model = BitForImageClassification(BitConfig(**TINY))
    model.save_pretrained(tmp_path)
    save_file({"tensor": torch.tensor([1, 2])}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="does not match .* output_loading_info=True loads it anyway"):
        BitForImageClassification.from_pretrained(tmp_path)
    loaded, info = BitForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set(loaded.state_dict()) and info["unexpected_keys"] == {"tensor"}


def test_size_mismatch_is_both_a_value_error_and_transformers_runtime_error(tmp_path):
    BitForImageClassification(BitConfig(**TINY)).save_pretrained(tmp_path)
    for expected in (ValueError, RuntimeError):
        with pytest.raises(expected, match="ignore_mismatched_sizes=True"):
            BitForImageClassification.from_pretrained(tmp_path, num_labels=7)
    assert issubclass(CheckpointMismatchError, ValueError) and issubclass(CheckpointMismatchError, RuntimeError)


def test_checkpointing_under_transformers_names_and_flags():
    model = BitForImageClassification(BitConfig(**TINY))
    stages = list(model.bit.encoder.stages)
    assert not model.is_gradient_checkpointing and not any(stage.gradient_checkpointing for stage in stages)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    assert model.is_gradient_checkpointing and all(stage.gradient_checkpointing for stage in stages)
    model.gradient_checkpointing_disable()
    assert not any(stage.gradient_checkpointing for stage in stages)
    # an older config's flag turns it on at construction, as transformers' post_init does
    assert BitForImageClassification(BitConfig(**TINY, gradient_checkpointing=True)).is_activation_checkpointing


def test_input_require_grads_lets_reentrant_checkpointing_train_behind_a_frozen_stem():
    """With the stem frozen, reentrant checkpointing sees inputs without grad and drops the gradients of the
    checkpointed blocks; `enable_input_require_grads` (what PEFT calls) brings them back."""
    torch.manual_seed(0)
    model = BitForImageClassification(BitConfig(**TINY)).train()
    model.bit.embedder.requires_grad_(False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    block = model.bit.encoder.stages[0].layers[0].conv1.weight
    pixels, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    with pytest.warns(UserWarning, match="requires_grad"):
        model(pixels, labels=labels).loss.backward()
    assert block.grad is None
    model.enable_input_require_grads()
    model(pixels, labels=labels).loss.backward()
    assert block.grad is not None and block.grad.abs().sum() > 0
    model.disable_input_require_grads()
    assert not hasattr(model, "_require_grads_hook")


# -- image processors -----------------------------------------------------------------------------------------
def test_processors_declare_their_keyword_arguments():
    assert BitImageProcessor.valid_kwargs is BitImageProcessorKwargs
    assert BitImageProcessorFast.valid_kwargs is BitImageProcessorFastKwargs
    theirs = set(transformers.BitImageProcessorPil.valid_kwargs.__annotations__)
    ours = set(BitImageProcessorKwargs.__annotations__)
    assert ours <= theirs and theirs - ours == {"device", "disable_grouping", "image_seq_length"}
    assert {"device", "num_workers", "draft"} <= set(BitImageProcessorFastKwargs.__annotations__)


@pytest.mark.parametrize("cls", [BitImageProcessor, BitImageProcessorFast])
def test_processor_json_is_transformers_5s(cls, tmp_path):
    processor = cls(_from_auto=True, do_resize=None)
    written = processor.save_pretrained(tmp_path)
    assert written == [str(tmp_path / "preprocessor_config.json")]
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved == transformers.BitImageProcessorPil(do_resize=None).to_dict() | {
        "image_mean": list(processor.image_mean), "image_std": list(processor.image_std)
    }  # fmt: skip
    assert "_from_auto" not in saved and "do_pad" not in saved  # private keys and unset padding are not settings
    assert cls.from_json_file(tmp_path / "preprocessor_config.json").do_resize is None  # explicit None survives
    assert cls.do_resize is True and cls.crop_size == {"height": 224, "width": 224}  # class defaults, as declared


@pytest.mark.parametrize("cls", [BitImageProcessor, BitImageProcessorFast])
def test_call_options_given_at_construction_are_call_defaults(cls, tmp_path):
    image = np.zeros((30, 40, 3), np.uint8)
    processor = cls(return_tensors="pt", default_to_square=True, size=24, do_center_crop=False)
    theirs = transformers.BitImageProcessorPil(return_tensors="pt", default_to_square=True, size=24,
                                               do_center_crop=False)  # fmt: skip
    assert processor(image)["pixel_values"].shape == theirs(image)["pixel_values"].shape == (1, 3, 24, 24)
    assert processor(image, return_tensors="np")["pixel_values"].shape == (1, 3, 24, 24)  # the call's own wins
    processor.save_pretrained(tmp_path)
    assert "return_tensors" not in json.loads((tmp_path / "preprocessor_config.json").read_text())


def test_both_processors_pad_as_transformers_does():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((40, 30), (24, 50))]
    options = dict(do_center_crop=False, do_pad=True, size={"shortest_edge": 20})
    expected = transformers.BitImageProcessorPil(**options)(images, return_tensors="np")["pixel_values"]
    exact = BitImageProcessor(**options)(images, return_tensors="np")["pixel_values"]
    fast = BitImageProcessorFast(**options)(images, return_tensors="np")["pixel_values"]
    assert exact.shape == expected.shape == (2, 3, 26, 41)
    assert np.abs(exact - expected).max() < 1e-6 and np.abs(fast - expected).max() < 0.05
    saved = BitImageProcessor(do_pad=True, pad_size={"height": 30, "width": 60}).to_dict()
    assert saved["do_pad"] is True and saved["pad_size"] == {"height": 30, "width": 60}
