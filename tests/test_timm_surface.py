"""timm's model surface on our models, checked against timm itself: forward_features / forward_head on a timm
ResNetV2 loaded through the timm-weights conversion, the classifier API, pretrained_cfg (through timm's own data
config and transforms) and feature_info."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from bigtransfer import BitBackbone, BitConfig, BitForImageClassification, BitImageProcessor, BitModel
from bigtransfer.processing.record import PROCESSOR_DEFAULTS, timm_pretrained_cfg, timm_processor_settings
from helpers import TINY, import_timm, max_abs_diff, randomize_norms
from test_modeling import ours_from_timm, timm_resnetv2

TIMM_NAME = "resnetv2_50x1_bit.goog_in21k_ft_in1k"  # BiT-M R50x1 → ILSVRC-2012: 448 px, no crop, bilinear


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    """timm's R50x1 with random weights (norms away from identity), and ours loaded from its saved state dict."""
    timm = import_timm()
    torch.manual_seed(0)
    theirs = randomize_norms(timm.create_model(TIMM_NAME, pretrained=False)).eval()
    path = tmp_path_factory.mktemp("timm") / "model.safetensors"
    save_file({key: value.contiguous() for key, value in theirs.state_dict().items()}, path)
    return theirs, BitForImageClassification.from_pretrained(path)


@torch.no_grad()
def test_forward_features_and_forward_head_equal_timms(r50):
    theirs, ours = r50
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    features, their_features = ours.forward_features(x), theirs.forward_features(x)
    assert features.shape == (1, 2048, 2, 2) and max_abs_diff(features, their_features) < 1e-4
    pooled = ours.forward_head(features, pre_logits=True)
    assert (
        pooled.shape == (1, 2048) and max_abs_diff(pooled, theirs.forward_head(their_features, pre_logits=True)) < 1e-4
    )
    assert max_abs_diff(ours.forward_head(features), theirs.forward_head(their_features)) < 1e-4


@torch.no_grad()
def test_forward_head_of_forward_features_is_forward():
    model = BitForImageClassification(BitConfig(**TINY)).eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model.forward_head(model.forward_features(x)), model(x).logits)
    assert torch.equal(model.bit.forward_features(x), model.bit(x).last_hidden_state)


def test_num_classes_num_features_and_classifier_are_timms(r50):
    theirs, ours = r50
    assert (ours.num_classes, ours.num_features) == (theirs.num_classes, theirs.num_features) == (1000, 2048)
    assert ours.get_classifier() is ours.classifier[1] and ours.get_classifier().weight.shape == (1000, 2048)
    assert (BitModel(BitConfig(**TINY)).num_classes, BitModel(BitConfig(**TINY)).num_features) == (0, 64)


@torch.no_grad()
def test_reset_classifier_to_zero_classes_returns_the_pooled_features_as_timm_does():
    theirs = timm_resnetv2()
    ours = ours_from_timm(theirs)
    theirs.reset_classifier(0)
    ours.reset_classifier(0)
    x = torch.randn(2, 3, 64, 64)
    assert ours.num_classes == 0 and ours.config.id2label == {} and isinstance(ours.get_classifier(), torch.nn.Identity)
    assert max_abs_diff(ours(x).logits, theirs(x)) < 1e-5


def test_reset_classifier_gives_a_zero_head_with_generic_labels_that_saves_and_loads(tmp_path):
    model = BitForImageClassification.from_pretrained("bit-tiny-fashion5")
    model.reset_classifier(7)
    assert model.num_classes == model.config.num_labels == 7 and model.get_classifier().weight.shape == (7, 512)
    assert model.config.id2label == {i: f"LABEL_{i}" for i in range(7)} and model.config.label2id["LABEL_6"] == 6
    assert torch.equal(model(torch.randn(2, 3, 32, 32)).logits, torch.zeros(2, 7))  # BiT's zero head
    model.save_pretrained(tmp_path)
    loaded = BitForImageClassification.from_pretrained(tmp_path)
    assert loaded.num_classes == 7 and loaded.config.id2label[6] == "LABEL_6"
    model.reset_classifier(0)
    model.save_pretrained(tmp_path / "headless")
    assert BitForImageClassification.from_pretrained(tmp_path / "headless")(torch.zeros(1, 3, 32, 32)).logits.shape == (
        1, 512)  # fmt: skip


