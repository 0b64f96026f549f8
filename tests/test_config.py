"""BitConfig: transformers' arguments, defaults, validation and JSON form, plus the checks it lacks."""

import json

import pytest
import transformers

from bigtransfer import BitConfig, BitModel
from bigtransfer.checkpoints.sources import bundled_model
from helpers import TINY


def test_defaults_match_transformers():
    ours, theirs = BitConfig(), transformers.BitConfig()
    for key in [
        "num_channels", "embedding_size", "hidden_sizes", "depths", "layer_type", "hidden_act", "global_padding",
        "num_groups", "drop_path_rate", "embedding_dynamic_padding", "output_stride", "width_factor",
        "out_features", "out_indices", "stage_names", "num_labels", "id2label", "label2id", "problem_type",
    ]:  # fmt: skip
        assert getattr(ours, key) == getattr(theirs, key), key


def test_saved_keys_are_a_superset_of_transformers():
    ours = json.loads(BitConfig(num_labels=1000).to_json_string())
    theirs = json.loads(transformers.BitConfig(num_labels=1000).to_json_string())
    shared = {"depths", "hidden_sizes", "id2label", "label2id", "out_features", "out_indices", "stage_names",
              "model_type", "layer_type", "global_padding", "width_factor", "num_groups"}  # fmt: skip
    for key in shared:
        assert ours[key] == theirs[key], key


@pytest.mark.parametrize("padding, stored", [(None, None), ("same", "SAME"), ("Valid", "VALID")])
def test_global_padding_is_upper_cased(padding, stored):
    assert BitConfig(global_padding=padding).global_padding == stored


@pytest.mark.parametrize("padding", ["", "reflect", 3])
def test_unknown_padding_is_rejected(padding):
    with pytest.raises(ValueError, match="Padding strategy"):
        BitConfig(global_padding=padding)


def test_unknown_layer_type_is_rejected():
    with pytest.raises(ValueError, match="is not one of preactivation,bottleneck"):
        BitConfig(layer_type="basic")


@pytest.mark.parametrize("name, module", [("gelu", "GELU"), ("relu", "ReLU"), ("selu", "SELU"), ("gelu_new", "GELU")])
def test_the_documented_activations_build(name, module):
    model = BitModel(BitConfig(**TINY, hidden_act=name))
    assert type(model.norm.activation).__name__ == module


def test_unknown_activation_names_the_choices():
    with pytest.raises(ValueError, match="hidden_act='relux'.*relu"):
        BitConfig(hidden_act="relux")


def test_preactivation_needs_one_width_per_stage():
    with pytest.raises(ValueError, match="one output width per stage"):
        BitConfig(depths=[3, 4, 9])


def test_bottleneck_tolerates_extra_widths_like_the_hybrid_configs():
    config = BitConfig(layer_type="bottleneck", depths=[3, 4, 9])
    assert config.stage_names == ["stem", "stage1", "stage2", "stage3"]


def test_too_few_widths_are_rejected_for_any_layout():
    with pytest.raises(ValueError, match="hidden_sizes has 2 entries"):
        BitConfig(layer_type="bottleneck", depths=[1, 1, 1], hidden_sizes=[8, 16])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depths=[]), "depths"),
        (dict(depths=[3, 0], hidden_sizes=[8, 16]), "depths"),
        (dict(width_factor=0), "width_factor"),
        (dict(output_stride=2), "output_stride"),
        (dict(drop_path_rate=1.0), "drop_path_rate"),
        (dict(problem_type="ranking"), "problem_type"),
        (dict(num_labels=-1), "num_labels"),
        (dict(num_labels=3, id2label={0: "a"}), "disagrees"),
    ],
)
def test_invalid_values_are_rejected_with_a_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BitConfig(**kwargs)


def test_stage_names_follow_depths():
    assert BitConfig(**TINY).stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]


@pytest.mark.parametrize(
    "features, indices, expected",
    [
        (None, None, (["stage4"], [4])),
        (["stage1", "stage3"], None, (["stage1", "stage3"], [1, 3])),
        (None, [0, 2], (["stem", "stage2"], [0, 2])),
        (None, [-2, -1], (["stage3", "stage4"], [-2, -1])),
        (["stage2", "stage4"], [2, 4], (["stage2", "stage4"], [2, 4])),
    ],
)
def test_out_features_and_indices_align_like_transformers(features, indices, expected):
    ours = BitConfig(out_features=features, out_indices=indices)
    theirs = transformers.BitConfig(out_features=features, out_indices=indices)
    assert (ours.out_features, ours.out_indices) == expected
    assert (theirs.out_features, list(theirs.out_indices)) == expected


@pytest.mark.parametrize(
    "features, indices, message",
    [
        (["stage9"], None, "must be a subset of stage_names"),
        (["stage1", "stage1"], None, "must not contain any duplicates"),
        (["stage2", "stage1"], None, "same order as stage_names"),
        (None, [7], "must be valid indices"),
        (None, [1, 1], "must not contain any duplicates"),
        (None, [2, 1], "same order as stage_names"),
        (["stage1"], [1, 2], "same length"),
        (["stage1", "stage2"], [0, 2], "correspond to the same stages"),
    ],
)
def test_backbone_output_errors_match_transformers(features, indices, message):
    with pytest.raises(ValueError, match=message):
        BitConfig(out_features=features, out_indices=indices)
    with pytest.raises(ValueError, match=message):
        transformers.BitConfig(out_features=features, out_indices=indices)


