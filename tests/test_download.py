"""Downloads into the cache, from a server on this machine: resume, checks, concurrency, cache location."""

import http.server
import subprocess
import sys
import threading
import time
from functools import partial

import numpy as np
import pytest

from bigtransfer.checkpoints.download import download
from conftest import FlakyFileHandler


def test_interrupted_download_resumes_to_the_exact_file(file_server, tmp_path):
    root, url = file_server
    payload = np.random.default_rng(0).bytes(3_000_000)
    (root / "blob.bin").write_bytes(payload)
    target = download(f"{url}/blob.bin", tmp_path / "cache" / "blob.bin", size=len(payload), progress=False)
    assert target.read_bytes() == payload
    assert not (tmp_path / "cache" / "blob.bin.part").exists()


def test_download_with_wrong_size_keeps_nothing_named_like_the_target(file_server, tmp_path):
    root, url = file_server
    (root / "blob.bin").write_bytes(b"x" * 1000)
    FlakyFileHandler.broken.add("/blob.bin")
    with pytest.raises(OSError, match="has 1000 bytes, expected 999"):
        download(f"{url}/blob.bin", tmp_path / "blob.bin", size=999, progress=False)
    assert not (tmp_path / "blob.bin").exists() and not (tmp_path / "blob.bin.part").exists()


def test_missing_remote_file_is_reported(file_server, tmp_path):
    _, url = file_server
    with pytest.raises(OSError, match="HTTP 404"):
        download(f"{url}/nothing.npz", tmp_path / "nothing.npz", progress=False)


@pytest.mark.slow
class SlowFileHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files in small, slow pieces, so that concurrent downloads overlap."""

    def log_message(self, *args):
        pass

    def copyfile(self, source, destination):
        for piece in iter(lambda: source.read(64 * 1024), b""):
            destination.write(piece)
            time.sleep(0.01)


def test_concurrent_first_downloads_share_one_intact_file(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    payload = np.random.default_rng(1).bytes(2_000_000)
    (root / "model.npz").write_bytes(payload)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(SlowFileHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/model.npz"
    target = tmp_path / "cache" / "model.npz"
    code = f"from pathlib import Path; from bigtransfer.checkpoints.download import download; download({url!r}, Path({str(target)!r}), size={len(payload)}, progress=False)"
    processes = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [process.communicate(timeout=120)[1] for process in processes]
    server.shutdown()
    assert [process.returncode for process in processes] == [0, 0, 0, 0], errors
    assert target.read_bytes() == payload
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.npz", "model.npz.lock"]


def test_cache_location_follows_hf_home_and_xdg(monkeypatch, tmp_path):
    from bigtransfer.checkpoints.download import cache_dir

    monkeypatch.delenv("BIGTRANSFER_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert cache_dir() == tmp_path / "hf" / "bigtransfer"
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "bigtransfer"
