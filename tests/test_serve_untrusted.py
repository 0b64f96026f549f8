"""Untrusted clients of `bigtransfer serve` (issue 31): idle and trickling connections, images whose decoded size
dwarfs their bytes, other sites' pages and rebound host names, and bodies built to break the parser — each bounded,
refused in one JSON line, or both, while the server goes on answering."""

from __future__ import annotations

import base64
import concurrent.futures
import gzip
import io
import json
import select
import signal
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from bigtransfer import BitConfig, BitForImageClassification, BitImageProcessor
from bigtransfer.cli import build_parser
from bigtransfer.serve import admission
from bigtransfer.serve.app import InferenceServer
from bigtransfer.serve.connections import HEADER_TIMEOUT_ENV
from bigtransfer.serve.model import ServedModel
from bigtransfer.serve.repository import Repository
from bigtransfer.serve.service import Limits
from bigtransfer.serve.trust import Trust, trust_for
from helpers import ServeProcess, png_header, ready_client, slow_upload

SMALL = dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_groups=4, embedding_size=16, num_labels=3)
NAME = "guarded"
MAX_QUEUE = 4
HEADER_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("served") / NAME
    BitForImageClassification(BitConfig(**SMALL)).save_pretrained(path)
    BitImageProcessor(size={"height": 20, "width": 20}, do_center_crop=False, image_mean=0.5,
                      image_std=0.5).save_pretrained(path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def photo() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """A server with a small queue whose connections have 1 s to send their headers."""
    running = ServeProcess(model_dir, tmp_path_factory.mktemp("log") / "server.log", "--max-queue", str(MAX_QUEUE),
                           env={HEADER_TIMEOUT_ENV: str(HEADER_TIMEOUT_S)})  # fmt: skip
    yield running
    code, log = running.stop()
    assert code == 0, log[-3000:]


@pytest.fixture(scope="module")
def served(model_dir):
    return ServedModel(model_dir, "cpu")


def client_for(served, trust: Trust = Trust(), **limits):
    return ready_client(InferenceServer(Repository.of(served, Limits(**limits)), trust).app())


def infer_request(images: list[bytes]) -> dict:
    data = [base64.b64encode(image).decode() for image in images]
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": data}]}


# -- 4: idle connections -------------------------------------------------------------------------------------------


def closed(connection: socket.socket) -> bool:
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True


def test_idle_and_trickling_connections_hold_up_no_request_and_are_closed_at_the_header_deadline(server, photo):
    address = ("127.0.0.1", server.port)
    opened = time.monotonic()
    idle = [socket.create_connection(address, timeout=5) for _ in range(3 * MAX_QUEUE)]
    trickling = [socket.create_connection(address, timeout=5) for _ in range(MAX_QUEUE)]
    try:
        for connection in trickling:
            connection.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        live = httpx.get(f"{server.url}/v2/health/live", timeout=5)
        answer = httpx.post(f"{server.url}/predict", content=photo, timeout=10)
        assert (live.status_code, answer.status_code) == (200, 200), (live.text, answer.text)
        shut: set[socket.socket] = set()
        while len(shut) < len(idle) + len(trickling) and time.monotonic() < opened + 4 * HEADER_TIMEOUT_S + 5:
            for connection in set(trickling) - shut:
                try:
                    connection.send(b"x")  # a header byte at a time: the deadline is for all of them
                except OSError:
                    shut.add(connection)
            readable, _, _ = select.select(list(set(idle + trickling) - shut), [], [], 0.2)
            shut.update(connection for connection in readable if closed(connection))
        assert len(shut) == len(idle) + len(trickling), f"{len(shut)} of {len(idle) + len(trickling)} closed"
    finally:
        for connection in idle + trickling:
            connection.close()


def test_past_the_queue_requests_get_the_apps_json_503_with_retry_after(server, photo):
    post = lambda content: httpx.post(f"{server.url}/predict", content=content, timeout=30)  # noqa: E731
    with concurrent.futures.ThreadPoolExecutor(3 * MAX_QUEUE) as pool:
        # MAX_QUEUE requests under way for 2 s (their uploads), holding every place; then more
        under_way = [pool.submit(post, slow_upload(photo, 2.0)) for _ in range(MAX_QUEUE)]
        time.sleep(0.5)
        refused = [answer.result() for answer in [pool.submit(post, photo) for _ in range(2 * MAX_QUEUE)]]
        answered = [answer.result() for answer in under_way]
    assert [answer.status_code for answer in answered] == [200] * MAX_QUEUE  # those under way answered
    assert [answer.status_code for answer in refused] == [503] * (2 * MAX_QUEUE)  # the others refused at once
    for answer in refused:
        assert answer.headers["retry-after"] == "1" and f"--max-queue {MAX_QUEUE}" in answer.json()["error"]
    assert httpx.post(f"{server.url}/predict", content=photo, timeout=30).status_code == 200  # the places came back


def test_ctrl_c_exits_130_with_several_processes_as_with_one(model_dir, tmp_path):
    running = ServeProcess(model_dir, tmp_path / "server.log", "--processes", "2", "--allowed-hosts", "models.example")
    deadline = time.monotonic() + 120
    while running.log.read_text().count(f"serving {NAME}") < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    hosts = {host: httpx.get(f"{running.url}/info", headers={"Host": host}).status_code
             for host in ("models.example", "evil.example")}  # fmt: skip
    code, log = running.stop(signal.SIGINT)
    assert hosts == {"models.example": 200, "evil.example": 403}  # the processes have the server's --allowed-hosts
    assert code == 130, log[-2000:]


# -- 5: decoded size -----------------------------------------------------------------------------------------------


def slow_decoder(served, seconds: float) -> tuple[ServedModel, dict]:
    """`served` decoding each image in `seconds`, and its record: the decoded bytes of each image in the order
    their decoding started, and the peak of decoded bytes under way."""
    slow = ServedModel.__new__(ServedModel)
    slow.__dict__.update(served.__dict__)
    record, lock = {"started": [], "under_way": 0, "peak": 0}, threading.Lock()

    def pixels(data, name="the image"):
        cost = served.decoding_bytes(data)
        with lock:
            record["started"].append(cost)
            record["under_way"] += cost
            record["peak"] = max(record["peak"], record["under_way"])
        time.sleep(seconds)
        with lock:
            record["under_way"] -= cost
        return np.zeros((served.height, served.width, 3), np.uint8)  # a header is no image to decode

    slow.pixels = pixels
    return slow, record


def test_decodes_take_turns_by_decoded_size_and_a_small_request_is_not_starved(served, photo, tmp_path, monkeypatch):
    huge = png_header(tmp_path / "huge.png", 4000, 4000).read_bytes()  # 70 bytes, 64 MB decoding (RGB in 4 bytes)
    assert served.decoding_bytes(huge) == 4000 * 4000 * 4
    monkeypatch.setenv(admission.DECODE_BYTES_ENV, "140000000")  # two such images at a time
    slow, record = slow_decoder(served, 0.2)
    with client_for(slow) as client, concurrent.futures.ThreadPoolExecutor(3) as pool:
        heavy = [pool.submit(client.post, f"/v2/models/{NAME}/infer", json=infer_request([huge] * 6)) for _ in "ab"]
        time.sleep(0.1)
        small = client.post("/predict", content=photo)
        answers = [future.result() for future in heavy]
    assert small.status_code == 200 and [answer.status_code for answer in answers] == [200, 200]
    assert record["peak"] <= 140_000_000, f"{record['peak'] / 1e6:.0f} MB decoding at once"
    # the small image's turn came after at most the 2 huge images of each request that were there first, not 12
    assert record["started"].index(served.decoding_bytes(photo)) <= 4, record["started"]


def test_an_image_its_header_refuses_does_not_wait_for_a_turn(served, photo, tmp_path, monkeypatch):
    bomb = png_header(tmp_path / "bomb.png", 9000, 9000).read_bytes()  # beyond the server's 4096² pixels
    with pytest.raises(ValueError, match="9000×9000 pixels is beyond the limit"):
        served.decoding_bytes(bomb)
    monkeypatch.setenv(admission.DECODE_BYTES_ENV, str(served.decoding_bytes(photo)))  # one photo takes it all
    slow, _ = slow_decoder(served, 1.5)
    with client_for(slow) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(client.post, f"/v2/models/{NAME}/infer", json=infer_request([photo] * 2))
        time.sleep(0.3)  # the first photo decodes, the second waits for the whole budget
        started = time.monotonic()
        refused = client.post("/predict", content=bomb)
        waited = time.monotonic() - started
        assert busy.result().status_code == 200
    assert refused.status_code == 400 and "beyond the limit" in refused.json()["error"]
    assert waited < 1.0, f"the refused image waited {waited:.1f} s for a turn"


def test_images_being_decoded_count_against_the_queue(served, photo):
    slow, _ = slow_decoder(served, 0.6)
    with client_for(slow, max_queue=MAX_QUEUE) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, f"/v2/models/{NAME}/infer", json=infer_request([photo] * 3))
        time.sleep(0.2)  # its 3 images are being decoded: none waits for the model yet
        second = client.post(f"/v2/models/{NAME}/infer", json=infer_request([photo] * 3))
        assert first.result().status_code == 200
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    assert "3 images are under way (--max-queue 4)" in second.json()["error"]


