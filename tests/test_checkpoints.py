"""Checkpoint IO: formats, prefixes, head swaps, dtypes, atomic saves, bad files and the Hub (served locally)."""

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import transformers

import bigtransfer.checkpoints.weights as checkpoints
from bigtransfer import BitBackbone, BitConfig, BitForImageClassification, BitModel
from helpers import TINY, FakeHub, max_abs_diff, randomize_norms, run_python


@pytest.fixture
def saved(tmp_path):
    """A tiny classifier saved by us, with the model itself to compare against."""
    torch.manual_seed(0)
    model = randomize_norms(BitForImageClassification(BitConfig(**TINY))).eval()
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model", model


def logits(model, seed=0):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x).logits


def test_round_trip_writes_config_and_safetensors(saved):
    path, model = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["BitForImageClassification"] and config["dtype"] == "float32"
    assert torch.equal(logits(BitForImageClassification.from_pretrained(path)), logits(model))


def test_loaded_model_is_in_eval_mode(saved):
    assert not BitForImageClassification.from_pretrained(saved[0]).training


def test_pickle_weights_load_with_weights_only(tmp_path, saved):
    _, model = saved
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "pytorch_model.bin").exists()
    assert torch.equal(logits(BitForImageClassification.from_pretrained(tmp_path / "bin")), logits(model))


def test_sharded_transformers_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    theirs = randomize_norms(transformers.BitForImageClassification(transformers.BitConfig(**TINY))).eval()
    theirs.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = BitForImageClassification.from_pretrained(tmp_path)
    assert max_abs_diff(logits(ours), logits(theirs)) < 1e-6


def test_missing_shard_is_named(tmp_path):
    transformers.BitForImageClassification(transformers.BitConfig(**TINY)).save_pretrained(
        tmp_path, max_shard_size="20KB"
    )
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        BitForImageClassification.from_pretrained(tmp_path)


def test_base_model_checkpoint_gets_a_new_head_with_a_warning(tmp_path, saved, caplog):
    _, model = saved
    model.bit.save_pretrained(tmp_path / "base")
    with caplog.at_level(logging.WARNING):
        classifier = BitForImageClassification.from_pretrained(tmp_path / "base")
    assert "classifier.1.weight" in caplog.text
    assert torch.equal(classifier.bit.embedder.convolution.weight, model.bit.embedder.convolution.weight)


def test_new_head_needs_ignore_mismatched_sizes(saved):
    path, model = saved
    with pytest.raises(ValueError, match=r"classifier\.1\.weight.*ignore_mismatched_sizes=True"):
        BitForImageClassification.from_pretrained(path, num_labels=10)
    swapped = BitForImageClassification.from_pretrained(path, num_labels=10, ignore_mismatched_sizes=True)
    assert swapped.classifier[1].weight.shape == (10, 64) and swapped.config.num_labels == 10
    assert torch.equal(swapped.bit.norm.weight, model.bit.norm.weight)


def test_checkpoint_that_does_not_fit_the_config_names_the_keys(saved):
    with pytest.raises(ValueError, match=r"missing keys: bit\.encoder\.stages\.0\.layers\.1"):
        BitForImageClassification.from_pretrained(saved[0], depths=[2, 1, 2, 1])


def test_unexpected_keys_are_named(tmp_path, saved):
    _, model = saved
    model.save_pretrained(tmp_path / "deep")
    BitForImageClassification(BitConfig(**{**TINY, "depths": [2, 1, 2, 1]})).save_pretrained(tmp_path / "deeper")
    (tmp_path / "deeper" / "config.json").write_bytes((tmp_path / "deep" / "config.json").read_bytes())
    with pytest.raises(ValueError, match=r"unexpected keys: encoder\.stages\.0\.layers\.1"):
        BitModel.from_pretrained(tmp_path / "deeper")


@pytest.mark.parametrize("cls", [BitModel, BitBackbone])
def test_classifier_checkpoint_loads_into_headless_models_and_back(tmp_path, saved, cls):
    path, model = saved
    headless = cls.from_pretrained(path)
    assert torch.equal(headless.bit.norm.bias if cls is BitBackbone else headless.norm.bias, model.bit.norm.bias)
    headless.save_pretrained(tmp_path / "headless")
    BitForImageClassification.from_pretrained(tmp_path / "headless")  # a new head, same body


@pytest.mark.parametrize("dtype", [torch.bfloat16, "bfloat16", "float16"])
def test_torch_dtype_casts_the_model(saved, dtype):
    model = BitForImageClassification.from_pretrained(saved[0], torch_dtype=dtype)
    assert model.dtype == (getattr(torch, dtype) if isinstance(dtype, str) else dtype)


def test_auto_dtype_follows_the_checkpoint(tmp_path, saved):
    BitForImageClassification.from_pretrained(saved[0], torch_dtype="bfloat16").save_pretrained(tmp_path / "bf16")
    assert BitForImageClassification.from_pretrained(tmp_path / "bf16", torch_dtype="auto").dtype == torch.bfloat16
    assert BitForImageClassification.from_pretrained(tmp_path / "bf16").dtype == torch.float32
    with pytest.raises(ValueError, match="Unknown dtype"):
        BitForImageClassification.from_pretrained(saved[0], torch_dtype="float13")


