"""push_to_hub on models, configs and processors, checked at the huggingface_hub boundary (HfApi's
create_repo, upload_folder, file_exists and hf_hub_download stand in for the network): what arrives is what
from_pretrained reads, with a model card that never replaces the README of the repo's owner."""

import pytest
import torch
import transformers
import yaml
from huggingface_hub import HfApi
from safetensors import safe_open

from bigtransfer import BitConfig, BitForImageClassification, BitImageProcessorFast, BitModel
from bigtransfer.checkpoints.catalogue import BUNDLED_MODELS, bundled_model
from helpers import TINY


def test_a_pushed_model_config_and_processor_load_back_here_and_in_transformers(hub):
    remote, calls = hub
    torch.manual_seed(0)
    model = BitForImageClassification(BitConfig(**TINY, id2label={0: "cat", 1: "dog", 2: "cup"}))
    url = model.push_to_hub("tiny-bit", commit_message="first", private=True, token="hf_x", revision="dev")
    BitImageProcessorFast(crop_size=32).push_to_hub("me/tiny-bit", create_pr=True)
    assert url == "https://huggingface.co/me/tiny-bit/commit/0123abc"
    assert calls[0] == ("create_repo", "tiny-bit", {"private": True, "exist_ok": True, "token": "hf_x"})
    assert calls[1][2] == {"commit_message": "first", "commit_description": None, "revision": "dev", "create_pr": False}
    assert calls[3][2]["commit_message"] == "Upload BitImageProcessorFast" and calls[3][2]["create_pr"] is True
    assert {p.name for p in (remote / "me" / "tiny-bit").iterdir()} == {
        "config.json", "model.safetensors", "preprocessor_config.json", "README.md"
    }  # fmt: skip
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(pixels).logits
        ours = BitForImageClassification.from_pretrained(remote / "me" / "tiny-bit")
        theirs = transformers.BitForImageClassification.from_pretrained(remote / "me" / "tiny-bit").eval()
        assert torch.equal(ours(pixels).logits, expected) and torch.allclose(theirs(pixels).logits, expected)
    assert ours.config.label2id == {"cat": 0, "dog": 1, "cup": 2}
    assert BitImageProcessorFast.from_pretrained(remote / "me" / "tiny-bit").crop_size == {"height": 32, "width": 32}


def test_a_config_pushes_alone(hub):
    remote, calls = hub
    BitConfig(**TINY).push_to_hub("me/config-only")
    assert [p.name for p in (remote / "me" / "config-only").iterdir()] == ["config.json"]
    assert calls[-1][2]["commit_message"] == "Upload BitConfig"
    assert BitConfig.from_pretrained(remote / "me" / "config-only") == BitConfig(**TINY)


def test_an_unreachable_hub_says_how_to_upload_later(monkeypatch):
    def offline(self, *args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    with pytest.raises(OSError, match=r"Could not push to 'me/x'.*Name or service not known.*hf upload me/x DIR"):
        BitConfig(**TINY).push_to_hub("me/x")


def pushed_card(remote, repo_id) -> tuple[dict, str]:
    text = (remote / repo_id / "README.md").read_text()
    _, metadata, body = text.split("---\n", 2)
    return yaml.safe_load(metadata), body


def test_a_pushed_model_has_a_card_with_the_hubs_metadata(hub):
    remote, _ = hub
    BitForImageClassification(BitConfig(**TINY, id2label={0: "cat", 1: "dog", 2: "cup"})).push_to_hub("tiny-bit")
    metadata, body = pushed_card(remote, "me/tiny-bit")
    assert metadata == {"library_name": "bigtransfer", "pipeline_tag": "image-classification",
                        "tags": ["bit", "big-transfer", "image-classification"]}  # fmt: skip
    assert body.startswith("<!-- bigtransfer:model-card") and "# tiny-bit" in body and "| 2 | cup |" in body
    assert 'BitForImageClassification.from_pretrained("me/tiny-bit")' in body
    assert 'AutoModelForImageClassification.from_pretrained("me/tiny-bit")' in body
    BitModel(BitConfig(**TINY)).push_to_hub("me/features")
    assert pushed_card(remote, "me/features")[0]["pipeline_tag"] == "image-feature-extraction"


def test_a_bundled_model_is_pushed_with_its_license_and_resolution(hub):
    remote, _ = hub
    BitForImageClassification.from_pretrained("bit-tiny-fashion5").push_to_hub("me/fashion")
    metadata, body = pushed_card(remote, "me/fashion")
    assert metadata["license"] == "apache-2.0" and "| 4 | Coat |" in body and "resized to 32×32 px" in body


def test_the_readme_of_the_repos_owner_is_kept_and_ours_is_replaced(hub):
    remote, calls = hub
    (remote / "me" / "mine").mkdir(parents=True)
    (remote / "me" / "mine" / "README.md").write_text("# Our model\n\nHand-written.\n")
    model = BitForImageClassification(BitConfig(**TINY))
    model.push_to_hub("me/mine")
    assert (remote / "me" / "mine" / "README.md").read_text() == "# Our model\n\nHand-written.\n"
    assert (remote / "me" / "mine" / "model.safetensors").is_file() and calls[-1][0] == "upload_folder"
    model.push_to_hub("me/ours")
    model.reset_classifier(4)
    model.push_to_hub("me/ours")
    assert "| 3 | LABEL_3 |" in pushed_card(remote, "me/ours")[1]


@pytest.mark.parametrize("name", sorted(BUNDLED_MODELS))
def test_safetensors_files_say_they_hold_pytorch_tensors(tmp_path, name):
    """The header's {"format": "pt"}, which transformers' loader checks: in what we save and what we ship."""
    BitForImageClassification(BitConfig(**TINY)).save_pretrained(tmp_path)
    for path in (tmp_path / "model.safetensors", bundled_model(name) / "model.safetensors"):
        with safe_open(path, "pt") as weights:
            assert weights.metadata() == {"format": "pt"}