def test_reset_classifier_refuses_a_pooling_bit_does_not_have():
    with pytest.raises(ValueError, match="average-pool; pass None or 'avg'"):
        BitForImageClassification(BitConfig(**TINY)).reset_classifier(3, global_pool="max")


# -- pretrained_cfg: what timm's data config and transforms read ------------------------------------------------------


def test_pretrained_cfg_of_a_timm_checkpoint_gives_timms_data_config(r50):
    theirs, ours = r50
    timm = import_timm()
    assert timm.data.resolve_model_data_config(ours) == timm.data.resolve_model_data_config(theirs)
    assert ours.pretrained_cfg["num_classes"] == 1000 and ours.pretrained_cfg["classifier"] == "classifier.1"


def test_pretrained_cfg_of_a_bundled_model_is_its_processors():
    cfg = BitForImageClassification.from_pretrained("bit-tiny-fashion5").pretrained_cfg
    assert cfg == {
        "input_size": (3, 32, 32), "crop_pct": 1.0, "crop_mode": "squash", "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "num_classes": 5, "first_conv": "bit.embedder.convolution",
        "classifier": "classifier.1",
    }  # fmt: skip
    assert BitBackbone.from_pretrained("bit-tiny-fashion5").pretrained_cfg["num_classes"] == 0


def test_a_model_without_recorded_preprocessing_gets_timms_bit_defaults():
    cfg = BitModel(BitConfig(**TINY)).pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bilinear"
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5) and cfg["first_conv"] == "embedder.convolution"


@pytest.mark.parametrize(
    ("model", "processor", "size"),
    [
        (lambda: BitForImageClassification.from_pretrained("bit-tiny-fashion5"),
         lambda: BitImageProcessor.from_pretrained("bit-tiny-fashion5"), (61, 45)),
        # resize the short side to 256, center-crop 224 (448×384: an even margin, where torchvision's rounding agrees)
        (lambda: BitModel(BitConfig(**TINY)), lambda: BitImageProcessor(**timm_processor_settings({})), (448, 384)),
    ],
)  # fmt: skip
def test_timms_transform_from_pretrained_cfg_equals_our_processor(model, processor, size):
    timm = import_timm()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model()))
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    ours = processor()(image, return_tensors="pt").pixel_values[0]
    assert max_abs_diff(transform(image), ours) < 1e-5


@pytest.mark.parametrize(("crop", "resize"), [(224, 256), (160, 183), (384, 384), (480, 512), (128, 160)])
def test_crop_pct_gives_timm_back_the_resize_edge(crop, resize):
    import math

    settings = {"size": {"shortest_edge": resize}, "crop_size": crop}
    assert math.floor(crop / timm_pretrained_cfg(settings)["crop_pct"]) == resize


def test_a_settings_file_without_a_key_means_the_processors_default():
    processor = BitImageProcessor()
    assert timm_pretrained_cfg({}) == timm_pretrained_cfg(processor.to_dict())
    assert set(PROCESSOR_DEFAULTS) <= set(processor.to_dict())


# -- feature_info --------------------------------------------------------------------------------------------------


def test_feature_info_of_the_stages_matches_timms(r50):
    theirs, ours = r50
    assert ours.feature_info[1:] == [
        {**info, "module": f"bit.encoder.stages.{index}"} for index, info in enumerate(theirs.feature_info[1:])
    ]
    assert ours.feature_info[0]["reduction"] == 4  # after the stem's max-pool; timm names its conv, at stride 2


@pytest.mark.parametrize("output_stride", [32, 8])
@torch.no_grad()
def test_feature_info_describes_the_backbones_feature_maps(output_stride):
    config = BitConfig(**TINY, output_stride=output_stride, out_features=["stem", "stage2", "stage3", "stage4"])
    backbone = BitBackbone(config).eval()
    captured = {}
    modules = dict(backbone.named_modules())
    for name in backbone.feature_info.module_name():
        modules[name].register_forward_hook(lambda module, args, output, name=name: captured.update({name: output}))
    maps = backbone(torch.randn(1, 3, 64, 64)).feature_maps
    info = backbone.feature_info
    assert len(info) == len(maps) and info.channels() == [m.shape[1] for m in maps] == backbone.channels
    assert info.reduction() == [64 // m.shape[-1] for m in maps]
    assert all(torch.equal(captured[name], m) for name, m in zip(info.module_name(), maps))