@pytest.mark.parametrize(
    "features, indices, message",
    [("stage1", None, "out_features must be a list"), (None, (1, 2), "out_indices must be a list")],
)
def test_backbone_outputs_must_be_lists(features, indices, message):
    # transformers 5.x rejects these too, through its strict dataclass (a TypeError wrapper)
    with pytest.raises(ValueError, match=message):
        BitConfig(out_features=features, out_indices=indices)


def test_assigning_out_features_realigns_out_indices():
    config = BitConfig()
    config.out_features = ["stage1", "stage2"]
    assert config.out_indices == [1, 2]
    config.out_indices = [3]
    assert config.out_features == ["stage3"]
    config.out_features = None
    assert (config.out_features, config.out_indices) == (["stage4"], [4])


def test_num_labels_regenerates_label_maps():
    config = BitConfig(num_labels=5)
    assert config.id2label == {i: f"LABEL_{i}" for i in range(5)}
    config.num_labels = 3
    assert len(config.id2label) == len(config.label2id) == 3


def test_id2label_sets_num_labels_and_inverse_map():
    config = BitConfig(id2label={"0": "cat", "1": "dog"})
    assert config.num_labels == 2
    assert config.id2label == {0: "cat", 1: "dog"}
    assert config.label2id == {"cat": 0, "dog": 1}


def test_label2id_follows_id2label_however_it_is_changed():
    """transformers leaves label2id stale in all three cases (measured with 5.24); a config we write never is."""
    names = {0: "cat", 1: "dog", 2: "cup"}
    assert BitConfig.from_dict(BitConfig().to_dict(), id2label=names).label2id == {"cat": 0, "dog": 1, "cup": 2}
    config = BitConfig()
    config.id2label = names
    assert config.label2id == {"cat": 0, "dog": 1, "cup": 2}
    assert BitConfig.from_dict(config.to_dict(), num_labels=2).label2id == {"LABEL_0": 0, "LABEL_1": 1}


def test_a_stale_label2id_in_a_file_is_rebuilt_and_a_consistent_one_kept(tmp_path, caplog):
    stale = {**BitConfig(id2label={0: "cat", 1: "dog"}).to_dict(), "label2id": {"LABEL_0": 0, "LABEL_1": 1}}
    assert BitConfig.from_dict(stale).label2id == {"cat": 0, "dog": 1}
    assert "label2id in the config disagrees with id2label" in caplog.text
    duplicates = {0: "crane", 1: "dog", 2: "crane"}  # ImageNet-1k names two classes "crane"
    kept = BitConfig(id2label=duplicates, label2id={"crane": 0, "dog": 1}).label2id
    assert kept == {"crane": 0, "dog": 1}


@pytest.mark.parametrize("name, classes", [("bit-tiny-fashion5", 5), ("bit-tiny-glyphs", 39)])
def test_the_bundled_models_have_consistent_labels(name, classes):
    config = BitConfig.from_pretrained(bundled_model(name))
    assert config.label2id == {name: i for i, name in config.id2label.items()} and len(config.label2id) == classes


def test_json_round_trip_keeps_unknown_keys(tmp_path):
    config = BitConfig(**TINY, conv_layer="std_conv", architectures=["BitForImageClassification"])
    restored = BitConfig.from_dict(json.loads(config.to_json_string()))
    assert restored == config
    assert restored.conv_layer == "std_conv"
    config.save_pretrained(tmp_path / "sub")
    assert BitConfig.from_pretrained(tmp_path / "sub") == config


def test_from_pretrained_applies_overrides(tmp_path):
    BitConfig(**TINY).save_pretrained(tmp_path)
    config = BitConfig.from_pretrained(tmp_path, num_labels=10, drop_path_rate=0.1)
    assert config.num_labels == 10 and config.drop_path_rate == 0.1
    assert config.depths == TINY["depths"]


def test_stage_names_in_a_file_are_recomputed_not_trusted():
    config = BitConfig.from_dict({"depths": [1, 1], "hidden_sizes": [8, 16], "stage_names": ["a", "b"]})
    assert config.stage_names == ["stem", "stage1", "stage2"]


def test_transformers_reads_our_config_and_we_read_theirs(tmp_path):
    BitConfig(**TINY, out_features=["stage2", "stage3"]).save_pretrained(tmp_path / "ours")
    theirs = transformers.BitConfig.from_pretrained(tmp_path / "ours")
    assert theirs.hidden_sizes == TINY["hidden_sizes"] and theirs.num_labels == 3
    assert theirs.out_features == ["stage2", "stage3"]
    transformers.BitConfig(**TINY, layer_type="bottleneck", global_padding="same").save_pretrained(tmp_path / "hf")
    ours = BitConfig.from_pretrained(tmp_path / "hf")
    assert ours.layer_type == "bottleneck" and ours.global_padding == "SAME" and ours.num_labels == 3


def test_a_non_bit_config_is_refused():
    with pytest.raises(ValueError, match="'vit' model"):
        BitConfig.from_dict({"model_type": "vit"})


def test_missing_and_broken_config_files_say_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        BitConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        BitConfig.from_json_file(tmp_path / "config.json")
