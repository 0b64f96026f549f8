"""One loading policy for config, model and processor: one resolver (`locate`) for every name or path, one split
of the loading keywords, and nothing of a loading option saved."""

import json

import huggingface_hub
import pytest
import torch

from bigtransfer import BitConfig, BitForImageClassification, BitImageProcessor, BitImageProcessorFast
from bigtransfer.checkpoints import hub, sources
from bigtransfer.checkpoints.loading_options import HUB_OPTIONS, IGNORED_OPTIONS
from bigtransfer.processing import record
from helpers import TINY, write_bit_npz


@pytest.fixture
def no_hub(monkeypatch):
    """Every way to the Hub raises: a load that needs none must not try."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"the Hub was asked for {args}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    for module in (hub, sources, record):
        monkeypatch.setattr(module, "hub_download", refuse)


@pytest.fixture
def cached_zoo_model(tmp_path, monkeypatch):
    """A zoo name whose file is already in the cache (a tiny stand-in, made here), offline."""
    monkeypatch.setenv("BIGTRANSFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BIGTRANSFER_OFFLINE", "1")
    (tmp_path / "cache").mkdir()
    write_bit_npz(tmp_path / "cache" / "BiT-M-R50x1-CIFAR10.npz", depths=[1, 1, 1, 1], num_classes=10)
    return "BiT-M-R50x1-CIFAR10"


@pytest.mark.parametrize("name", ["bit-tiny-fashion5", "zoo"])
def test_config_model_and_processor_resolve_a_bundled_or_zoo_name_without_the_hub(no_hub, cached_zoo_model, name):
    name = cached_zoo_model if name == "zoo" else name
    config = BitConfig.from_pretrained(name)
    model = BitForImageClassification.from_pretrained(name)
    shape = ("depths", "hidden_sizes", "width_factor", "num_groups", "id2label")
    assert [getattr(config, key) for key in shape] == [getattr(model.config, key) for key in shape]
    assert BitForImageClassification.from_pretrained(name, config=name).config.num_labels == config.num_labels
    assert BitImageProcessor.from_pretrained(name).to_dict() == BitImageProcessorFast.from_pretrained(name).to_dict()


def test_a_misspelt_bundled_name_passed_to_the_config_gets_a_did_you_mean(no_hub):
    with pytest.raises(ValueError, match="did you mean bit-tiny-fashion5"):
        BitConfig.from_pretrained("bit-tiny-fashion")


def test_the_config_of_an_npz_file_is_the_models(tmp_path):
    path = write_bit_npz(tmp_path / "model.npz", depths=[1, 1, 1, 1], num_classes=7)
    assert BitConfig.from_pretrained(path).num_labels == 7
    assert BitConfig.from_pretrained(path).depths == BitForImageClassification.from_pretrained(path).config.depths


OPTION_VALUES = {"revision": "main", "local_files_only": True, "token": "hf_not_a_token", "force_download": True}
LOADERS = {  # what from_pretrained builds → (class, what save_pretrained writes it as)
    "config": (BitConfig, "config.json"),
    "model": (BitForImageClassification, "config.json"),
    "processor": (BitImageProcessor, "preprocessor_config.json"),
    "fast processor": (BitImageProcessorFast, "preprocessor_config.json"),
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("option", [*HUB_OPTIONS, *IGNORED_OPTIONS])
def test_a_loading_option_is_never_saved(tmp_path, loader, option):
    cls, saved_as = LOADERS[loader]
    value = str(tmp_path / "hf-cache") if option == "cache_dir" else OPTION_VALUES.get(option, True)
    loaded = cls.from_pretrained("bit-tiny-fashion5", **{option: value})
    loaded.save_pretrained(tmp_path / "saved")
    assert option not in json.loads((tmp_path / "saved" / saved_as).read_text())


def test_loading_options_an_earlier_release_saved_are_dropped_on_load(tmp_path):
    model = BitForImageClassification(BitConfig(**TINY))
    model.save_pretrained(tmp_path)
    BitImageProcessor().save_pretrained(tmp_path)
    for name in ("config.json", "preprocessor_config.json"):
        settings = json.loads((tmp_path / name).read_text())
        (tmp_path / name).write_text(json.dumps(settings | {"force_download": True, "trust_remote_code": True}))
    BitForImageClassification.from_pretrained(tmp_path).save_pretrained(tmp_path / "again")
    BitImageProcessor.from_pretrained(tmp_path).save_pretrained(tmp_path / "again")
    for name in ("config.json", "preprocessor_config.json"):
        assert not {"force_download", "trust_remote_code"} & set(json.loads((tmp_path / "again" / name).read_text()))


def test_the_model_and_its_from_config_accept_every_ignored_option(tmp_path):
    config = BitConfig(**TINY)
    BitForImageClassification(config).save_pretrained(tmp_path)
    options = dict.fromkeys(IGNORED_OPTIONS, True)
    loaded = BitForImageClassification.from_pretrained(tmp_path, config=BitConfig.from_pretrained(tmp_path), **options)
    assert isinstance(BitForImageClassification._from_config(config, **options), BitForImageClassification)
    assert torch.equal(
        loaded.classifier[1].weight, BitForImageClassification.from_pretrained(tmp_path).classifier[1].weight
    )
