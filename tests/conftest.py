"""Test-session setup: the timm/torchvision parity oracles with the operator shim that lets them (and
transformers) import here, the local file server that download tests fetch from, and the stand-in Hub that
push tests upload to.

`scripts/setup.sh test` installs timm and torchvision into .oracles/ (not site-packages): the PyPI
torchvision wheel cannot load its compiled operators beside the CPU torch, and fails at import with
"operator torchvision::nms does not exist". Declaring the two schemas it registers first is
enough for everything the tests use. Test-only: the library never imports torchvision or timm.
"""

import http.server
import importlib.util
import shutil
import sys
import threading
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ORACLES = Path(__file__).resolve().parents[1] / ".oracles"
if ORACLES.is_dir():
    sys.path.insert(0, str(ORACLES))

if importlib.util.find_spec("torchvision") is not None:
    _TORCHVISION_SHIM = torch.library.Library("torchvision", "DEF")
    _TORCHVISION_SHIM.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_SHIM.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")


class FlakyFileHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory with Range support; the first full GET of each file breaks off half-way."""

    broken: set = set()

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.translate_path(self.path)
        try:
            data = Path(path).read_bytes()
        except OSError:
            self.send_error(404)
            return
        range_header = self.headers.get("Range")
        if range_header:
            start = int(range_header.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.path not in self.broken:
            self.broken.add(self.path)
            self.wfile.write(data[: len(data) // 2])  # then hang up: an interrupted transfer
            self.wfile.flush()
            self.connection.shutdown(1)
            return
        self.wfile.write(data)


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    FlakyFileHandler.broken = set()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(FlakyFileHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hub that keeps each pushed folder under tmp_path/hub/<repo>, and the calls it received: HfApi's
    create_repo, upload_folder, file_exists and hf_hub_download stand in for the network (nothing else does)."""
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        calls.append(("create_repo", repo_id, {"private": private, "exist_ok": exist_ok, "token": self.token}))
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"me/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **options):
        calls.append(("upload_folder", repo_id, options))
        ignored = shutil.ignore_patterns(*ignore_patterns) if ignore_patterns else None
        shutil.copytree(folder_path, tmp_path / "hub" / repo_id, ignore=ignored, dirs_exist_ok=True)
        return f"https://huggingface.co/{repo_id}/commit/0123abc"

    def file_exists(self, repo_id, filename, revision=None, **kwargs):
        return (tmp_path / "hub" / repo_id / filename).is_file()

    def hf_hub_download(self, repo_id, filename, revision=None, **kwargs):
        return str(tmp_path / "hub" / repo_id / filename)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "file_exists", file_exists)
    monkeypatch.setattr(HfApi, "hf_hub_download", hf_hub_download)
    return tmp_path / "hub", calls
