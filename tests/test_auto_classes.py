"""transformers' Auto classes: left to transformers on import; after bigtransfer.register() they load BiT checkpoints
as our classes, and unregister() gives them back."""

import sys

import pytest
import torch
import transformers
from huggingface_hub import HfApi
from PIL import Image
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
)
from transformers.models.auto import configuration_auto, image_processing_auto, modeling_auto

import bigtransfer
from bigtransfer import (
    BitBackbone,
    BitConfig,
    BitForImageClassification,
    BitImageProcessor,
    BitImageProcessorFast,
    BitModel,
)
from helpers import TINY

MAPPINGS = (
    configuration_auto.CONFIG_MAPPING,
    modeling_auto.MODEL_MAPPING,
    modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING,
    modeling_auto.MODEL_FOR_BACKBONE_MAPPING,
    image_processing_auto.IMAGE_PROCESSOR_MAPPING,
)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    BitForImageClassification(BitConfig(**TINY, id2label={0: "a", 1: "b", 2: "c"})).save_pretrained(tmp_path)
    BitImageProcessor(crop_size=32).save_pretrained(tmp_path)
    return tmp_path


@pytest.fixture
def registered():
    bigtransfer.register()
    yield
    bigtransfer.unregister()


def ours_registered() -> bool:
    """Whether any Auto mapping holds one of our entries (registrations live in the mappings' `_extra_content`)."""
    config_mapping, *model_mappings = MAPPINGS
    return "bit" in config_mapping._extra_content or any(BitConfig in m._extra_content for m in model_mappings)


def test_importing_bigtransfer_leaves_the_auto_classes_to_transformers(saved):
    assert "bigtransfer" in sys.modules and not ours_registered()
    assert type(AutoConfig.from_pretrained(saved)) is transformers.BitConfig
    assert type(AutoModelForImageClassification.from_pretrained(saved)) is transformers.BitForImageClassification


@torch.no_grad()
def test_after_register_the_auto_classes_load_our_classes(saved, registered, monkeypatch):
    assert ours_registered()
    config = AutoConfig.from_pretrained(saved)
    assert type(config) is BitConfig and config.id2label == {0: "a", 1: "b", 2: "c"}
    assert "name_or_path" not in config.to_dict() and config._name_or_path == str(saved)
    assert type(AutoModel.from_pretrained(saved)) is BitModel
    model = AutoModelForImageClassification.from_pretrained(saved)
    x = torch.randn(1, 3, 32, 32)
    assert type(model) is BitForImageClassification
    assert torch.equal(model(x).logits, BitForImageClassification.from_pretrained(saved)(x).logits)
    # transformers 5's AutoBackbone.from_pretrained asks the Hub whether even a local folder is a repo
    monkeypatch.setattr(HfApi, "repo_exists", lambda self, repo_id, **options: True)
    assert type(AutoBackbone.from_pretrained(saved)) is BitBackbone
    processor = AutoImageProcessor.from_pretrained(saved, backend="pil")
    assert type(processor) is BitImageProcessor and processor.to_dict() == BitImageProcessor(crop_size=32).to_dict()


@pytest.mark.parametrize("private", ["_from_auto", "_from_pipeline", "_commit_hash", "_a_flag_of_a_later_release"])
def test_every_private_loading_keyword_of_transformers_is_accepted_and_dropped(saved, private):
    """transformers' loaders pass their bookkeeping as underscore-named keywords (5.25 began passing `_from_auto`
    to the model's from_pretrained): one rule takes them all, at the config, the model and the processor."""
    options = {private: True}
    model = BitForImageClassification.from_pretrained(saved, config=BitConfig.from_pretrained(saved), **options)
    assert private not in model.config.to_dict()
    assert type(BitModel._from_config(model.config, **options)) is BitModel
    assert private not in BitConfig.from_pretrained(saved, **options).to_dict()
    assert private not in BitImageProcessor.from_pretrained(saved, **options).to_dict()


def test_after_register_transformers_pipeline_runs_our_model_and_processor(saved, registered):
    classify = transformers.pipeline("image-classification", model=str(saved))
    assert type(classify.model) is BitForImageClassification
    assert isinstance(classify.image_processor, BitImageProcessor | BitImageProcessorFast)
    scores = classify(Image.new("RGB", (40, 40), (200, 30, 30)), top_k=3)
    assert sorted(row["label"] for row in scores) == ["a", "b", "c"]


@pytest.mark.parametrize("torchvision_installed", [True, False], ids=["torchvision", "no-torchvision"])
def test_auto_image_processor_picks_between_ours_as_it_picks_between_its_own(saved, monkeypatch, torchvision_installed):
    """transformers' default backend is torchvision where it is installed, else PIL; after register() the same
    choice gives our counterpart: our fast processor for its torchvision BitImageProcessor, our exact one for
    BitImageProcessorPil (ours need no torchvision, so an explicit backend is always honoured)."""
    monkeypatch.setattr(image_processing_auto, "is_torchvision_available", lambda: torchvision_installed)
    counterpart = {
        transformers.BitImageProcessor: BitImageProcessorFast,
        transformers.BitImageProcessorPil: BitImageProcessor,
    }
    for options in ({}, {"backend": "pil"}, {"backend": "torchvision"}):
        theirs = type(AutoImageProcessor.from_pretrained(saved, **options))
        bigtransfer.register()
        try:
            ours = type(AutoImageProcessor.from_pretrained(saved, **options))
        finally:
            bigtransfer.unregister()
        assert ours is counterpart[theirs], options
    bigtransfer.register()
    try:
        default = type(AutoImageProcessor.from_pretrained(saved))
    finally:
        bigtransfer.unregister()
    assert default is (BitImageProcessorFast if torchvision_installed else BitImageProcessor)


def test_auto_options_reach_our_config_and_model(saved, registered):
    model = AutoModelForImageClassification.from_pretrained(
        saved, num_labels=5, ignore_mismatched_sizes=True, dtype=torch.bfloat16
    )
    assert model.num_classes == 5 and model.dtype == model.config.dtype == torch.bfloat16
    config = AutoConfig.from_pretrained(saved)
    assert type(AutoModel.from_config(config)) is BitModel
    assert type(AutoBackbone.from_config(config)) is BitBackbone


def test_register_is_idempotent_and_unregister_gives_transformers_its_bit_back(saved):
    bigtransfer.register()
    bigtransfer.register()
    bigtransfer.unregister()
    bigtransfer.unregister()
    assert not ours_registered()
    assert type(AutoConfig.from_pretrained(saved)) is transformers.BitConfig
    assert type(AutoImageProcessor.from_pretrained(saved, backend="pil")) is transformers.BitImageProcessorPil


def test_register_without_transformers_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers.models.auto", None)
    with pytest.raises(ImportError, match="pip install transformers"):
        bigtransfer.register()
