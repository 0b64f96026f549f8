"""One loading policy for config, model and processor: one resolver (`locate`) for every name or path, one split
of the loading keywords, and nothing of a loading option saved."""

import json

import huggingface_hub
import pytest
import torch

from bigtransfer import (
    BitBackbone,
    BitConfig,
    BitForImageClassification,
    BitImageProcessor,
    BitImageProcessorFast,
    BitModel,
)
from bigtransfer.checkpoints import hub, sources
from bigtransfer.checkpoints.loading_options import HUB_OPTIONS, IGNORED_OPTIONS
from bigtransfer.processing import record
from helpers import TINY, randomize_norms, write_bit_npz


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


# -- built on the meta device: only what the checkpoint lacks is initialised -----------------------------------------


@pytest.fixture
def saved_tiny(tmp_path):
    torch.manual_seed(1)
    model = randomize_norms(BitForImageClassification(BitConfig(**TINY)))
    model.save_pretrained(tmp_path)
    return tmp_path, model.state_dict()


def _count_initialised(monkeypatch) -> list:
    """The modules `_init_weights` is called on with real (not meta) tensors."""
    calls = []
    init = BitForImageClassification._init_weights

    def counting(self, module):
        if any(not tensor.is_meta for tensor in module.parameters(recurse=False)):
            calls.append(module)
        init(self, module)

    monkeypatch.setattr(BitForImageClassification, "_init_weights", counting)
    return calls


@pytest.mark.parametrize("cls", [BitForImageClassification, BitModel, BitBackbone])
def test_a_load_with_every_key_initialises_nothing_and_draws_no_random_number(saved_tiny, monkeypatch, cls):
    folder, weights = saved_tiny
    calls = _count_initialised(monkeypatch)
    before = torch.get_rng_state()
    loaded = cls.from_pretrained(folder).state_dict()
    assert torch.equal(torch.get_rng_state(), before) and calls == []
    assert all(torch.equal(value, weights.get(key, weights.get(f"bit.{key}"))) for key, value in loaded.items())


def test_a_new_head_is_initialised_as_a_freshly_built_one_and_the_body_loaded(saved_tiny, monkeypatch):
    folder, weights = saved_tiny
    calls = _count_initialised(monkeypatch)
    torch.manual_seed(0)
    model = BitForImageClassification.from_pretrained(folder, num_labels=5, ignore_mismatched_sizes=True)
    torch.manual_seed(0)
    fresh = torch.nn.Linear(model.num_features, 5)  # what today's full build gives a head, drawn from the seed
    assert torch.equal(model.classifier[1].weight, fresh.weight) and torch.equal(model.classifier[1].bias, fresh.bias)
    assert calls == [model.classifier[1]]
    body = {key: value for key, value in model.state_dict().items() if not key.startswith("classifier.")}
    assert all(torch.equal(value, weights[key]) for key, value in body.items())


def test_missing_body_weights_get_the_init_of_a_freshly_built_model(saved_tiny):
    _, weights = saved_tiny
    absent = ("bit.embedder.convolution.weight", "bit.norm.weight", "bit.norm.bias")
    partial = {key: value for key, value in weights.items() if key not in absent}
    config = BitConfig(**TINY)
    torch.manual_seed(0)
    model, info = BitForImageClassification.from_pretrained(
        None, config=config, state_dict=partial, output_loading_info=True
    )
    assert info["missing_keys"] == set(absent)
    torch.manual_seed(0)
    built = BitForImageClassification(config)  # the old load: a full build, then the checkpoint over it
    stem = model.bit.embedder.convolution.weight
    assert stem.shape == built.bit.embedder.convolution.weight.shape and stem.std() > 0
    assert torch.equal(model.bit.norm.weight, torch.ones_like(model.bit.norm.weight))
    assert torch.equal(model.bit.norm.bias, torch.zeros_like(model.bit.norm.bias))
    assert all(torch.equal(model.state_dict()[key], value) for key, value in partial.items())


class TiedWithABuffer(BitForImageClassification):
    """A model with a weight under two names and a non-persistent buffer, which `_init_weights` fills."""

    def __init__(self, config):
        super().__init__(config)
        self.twin = torch.nn.Linear(self.num_features, config.num_labels)
        self.twin.weight = self.classifier[1].weight
        self.register_buffer("scale", torch.full((1,), 2.0), persistent=False)

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            self.scale.fill_(2.0)


def test_tied_weights_stay_tied_and_non_persistent_buffers_are_initialised(saved_tiny):
    _, weights = saved_tiny
    model, info = TiedWithABuffer.from_pretrained(
        None, config=BitConfig(**TINY), state_dict=dict(weights), output_loading_info=True
    )
    assert info["missing_keys"] == {"twin.weight", "twin.bias"}
    assert model.twin.weight is model.classifier[1].weight
    assert torch.equal(model.twin.weight, weights["classifier.1.weight"])
    assert torch.equal(model.scale, torch.full((1,), 2.0))