def counting_decoder(served) -> tuple[ServedModel, list[str], list[str]]:
    """`served` recording the names of the images whose decoding started, and of those whose header it read."""
    counting = ServedModel.__new__(ServedModel)
    counting.__dict__.update(served.__dict__)
    decoded, headers = [], []
    counting.pixels = lambda data, name="the image": decoded.append(name) or served.pixels(data, name)
    counting.decoding_bytes = lambda data, name="the image": headers.append(name) or served.decoding_bytes(data, name)
    return counting, decoded, headers


def test_a_request_of_more_images_than_the_queue_is_refused_before_any_is_decoded(served, tmp_path):
    """Issue 32: 300 one-pixel PNGs against --max-queue 4 once took 1.8 GB before the 413."""
    pixel = png_header(tmp_path / "pixel.png", 1, 1, black=True).read_bytes()
    counting, decoded, headers = counting_decoder(served)
    with client_for(counting, max_queue=MAX_QUEUE) as client:
        answer = client.post(f"/v2/models/{NAME}/infer", json=infer_request([pixel] * 300))
    assert answer.status_code == 413 and f"at most {MAX_QUEUE} (--max-queue)" in answer.json()["error"]
    assert decoded == [] and headers == []


def test_a_request_stops_decoding_at_its_first_unreadable_image(served, photo, monkeypatch):
    counting, decoded, _ = counting_decoder(served)
    with client_for(counting) as client:  # refused by its header: the next image is never opened
        answer = client.post(f"/v2/models/{NAME}/infer", json=infer_request([photo, b"not an image", photo]))
    assert answer.status_code == 400 and "image 1 of the request" in answer.json()["error"]
    assert decoded == ["image 0 of the request"]
    decoded.clear()
    monkeypatch.setenv(admission.DECODE_BYTES_ENV, str(served.decoding_bytes(photo)))  # one decode at a time
    cut_short = photo[: len(photo) // 2]  # its header reads, its pixels break off
    with client_for(counting) as client:
        answer = client.post(f"/v2/models/{NAME}/infer", json=infer_request([photo, cut_short, photo]))
    assert answer.status_code == 400 and "image 1 of the request" in answer.json()["error"]
    assert decoded == ["image 0 of the request", "image 1 of the request"]  # image 2's turn came after the failure


# -- 6: host and origin --------------------------------------------------------------------------------------------


def test_a_rebound_host_name_or_another_sites_page_is_refused_and_the_servers_own_page_is_not(server, photo):
    port, url = server.port, server.url
    rebound = httpx.get(f"{url}/info", headers={"Host": f"evil.example:{port}"})
    assert rebound.status_code == 403 and "--allowed-hosts evil.example" in rebound.json()["error"]
    assert httpx.get(f"{url}/v2/health/live", headers={"Host": "evil.example"}).status_code == 200
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert httpx.get(f"{url}/info", headers={"Host": host}).status_code == 200, host
    drive_by = httpx.post(f"{url}/predict", content=photo, timeout=10,
                          headers={"Origin": "http://evil.example", "Content-Type": "text/plain"})  # fmt: skip
    assert drive_by.status_code == 403 and "--allowed-origins http://evil.example" in drive_by.json()["error"]
    assert httpx.post(f"{url}/predict", content=photo, headers={"Origin": url}, timeout=10).status_code == 200
    as_text = httpx.post(f"{url}/v2/models/{NAME}/infer", content=json.dumps(infer_request([photo])),
                         headers={"Content-Type": "text/plain"}, timeout=10)  # fmt: skip
    assert as_text.status_code == 415 and "Content-Type: application/json" in as_text.json()["error"]


def test_allowed_hosts_and_origins_are_comma_separated_names(capsys):
    parser = build_parser()
    args = parser.parse_args(["serve", "m", "--allowed-hosts", "a.example, *.b.example", "--allowed-origins", "*"])
    assert (args.allowed_hosts, args.allowed_origins) == (("a.example", "*.b.example"), ("*",))
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "m", "--allowed-hosts", ","])
    assert "',' names nothing: give names separated by commas" in capsys.readouterr().err


