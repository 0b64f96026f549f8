"""Same weights in, same numbers out: every configuration transformers handles correctly, both directions."""

import pytest
import torch
import transformers

import bigtransfer
from helpers import HYBRID, TINY, max_abs_diff, randomize_norms

CLASSES = ["BitModel", "BitForImageClassification", "BitBackbone"]
TINY_VARIANTS = {
    "default": {},
    "gelu": dict(hidden_act="gelu"),
    "silu_groups4": dict(hidden_act="silu", num_groups=4),
    "bottleneck": dict(layer_type="bottleneck"),
    "same": dict(global_padding="same"),
    "stem_dynamic_pad": dict(embedding_dynamic_padding=True),
    "bottleneck_os8": dict(layer_type="bottleneck", output_stride=8),
    "bottleneck_same_os16": dict(layer_type="bottleneck", global_padding="same", output_stride=16),
    "drop_path": dict(drop_path_rate=0.3),
    "no_head": dict(num_labels=0),
    "one_label": dict(num_labels=1),
    "two_channels": dict(num_channels=2, out_features=["stem", "stage2", "stage4"]),
    "three_stages": dict(depths=[2, 1, 1], hidden_sizes=[8, 16, 24], out_indices=[-2, -1]),
}


def outputs_of(model, x):
    with torch.no_grad():
        return model(x, output_hidden_states=True).to_tuple()


def from_transformers(tmp_path, class_name, config_kwargs, seed=0):
    torch.manual_seed(seed)
    theirs = randomize_norms(getattr(transformers, class_name)(transformers.BitConfig(**config_kwargs)), seed).eval()
    theirs.save_pretrained(tmp_path)
    return theirs, getattr(bigtransfer, class_name).from_pretrained(tmp_path)


@pytest.mark.parametrize("class_name", CLASSES)
@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_tiny_configs_match_transformers(tmp_path, class_name, variant):
    kwargs = {**TINY, **TINY_VARIANTS[variant]}
    theirs, ours = from_transformers(tmp_path, class_name, kwargs)
    for size in (32, 45):
        x = torch.randn(2, kwargs.get("num_channels", 3), size, size)
        assert max_abs_diff(outputs_of(theirs, x), outputs_of(ours, x)) < 1e-5


@pytest.mark.parametrize("size", [224, 97, 130])
def test_bit50_layout_matches_transformers(tmp_path, size):
    theirs, ours = from_transformers(tmp_path, "BitForImageClassification", dict(num_labels=1000))
    assert sum(1 for _ in ours.state_dict()) == 153
    x = torch.randn(1, 3, size, size)
    assert max_abs_diff(outputs_of(theirs, x), outputs_of(ours, x)) < 1e-4


@pytest.mark.parametrize("size", [96, 101])
def test_hybrid_backbone_layout_matches_transformers(tmp_path, size):
    theirs, ours = from_transformers(tmp_path, "BitBackbone", HYBRID)
    assert len(ours.state_dict()) == 156
    assert ours.channels == theirs.channels == [256, 512, 1024]
    x = torch.randn(1, 3, size, size)
    assert max_abs_diff(outputs_of(theirs, x), outputs_of(ours, x)) < 1e-4


@pytest.mark.parametrize(
    "class_name, kwargs",
    [
        ("BitForImageClassification", dict(num_labels=1000)),
        ("BitForImageClassification", {**TINY, "layer_type": "bottleneck"}),
        ("BitBackbone", HYBRID),  # a hybrid *classifier* crashes in transformers (head sized 2048, features 1024)
    ],
)
def test_state_dict_keys_and_shapes_equal_transformers(class_name, kwargs):
    with torch.device("meta"):
        theirs = getattr(transformers, class_name)(transformers.BitConfig(**kwargs)).state_dict()
        ours = getattr(bigtransfer, class_name)(bigtransfer.BitConfig(**kwargs)).state_dict()
        assert {k: v.shape for k, v in theirs.items()} == {k: v.shape for k, v in ours.items()}


@pytest.mark.parametrize("class_name", CLASSES)
def test_our_checkpoints_load_in_transformers(tmp_path, class_name):
    torch.manual_seed(1)
    ours = randomize_norms(getattr(bigtransfer, class_name)(bigtransfer.BitConfig(**TINY))).eval()
    ours.save_pretrained(tmp_path)
    theirs = getattr(transformers, class_name).from_pretrained(tmp_path).eval()
    x = torch.randn(3, 3, 40, 40)
    assert max_abs_diff(outputs_of(theirs, x), outputs_of(ours, x)) < 1e-5


@pytest.mark.parametrize("return_dict", [False, True])
@pytest.mark.parametrize("with_labels", [False, True])
def test_tuple_outputs_have_transformers_order(tmp_path, return_dict, with_labels):
    theirs, ours = from_transformers(tmp_path, "BitForImageClassification", TINY)
    x, labels = torch.randn(2, 3, 32, 32), (torch.tensor([0, 2]) if with_labels else None)
    with torch.no_grad():
        a = theirs(x, labels=labels, output_hidden_states=True, return_dict=return_dict)
        b = ours(x, labels=labels, output_hidden_states=True, return_dict=return_dict)
    a, b = (a.to_tuple(), b.to_tuple()) if return_dict else (a, b)
    assert len(a) == len(b) and max_abs_diff(a, b) < 1e-5


@pytest.mark.parametrize(
    "num_labels, labels, problem_type",
    [
        (3, torch.tensor([0, 2, 1, 0]), "single_label_classification"),
        (3, torch.tensor([0, -100, 1, 2]), "single_label_classification"),
        (1, torch.tensor([0.5, -1.0, 2.0, 0.0]), "regression"),
        (2, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]), "multi_label_classification"),
    ],
)
def test_losses_match_transformers(tmp_path, num_labels, labels, problem_type):
    theirs, ours = from_transformers(tmp_path, "BitForImageClassification", {**TINY, "num_labels": num_labels})
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected, got = theirs(x, labels=labels).loss, ours(x, labels=labels).loss
    assert ours.config.problem_type == theirs.config.problem_type == problem_type
    assert torch.allclose(expected, got, atol=1e-6)


def test_explicit_regression_with_several_outputs_matches(tmp_path):
    kwargs = {**TINY, "num_labels": 2, "problem_type": "regression"}
    theirs, ours = from_transformers(tmp_path, "BitForImageClassification", kwargs)
    x, labels = torch.randn(3, 3, 32, 32), torch.randn(3, 2)
    with torch.no_grad():
        assert torch.allclose(theirs(x, labels=labels).loss, ours(x, labels=labels).loss, atol=1e-6)


def test_classifier_checkpoint_into_backbone_and_base_model(tmp_path):
    theirs, _ = from_transformers(tmp_path, "BitForImageClassification", TINY)
    x = torch.randn(1, 3, 32, 32)
    base = bigtransfer.BitModel.from_pretrained(tmp_path)
    backbone = bigtransfer.BitBackbone.from_pretrained(tmp_path, out_features=["stage1", "stage4"])
    with torch.no_grad():
        reference = theirs.bit(x, output_hidden_states=True)
        assert max_abs_diff(base(x).pooler_output, reference.pooler_output) < 1e-6
        maps = backbone(x).feature_maps
    assert max_abs_diff(maps, (reference.hidden_states[1], reference.hidden_states[4])) < 1e-6
