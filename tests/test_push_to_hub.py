"""push_to_hub on models, configs and processors, checked at the huggingface_hub boundary (HfApi's
create_repo and upload_folder stand in for the network): what arrives is what from_pretrained reads."""

import shutil
from types import SimpleNamespace

import pytest
import torch
import transformers
from huggingface_hub import HfApi

from bigtransfer import BitConfig, BitForImageClassification, BitImageProcessorFast
from helpers import TINY


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hub that keeps each pushed folder under tmp_path/hub/<repo>, and the calls it received."""
    calls = []

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        calls.append(("create_repo", repo_id, {"private": private, "exist_ok": exist_ok, "token": self.token}))
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"me/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **options):
        calls.append(("upload_folder", repo_id, options))
        shutil.copytree(folder_path, tmp_path / "hub" / repo_id, dirs_exist_ok=True)
        return f"https://huggingface.co/{repo_id}/commit/0123abc"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return tmp_path / "hub", calls


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
        "config.json", "model.safetensors", "preprocessor_config.json"
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