@pytest.mark.parametrize(
    "listening, allowed, host, answered",
    [("127.0.0.1", (), "localhost:8000", True), ("127.0.0.1", (), "evil.example:8000", False),
     ("127.0.0.1", (), "[::1]:8000", True), ("127.0.0.1", (), "10.1.2.3", True),  # an address: no page rebinds it
     ("127.0.0.1", ("models.example.com",), "Models.Example.com.", True), ("localhost", (), "localhost", True),
     ("0.0.0.0", (), "gpu-box:8000", True), ("0.0.0.0", ("*.example.com",), "gpu-box:8000", False),
     ("0.0.0.0", ("*.example.com",), "a.example.com:8000", True), ("0.0.0.0", ("*.example.com",), "localhost", True)],
)  # fmt: skip
def test_the_hosts_answered_follow_the_listening_address_and_allowed_hosts(listening, allowed, host, answered):
    trust = trust_for(listening, allowed)
    assert (trust.refusal("GET", {"host": host}, "info") is None) is answered


def test_allowed_origins_may_post_and_read_the_answers(served, photo):
    with client_for(served, Trust(origins=("https://app.example",))) as client:
        preflight = client.options(f"/v2/models/{NAME}/infer", headers={"Origin": "https://app.example",
                                   "Access-Control-Request-Method": "POST"})  # fmt: skip
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        answer = client.post("/predict", content=photo, headers={"Origin": "https://app.example"})
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
        assert client.post("/predict", content=photo, headers={"Origin": "https://other.example"}).status_code == 403


# -- bodies built to break the parser ------------------------------------------------------------------------------


def test_json_nested_100000_deep_is_a_400_not_a_recursion_error(served):
    with client_for(served) as client:
        deep = client.post(f"/v2/models/{NAME}/infer", content=b"[" * 100_000 + b"]" * 100_000)
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]


def test_a_gzip_body_cut_short_is_named_corrupt_not_an_empty_upload(served, photo):
    with client_for(served) as client:
        cut = client.post("/predict", content=gzip.compress(photo)[:200], headers={"Content-Encoding": "gzip"})
        assert cut.status_code == 400 and cut.json()["error"].startswith("The gzip body is corrupt (cut short)")
        whole = client.post("/predict", content=gzip.compress(photo), headers={"Content-Encoding": "gzip"})
        assert whole.status_code == 200


def test_pixel_values_that_overflow_the_model_are_a_400_not_nan_in_the_json(served):
    pixels = {"inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [1, 3, 20, 20], "data": [1e38] * 1200}]}
    with client_for(served) as client:
        answer = client.post(f"/v2/models/{NAME}/infer", json=pixels)
    assert answer.status_code == 400 and "not finite" in json.loads(answer.text)["error"]  # valid JSON: no NaN
