"""Shared test helpers: tiny configs, random-but-realistic weights, timm import shim, output comparison."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch

TINY = dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 2, 1], num_groups=1, num_labels=3, embedding_size=16)
HYBRID = dict(
    layer_type="bottleneck",
    global_padding="same",
    embedding_dynamic_padding=True,
    depths=[3, 4, 9],
    out_features=["stage1", "stage2", "stage3"],
)


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """GroupNorm affine params away from 1/0, so a mixed-up norm cannot hide behind the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                noise = torch.randn(param.shape, generator=generator) * 0.2
                param.copy_(noise + (1.0 if name.endswith("weight") else 0.0))
    return model


def max_abs_diff(a, b) -> float:
    """Largest difference between two (nested tuples of) tensors; shapes must agree."""
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b), f"length {len(a)} != {len(b)}"
        return max((max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return (a.float() - b.float()).abs().max().item()


def import_timm():
    """timm, importable thanks to the torchvision operator shim in conftest.py."""
    import timm

    return timm


def write_bit_npz(path, depths, width_factor=1, num_classes=10, seed=0, numbered_convs=False, head=True):
    """A random checkpoint in Google's original BiT layout: flat `resnet/…` names, HWIO kernels, 1×1-conv head."""
    import numpy as np

    rng = np.random.default_rng(seed)
    conv = "standardized_conv2d_{}" if numbered_convs else "standardized_conv2d"
    counter = iter(range(10_000))

    def kernel(h, w, cin, cout):
        return (rng.standard_normal((h, w, cin, cout)) * (2 / (h * w * cin)) ** 0.5).astype(np.float32)

    def norm(prefix, channels):
        arrays[f"{prefix}/group_norm/gamma"] = (1 + 0.2 * rng.standard_normal(channels)).astype(np.float32)
        arrays[f"{prefix}/group_norm/beta"] = (0.2 * rng.standard_normal(channels)).astype(np.float32)

    def conv_name():
        return conv.format(next(counter))

    stem = 64 * width_factor
    arrays = {f"resnet/root_block/{conv_name()}/kernel": kernel(7, 7, 3, stem)}
    cin = stem
    for block, depth in enumerate(depths, 1):
        mid = 64 * 2 ** (block - 1) * width_factor
        cout = 4 * mid
        for unit in range(1, depth + 1):
            prefix = f"resnet/block{block}/unit{unit:02d}"
            unit_in = cin if unit == 1 else cout
            norm(f"{prefix}/a", unit_in)
            arrays[f"{prefix}/a/{conv_name()}/kernel"] = kernel(1, 1, unit_in, mid)
            if unit == 1:
                arrays[f"{prefix}/a/proj/{conv_name()}/kernel"] = kernel(1, 1, unit_in, cout)
            norm(f"{prefix}/b", mid)
            arrays[f"{prefix}/b/{conv_name()}/kernel"] = kernel(3, 3, mid, mid)
            norm(f"{prefix}/c", mid)
            arrays[f"{prefix}/c/{conv_name()}/kernel"] = kernel(1, 1, mid, cout)
        cin = cout
    norm("resnet", cin)
    if head:
        arrays["resnet/head/conv2d/kernel"] = (0.01 * rng.standard_normal((1, 1, cin, num_classes))).astype(np.float32)
        arrays["resnet/head/conv2d/bias"] = (0.01 * rng.standard_normal(num_classes)).astype(np.float32)
    np.savez(path, **arrays)
    return path


class FakeHub(http.server.ThreadingHTTPServer):
    """Answers /{org}/{name}/resolve/{revision}/{file} like the Hub, from a local directory."""

    def __init__(self, repo_id: str, directory: Path):
        self.repo_id, self.directory, self.requests = repo_id, directory, []
        super().__init__(("127.0.0.1", 0), FakeHubHandler)


class FakeHubHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _respond(self, with_body: bool):
        self.server.requests.append(self.path)
        prefix = f"/{self.server.repo_id}/resolve/main/"
        if not self.path.startswith(f"/{self.server.repo_id}/"):
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()
            return
        file = self.server.directory / self.path[len(prefix) :]
        if not self.path.startswith(prefix) or not file.is_file():
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        body = file.read_bytes()
        self.send_response(200)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_HEAD(self):
        self._respond(with_body=False)

    def do_GET(self):
        self._respond(with_body=True)


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120)


def logged_steps(metrics: Path) -> list[int]:
    """Steps of metrics.jsonl's complete rows (a kill can tear the last one)."""
    steps = []
    for line in metrics.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            steps.append(json.loads(line)["step"])
    return steps


def kill_one_row_past_a_checkpoint(command: list[str], out: Path) -> tuple[int, list[int]]:
    """Run `command`, SIGKILL it just after a checkpoint (save-every 3); (checkpoint step, logged steps)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        rows = len(logged_steps(out / "metrics.jsonl")) if (out / "metrics.jsonl").exists() else 0
        if rows >= 7 and rows % 3 == 1:  # one row past a checkpoint, two steps before the next one
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    return torch.load(out / "checkpoint.pt", weights_only=True)["step"], logged_steps(out / "metrics.jsonl")


def png_header(path: Path, width: int, height: int, black: bool = False) -> Path:
    """A 70-byte PNG that declares width × height pixels (a decompression bomb when that is large); with `black`,
    a whole one that decodes to black RGB, compressed row by row (9000×9000 is 240 KB, built in little memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row = zlib.compressobj(9), b"\0" * (1 + 3 * width)  # each row: filter type 0, then RGB zeros
    pixels = b"".join([compressor.compress(row) for _ in range(height if black else 0)] + [compressor.flush()])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def save_tiny_classifier(path: Path) -> Path:
    """A TINY classifier (seeded) with a 32-pixel eval processor saved at `path`: a model folder serve reads."""
    from bigtransfer import BitConfig, BitForImageClassification
    from bigtransfer.train.augment import eval_processor

    torch.manual_seed(0)
    BitForImageClassification(BitConfig(**TINY)).save_pretrained(path)
    eval_processor(32).save_pretrained(path)
    return path


def slow_upload(body: bytes, pause_s: float) -> Iterator[bytes]:
    """A request body whose second half comes `pause_s` after its first (httpx `content=`): the request is
    admitted, and under way, while its upload lasts."""
    yield body[: len(body) // 2]
    time.sleep(pause_s)
    yield body[len(body) // 2 :]


def wait_until_ready(client, ready_path: str = "/v2/health/ready", seconds: float = 60) -> None:
    """Until `ready_path` answers 200: the server listens while its models warm up."""
    deadline = time.monotonic() + seconds
    while client.get(ready_path).status_code != 200:
        assert time.monotonic() < deadline, f"{ready_path} did not answer 200 within {seconds} s"
        time.sleep(0.01)


def ready_client(app):
    """An in-process client of a server `app` whose `with` returns once the server is ready: a test's first
    request would race the warm-up."""
    from starlette.testclient import TestClient

    class ReadyClient(TestClient):
        def __enter__(self):
            client = super().__enter__()
            wait_until_ready(client)
            return client

    return ReadyClient(app)


def client_for(served, tracing=None, warmed: bool = True, **limits):
    """An in-process client of the server's app for `served` (a ServedModel), with these `Limits`, tracing its
    requests with `tracing` (serve.tracing: e.g. an OpenTelemetryTracing of a test's TracerProvider); ready
    (warmed up) when its `with` begins, unless not `warmed`."""
    from starlette.testclient import TestClient

    from bigtransfer.serve.app import InferenceServer
    from bigtransfer.serve.repository import Repository
    from bigtransfer.serve.service import Limits
    from bigtransfer.serve.tracing import NO_TRACING
    from bigtransfer.serve.trust import Trust

    server = InferenceServer(Repository.of(served, Limits(**limits)), Trust(), tracing or NO_TRACING)
    return ready_client(server.app()) if warmed else TestClient(server.app())


class ServeProcess:
    """`bigtransfer serve MODEL` in a subprocess on a free port, logging to `log`, with `env` added to its
    environment; ready once its health says so, stopped by PID with SIGTERM (which must drain and exit 0)."""

    START_S = 120  # the model loads before the port opens; slow CI machines take a while

    def __init__(self, model, log: Path, *options: str, env: dict[str, str] | None = None):
        self.port, self.log = free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "bigtransfer", "serve", str(model), "--port", str(self.port), *options]
        with log.open("w") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})  # fmt: skip
        deadline = time.monotonic() + self.START_S
        while not self.ready():
            assert self.process.poll() is None, f"the server exited with {self.process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the server was not ready in {self.START_S} s:\n{log.read_text()}"
            time.sleep(0.25)

    def ready(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self, stop_signal: int = signal.SIGTERM) -> tuple[int, str]:
        """(exit code, the server's log) after `stop_signal`."""
        self.process.send_signal(stop_signal)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        return code, self.log.read_text()


DESKTOP_WINDOW = (1000, 900)


def screenshot_path(name: str) -> Path:
    """Where a person finds a screenshot: $BIGTRANSFER_TEST_ARTIFACTS, else test-artifacts/ in the checkout."""
    folder = os.environ.get("BIGTRANSFER_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts"
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder) / name


@contextlib.contextmanager
def headless_chromium(window: tuple[int, int] = DESKTOP_WINDOW):
    """Headless Chromium through the system chromedriver (the Debian packages, as CI installs them)."""
    import shutil

    import pytest
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.fail("The browser tests need Chromium and its driver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size={},{}".format(*window),
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()
