"""Where weights and preprocessing come from: one rule for both (an existing local path always wins over a name),
saving leaves nothing stale behind, and transformers' loading options and weights-only directories work."""

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from bigtransfer import (
    BitConfig,
    BitForImageClassification,
    BitImageProcessor,
    BitImageProcessorFast,
    BitModel,
    pipeline,
)
from bigtransfer.cli import main as cli
from helpers import TINY, import_timm, max_abs_diff, write_bit_npz


def tiny_classifier(seed=0, **overrides):
    torch.manual_seed(seed)
    return BitForImageClassification(BitConfig(**{**TINY, **overrides})).eval()


def logits(model, seed=0):
    with torch.no_grad():
        return model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))).logits


# -- 1: an existing local path always wins --------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["bit-pets/model", "BiT-M-R50x1", "bit-tiny-glyphs"])
def test_a_local_folder_named_like_a_catalogue_entry_loads_as_itself(tmp_path, monkeypatch, folder):
    monkeypatch.chdir(tmp_path)
    model = tiny_classifier()
    model.save_pretrained(folder)
    BitImageProcessor(size=48, crop_size=40).save_pretrained(folder)
    loaded = BitForImageClassification.from_pretrained(folder)
    assert max_abs_diff(logits(loaded), logits(model)) == 0
    assert BitImageProcessor.from_pretrained(folder).crop_size == {"height": 40, "width": 40}  # its own file


def test_predict_runs_a_local_folder_whose_name_starts_like_a_zoo_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tiny_classifier().save_pretrained("bit-pets/model")
    BitImageProcessor(size=32, crop_size=32).save_pretrained("bit-pets/model")
    from PIL import Image

    Image.new("RGB", (40, 40), "red").save("x.png")
    assert cli(["predict", "x.png", "--model", "bit-pets/model", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["file"].endswith("x.png")


@pytest.mark.parametrize("name", ["bit-tiny-glyph", "BiT-M-R50x2"])
def test_a_misspelt_name_that_is_no_path_gets_a_did_you_mean(name):
    with pytest.raises(ValueError, match=r"Unknown BiT model name .*did you mean"):
        BitForImageClassification.from_pretrained(name)
    with pytest.raises(ValueError, match=r"did you mean"):
        BitImageProcessor.from_pretrained(name)


# -- 2: saving removes weight files it did not just write ------------------------------------------------------------


def test_saving_as_pickle_after_safetensors_loads_the_new_weights(tmp_path):
    old, new = tiny_classifier(seed=0), tiny_classifier(seed=1)
    old.save_pretrained(tmp_path)
    written = new.save_pretrained(tmp_path, safe_serialization=False)
    assert not (tmp_path / "model.safetensors").exists() and (tmp_path / "pytorch_model.bin").exists()
    assert str(tmp_path / "pytorch_model.bin") in written
    assert max_abs_diff(logits(BitForImageClassification.from_pretrained(tmp_path)), logits(new)) == 0


def test_saving_over_a_sharded_checkpoint_removes_its_shards(tmp_path):
    old, new = tiny_classifier(seed=0), tiny_classifier(seed=1)
    state = old.state_dict()
    keys = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    for shard, names in shards.items():
        save_file({k: state[k].contiguous() for k in names}, tmp_path / shard)
    index = {"metadata": {}, "weight_map": {k: shard for shard, names in shards.items() for k in names}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    old.config.save_pretrained(tmp_path)
    new.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert max_abs_diff(logits(BitForImageClassification.from_pretrained(tmp_path)), logits(new)) == 0


# -- 3: preprocessing: what timm's files imply, and one rule when there is none --------------------------------------


@pytest.mark.parametrize(("head", "crop", "shortest"), [(1000, 448, 448), (21843, 224, 256)])
def test_convert_of_a_timm_weights_file_writes_timms_bit_preprocessing(tmp_path, head, crop, shortest):
    timm = import_timm()
    network = timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=head)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, tmp_path / "r50.safetensors")
    assert cli(["convert", str(tmp_path / "r50.safetensors"), str(tmp_path / "out")]) == 0
    written = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert written["image_mean"] == [0.5] * 3 and written["image_std"] == [0.5] * 3 and written["resample"] == 2
    assert written["crop_size"] == {"height": crop, "width": crop} and written["size"] == {"shortest_edge": shortest}


def test_a_model_without_preprocessing_is_refused_with_the_fix_everywhere(tmp_path, capsys):
    tiny_classifier().save_pretrained(tmp_path / "model")
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    for label in ("LABEL_0", "LABEL_1"):
        (tmp_path / "data" / label).mkdir(parents=True)
        Image.new("RGB", (40, 40)).save(tmp_path / "data" / label / "x.png")
    for command in (["predict", str(tmp_path / "x.png")], ["evaluate", "--data", str(tmp_path / "data")],
                    ["embed", str(tmp_path / "x.png"), "--out", str(tmp_path / "f.npy")]):  # fmt: skip
        assert cli([*command, "--model", str(tmp_path / "model")]) == 2
        assert "has no preprocessor_config.json" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="processor.save_pretrained"):
        pipeline("image-classification", model=str(tmp_path / "model"))
    assert not (tmp_path / "f.npy").exists()