def test_failed_save_leaves_the_previous_checkpoint_intact(saved, monkeypatch):
    path, _ = saved
    before = (path / "model.safetensors").read_bytes()

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        BitForImageClassification(BitConfig(**TINY)).save_pretrained(path)
    assert (path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]


def test_truncated_weights_are_reported(saved):
    path, _ = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated, corrupt"):
        BitForImageClassification.from_pretrained(path)


def test_directory_without_weights_lists_what_it_expected(tmp_path):
    BitConfig(**TINY).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        BitModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", ["./no-such-dir", "/tmp/does/not/exist", "a/b/c"])
def test_missing_local_paths_are_not_sent_to_the_hub(name):
    with pytest.raises(FileNotFoundError, match=f"{name} does not exist: check the path"):
        BitModel.from_pretrained(name)


def test_an_existing_file_that_is_not_a_checkpoint_is_named(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    for load in (BitModel.from_pretrained, BitConfig.from_pretrained):  # one resolver, one message
        with pytest.raises(ValueError, match="notes.txt is not a checkpoint file"):
            load(notes)


def test_saving_onto_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        BitModel(BitConfig(**TINY)).save_pretrained(tmp_path / "file")


# -- the Hub, served from this machine --------------------------------------------------------------


@pytest.fixture
def hub(saved):
    server = FakeHub("org/tiny-bit", saved[0])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


LOAD = (
    "import sys, torch; from bigtransfer import BitForImageClassification as M\n"
    "m = M.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else 'org/tiny-bit')\n"
    "x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))\n"
    "print(m(x).logits.sum().item())"
)


def test_hub_download_then_offline_use_of_the_cache(hub, saved, tmp_path):
    expected = logits(saved[1]).sum().item()
    endpoint = f"http://127.0.0.1:{hub.server_address[1]}"
    online = run_python(LOAD, HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"))
    assert online.returncode == 0, online.stderr
    assert abs(float(online.stdout) - expected) < 1e-5
    assert any(request.endswith("/model.safetensors") for request in hub.requests)
    offline = run_python(LOAD, HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert abs(float(offline.stdout) - expected) < 1e-5


def test_unknown_repo_says_how_to_use_a_local_path(hub, tmp_path):
    result = run_python(
        LOAD.replace("'org/tiny-bit'", "'org/missing'"),
        HF_ENDPOINT=f"http://127.0.0.1:{hub.server_address[1]}",
        HF_HOME=str(tmp_path / "hf"),
    )
    assert result.returncode != 0
    assert "neither a local directory nor a model repository" in result.stderr


def test_unreachable_hub_fails_fast_and_says_how_to_use_a_local_path(tmp_path):
    began = time.perf_counter()
    result = run_python(LOAD, HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    assert time.perf_counter() - began < 15  # huggingface_hub's own retries took 25 s
    assert result.returncode != 0 and "Retrying" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "HubUnavailableError: Could not reach the Hugging Face Hub for 'org/tiny-bit'" in message
    assert "pass that directory path instead" in message and "HF_HUB_OFFLINE=1" in message


def test_hub_reachability_check(monkeypatch):
    from bigtransfer.checkpoints.hub import hub_reachable

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    listening = socket.create_server(("127.0.0.1", 0))
    try:
        assert hub_reachable(f"http://127.0.0.1:{listening.getsockname()[1]}")
    finally:
        listening.close()
    assert not hub_reachable("http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # reached through the proxy: not checked
    assert hub_reachable("https://hub.example:443")


def test_a_failed_hub_probe_is_asked_again_once_it_expires(monkeypatch):
    from bigtransfer.checkpoints import hub

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    clock, answers, probes = [1000.0], [OSError("network down"), None], []

    def connect(address, timeout):
        probes.append(address)
        answer = answers[len(probes) - 1]
        if answer is not None:
            raise answer
        return socket.socket()

    monkeypatch.setattr(hub.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(hub.socket, "create_connection", connect)
    endpoint = "https://hub.example"
    assert not hub.hub_reachable(endpoint)
    clock[0] += hub.PROBE_EXPIRY_S - 1
    assert not hub.hub_reachable(endpoint) and len(probes) == 1  # the answer stands for a while
    clock[0] += 2
    assert hub.hub_reachable(endpoint) and probes == [("hub.example", 443)] * 2


def test_offline_without_cache_says_how_to_use_a_local_path(tmp_path):
    result = run_python(LOAD, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    assert result.returncode != 0 and "pass that directory path instead" in result.stderr


def test_saved_files_are_readable_like_ordinary_files(saved):
    path, _ = saved
    umask = os.umask(0)
    os.umask(umask)
    assert (path / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_the_umask_is_read_without_setting_one(tmp_path):
    code = f"""
import os
os.umask(0o027)
def refuse(mask):
    raise AssertionError(f"os.umask({{mask:#o}}) called")
os.umask = refuse
from pathlib import Path
from bigtransfer._util.files import atomic_write_text
atomic_write_text(Path({str(tmp_path / "note.txt")!r}), "kept")
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "note.txt").stat().st_mode & 0o777 == 0o640