# -- 4: the catalogue is read explicitly, with the weights' precedence ----------------------------------------------


def test_processors_read_the_catalogue_without_any_registration():
    from bigtransfer.processing import base

    assert not hasattr(base, "IMPLIED_SETTINGS")
    processor = BitImageProcessorFast.from_pretrained("BiT-M-R50x1-ILSVRC2012")
    assert processor.crop_size == {"height": 448, "width": 448} and processor.image_mean == [0.5, 0.5, 0.5]


def test_a_local_npz_uses_its_catalogue_entry_but_a_folder_of_that_name_its_own_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_bit_npz(tmp_path / "BiT-M-R50x1-CIFAR10.npz", depths=[1, 1, 1, 1], num_classes=10)
    assert BitImageProcessor.from_pretrained(tmp_path / "BiT-M-R50x1-CIFAR10.npz").size == {"height": 128, "width": 128}
    BitImageProcessor(size=64, crop_size=60).save_pretrained("BiT-M-R50x1-CIFAR10")
    assert BitImageProcessor.from_pretrained("BiT-M-R50x1-CIFAR10").crop_size == {"height": 60, "width": 60}


# -- 6: no shared mutable defaults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [BitImageProcessor, BitImageProcessorFast])
def test_changing_one_processors_mean_changes_no_other(cls):
    first = cls()
    first.image_mean[0] = -1.0
    first.image_std[1] = 9.0
    assert cls().image_mean[0] != -1.0 and cls().image_std[1] != 9.0
    given = [0.1, 0.2, 0.3]
    cls(image_mean=given).image_mean[0] = 5.0
    assert given == [0.1, 0.2, 0.3]


# -- 7: transformers' loading options are options, not config values ------------------------------------------------


def test_output_loading_info_returns_the_keys_and_is_not_stored(tmp_path):
    tiny_classifier().save_pretrained(tmp_path)
    model, info = BitForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(model, BitForImageClassification) and not hasattr(model.config, "output_loading_info")
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    _, info = BitForImageClassification.from_pretrained(tmp_path, num_labels=5, ignore_mismatched_sizes=True,
                                                         output_loading_info=True)  # fmt: skip
    assert {key for key, _, _ in info["mismatched_keys"]} == {"classifier.1.weight", "classifier.1.bias"}
    assert "output_loading_info" not in (tmp_path / "config.json").read_text()


def test_state_dict_replaces_the_checkpoints_weights_and_is_not_stored(tmp_path):
    saved, other = tiny_classifier(seed=0), tiny_classifier(seed=1)
    saved.save_pretrained(tmp_path)
    loaded = BitForImageClassification.from_pretrained(tmp_path, state_dict=other.state_dict())
    assert max_abs_diff(logits(loaded), logits(other)) == 0 and not hasattr(loaded.config, "state_dict")


def test_from_pretrained_none_with_config_and_state_dict(tmp_path):
    source = tiny_classifier(seed=2)
    loaded = BitForImageClassification.from_pretrained(None, config=source.config, state_dict=source.state_dict())
    assert max_abs_diff(logits(loaded), logits(source)) == 0
    with pytest.raises(ValueError, match="needs both config= and state_dict="):
        BitForImageClassification.from_pretrained(None, config=source.config)


def test_harmless_transformers_options_are_accepted_and_not_stored(tmp_path):
    tiny_classifier().save_pretrained(tmp_path)
    model = BitForImageClassification.from_pretrained(tmp_path, low_cpu_mem_usage=True, trust_remote_code=False,
                                                      use_safetensors=True, device_map="cpu", force_download=False)  # fmt: skip
    assert not any(hasattr(model.config, key) for key in ("low_cpu_mem_usage", "device_map", "force_download"))


# -- 8: weights without a config (transformers.Trainer.save_model) --------------------------------------------------


@pytest.mark.parametrize("cls", [BitForImageClassification, BitModel])
@pytest.mark.parametrize("layer_type", ["preactivation", "bottleneck"])
def test_a_weights_only_directory_loads_with_the_architecture_its_tensors_imply(tmp_path, caplog, cls, layer_type):
    settings = {"layer_type": layer_type, "global_padding": "same", "embedding_dynamic_padding": True}
    # GroupNorm weights do not record their group count: BiT's 32, which needs widths that are multiples of 32
    model = tiny_classifier(seed=3, num_groups=32, hidden_sizes=[128, 128, 256, 256], embedding_size=64,
                            **(settings if layer_type == "bottleneck" else {}))  # fmt: skip
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with caplog.at_level(logging.WARNING):
        loaded = cls.from_pretrained(tmp_path)
    assert "model.config.save_pretrained" in caplog.text
    assert loaded.config.depths == model.config.depths and loaded.config.hidden_sizes == [128, 128, 256, 256]
    assert loaded.config.layer_type == layer_type
    with torch.no_grad():
        pixels = torch.randn(1, 3, 32, 32)
        expected = model.bit(pixels).pooler_output
        got = (loaded.bit if cls is BitForImageClassification else loaded)(pixels).pooler_output
    assert max_abs_diff(got, expected) == 0
    if cls is BitForImageClassification:
        assert loaded.config.num_labels == model.config.num_labels
        assert loaded.config.id2label[0] == "LABEL_0"
