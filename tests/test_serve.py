"""`bigtransfer serve`: dynamic batching, the KServe v2 protocol (driven by tritonclient, unchanged), the simple
/predict route, limits that answer with their status instead of falling over, metrics, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from bigtransfer import BitConfig, BitForImageClassification
from bigtransfer.cli import build_parser
from bigtransfer.cli import main as cli
from bigtransfer.serve.admission import ImagePlaces, TooManyImages
from bigtransfer.serve.batching import DynamicBatcher, QueueFull
from bigtransfer.serve.model import ServedModel
from bigtransfer.train.augment import eval_processor
from helpers import TINY, ServeProcess, client_for, png_header, slow_upload

LABELS = {0: "tabby cat", 1: "coffee", 2: "rocket"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("served") / "cats" / "model"
    config = BitConfig(**{**TINY, "num_labels": 3}, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    BitForImageClassification(config).save_pretrained(path)
    eval_processor(32).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos (skimage's cat, coffee, rocket) as JPEGs of three sizes."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name, size in (("chelsea", (90, 60)), ("coffee", (64, 48)), ("rocket", (40, 70))):
        path = folder / f"{name}.jpg"
        Image.fromarray(getattr(data, name)()).resize(size).save(path, quality=90)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    running = ServeProcess(model_dir, tmp_path_factory.mktemp("log") / "server.log", "--max-batch-size", "8",
                           "--max-delay-ms", "200")  # fmt: skip
    yield running
    code, log = running.stop()
    assert code == 0, log[-3000:]


def forward_passes(metrics: str) -> float:
    """The batch-size histogram's count in a /metrics text."""
    return float(
        next(line.split()[-1] for line in metrics.splitlines() if line.startswith("bigtransfer_batch_images_count"))
    )


def predicted_logits(model_dir, files) -> np.ndarray:
    """`predict`'s path (its dataset reader and workers), one image per batch: the unbatched reference."""
    from bigtransfer.data.datasets import ImageDataset
    from bigtransfer.inference.predict import predict_logits
    from bigtransfer.processing.exact import BitImageProcessor
    from bigtransfer.runtime.classifier import load_classifier
    from bigtransfer.runtime.settings import InferenceSettings

    images = ImageDataset(np.zeros(len(files), dtype=np.int64), [], "files", paths=list(files))
    settings = InferenceSettings(device="cpu", batch_size=1, workers=0)
    return predict_logits(load_classifier(model_dir, settings), images, BitImageProcessor.from_pretrained(model_dir),
                          settings).rows  # fmt: skip


# -- the batcher ------------------------------------------------------------------------------------------------


def test_requests_arriving_together_share_one_forward_pass_and_get_their_own_rows():
    passes = []

    def model(batch):
        passes.append(len(batch))
        return batch.sum(axis=(1, 2)) * 10

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=6, max_delay=0.2)
        batcher.start()
        inputs = [np.full((n, 2, 2), i, dtype=np.float32) for i, n in enumerate([1, 2, 1, 3, 1])]
        results = await asyncio.gather(*(batcher.run(x) for x in inputs))
        await batcher.stop()
        return inputs, results

    inputs, results = asyncio.run(scenario())
    assert passes == [5, 3]  # 1+2+1 fit, 3 does not (6 max): next pass with the last
    for x, rows in zip(inputs, results):
        assert np.array_equal(rows, x.sum(axis=(1, 2)) * 10)


def test_the_batch_waits_for_company_only_while_admitted_images_are_on_their_way():
    passes, on_the_way = [], [0]

    async def scenario():
        batcher = DynamicBatcher(lambda batch: passes.append(len(batch)) or batch, max_batch_size=8, max_delay=2.0,
                                 on_the_way=lambda: on_the_way[0])  # fmt: skip
        batcher.start()
        began = time.perf_counter()
        await batcher.run(np.zeros((1, 1)))  # nothing else admitted: it goes at once, not after 2 s
        alone_s = time.perf_counter() - began
        on_the_way[0] = 2  # two more admitted (being decoded): the first waits for them
        first = asyncio.ensure_future(batcher.run(np.zeros((1, 1))))
        await asyncio.sleep(0.1)
        assert not first.done()
        on_the_way[0] = 1
        second = asyncio.ensure_future(batcher.run(np.zeros((1, 1))))
        await asyncio.sleep(0.1)
        assert not first.done()
        began = time.perf_counter()
        on_the_way[0] = 0  # the last one failed to decode: it will never come
        batcher.nudge()
        await asyncio.gather(first, second)
        nudged_s = time.perf_counter() - began
        await batcher.stop()
        return alone_s, nudged_s

    alone_s, nudged_s = asyncio.run(scenario())
    assert alone_s < 0.5 and nudged_s < 0.5 and passes == [1, 2]


def test_places_count_the_images_on_their_way_and_give_back_those_that_never_arrive():
    left = []
    pool = ImagePlaces(4, on_left=lambda: left.append(pool.arriving))
    with pool.for_request() as places:
        places(1)
        places(3)  # the body said 3 images
        assert (pool.taken, pool.arriving) == (3, 3)
        places.arrived(2)
        assert (pool.taken, pool.arriving) == (3, 1)
        with pytest.raises(QueueFull, match="3 images are under way"), pool.for_request() as other:
            other(2)
        with pytest.raises(TooManyImages, match="5 images in one request: at most 4"), pool.for_request() as other:
            other(5)
    assert (pool.taken, pool.arriving) == (0, 0) and left == [0]  # the third never came: the batcher was told


def test_a_full_queue_refuses_at_once_and_a_failing_batch_fails_only_its_requests():
    async def scenario():
        slow = DynamicBatcher(lambda batch: time.sleep(0.3) or batch, max_batch_size=1, max_delay=0, max_queue=2)
        slow.start()
        first = asyncio.ensure_future(slow.run(np.zeros((1, 1))))
        await asyncio.sleep(0.05)  # the first is in the model
        queued = [asyncio.ensure_future(slow.run(np.zeros((1, 1)))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="--max-queue 2"):
            await slow.run(np.zeros((1, 1)))
        await asyncio.gather(first, *queued)
        await slow.stop()

        def picky(batch):
            if (batch < 0).any():
                raise RuntimeError("negative input")
            return batch

        batcher = DynamicBatcher(picky, max_batch_size=1, max_delay=0)
        batcher.start()
        bad, good = await asyncio.gather(
            batcher.run(-np.ones((1, 1))), batcher.run(np.ones((1, 1))), return_exceptions=True
        )
        await batcher.stop()
        return bad, good

    bad, good = asyncio.run(scenario())
    assert isinstance(bad, RuntimeError) and np.array_equal(good, np.ones((1, 1)))


def test_a_request_whose_caller_stopped_waiting_never_reaches_the_model():
    seen = []

    async def scenario():
        batcher = DynamicBatcher(lambda batch: seen.append(batch.copy()) or batch, max_batch_size=4, max_delay=0.2)
        batcher.start()
        abandoned = asyncio.ensure_future(batcher.run(np.full((1, 1), 7.0)))
        await asyncio.sleep(0.01)
        abandoned.cancel()
        kept = await batcher.run(np.full((1, 1), 1.0))
        await batcher.stop()
        return kept

    assert asyncio.run(scenario()).tolist() == [[1.0]] and [batch.tolist() for batch in seen] == [[[1.0]]]


def test_uint8_pixels_and_float_model_input_never_share_a_batch():
    seen = []

    async def scenario():
        batcher = DynamicBatcher(lambda batch: seen.append(batch.dtype) or batch, max_batch_size=4, max_delay=0.2)
        batcher.start()
        pixels, values = np.ones((1, 3, 3), np.uint8), np.ones((1, 3, 3), np.float32)
        answers = await asyncio.gather(batcher.run(pixels), batcher.run(values))
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert sorted(map(str, seen)) == ["float32", "uint8"] and [a.dtype for a in answers] == [np.uint8, np.float32]


# -- routes, in process -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(model_dir):
    return ServedModel(model_dir, "cpu")


def test_predict_equals_the_predict_command_for_raw_and_multipart_uploads(served, model_dir, photos, capsys):
    assert served.name == "cats"  # a run's …/cats/model, as the Triton export names it
    assert cli(["predict", "--model", str(model_dir), *map(str, photos), "--json", "--workers", "0"]) == 0
    expected = {item["file"]: item["predictions"] for item in json.loads(capsys.readouterr().out)["results"]}
    with client_for(served) as client:
        for photo in photos:
            raw = client.post("/predict?top_k=5", content=photo.read_bytes()).json()
            form = client.post("/predict", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}).json()
            for answer in (raw, form):
                assert [item["label"] for item in answer["labels"]] == [p["label"] for p in expected[str(photo)]]
                assert np.allclose(
                    [i["score"] for i in answer["labels"]], [p["score"] for p in expected[str(photo)]], atol=1e-5
                )
            assert raw["model"] == "cats" and raw["milliseconds"] > 0
        assert len(client.post("/predict?top_k=1", content=photos[0].read_bytes()).json()["labels"]) == 1


def test_images_travel_to_the_model_as_uint8_and_answer_what_predict_gives_to_the_bit(served, model_dir, photos):
    """predict's input rule: uint8 H×W×3 through the batcher (a quarter of float32's bytes), normalised once per
    batch on the model's device; pixel_values (already normalised) go in as they are."""
    batches = []
    recording = ServedModel.__new__(ServedModel)
    recording.__dict__.update(served.__dict__)
    recording.logits = lambda batch: batches.append((batch.dtype, batch.shape)) or served.logits(batch)
    expected = predicted_logits(model_dir, photos)
    with client_for(recording) as client:
        for photo, row in zip(photos, expected):
            request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                   "data": [base64.b64encode(photo.read_bytes()).decode()]}]}  # fmt: skip
            answer = client.post("/v2/models/cats/infer", json=request).json()["outputs"]
            assert np.array_equal(np.float32(answer[0]["data"]), row)  # JSON's doubles hold float32 exactly
            assert np.array_equal(np.float32(answer[1]["data"]), torch.from_numpy(row).softmax(-1).numpy())
            normalised = served.transform.normalise_pixels(torch.from_numpy(served.pixels(photo.read_bytes())[None]))
            request = {"inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [1, 3, 32, 32],
                                   "data": normalised.flatten().tolist()}]}  # fmt: skip
            answer = client.post("/v2/models/cats/infer", json=request).json()["outputs"]
            assert np.array_equal(np.float32(answer[0]["data"]), row)
    warm_up = [(np.uint8, (1, 32, 32, 3)), (np.uint8, (32, 32, 32, 3))]  # before ready, on the same path
    assert batches == warm_up + [(np.uint8, (1, 32, 32, 3)), (np.float32, (1, 3, 32, 32))] * len(photos)


def test_bad_requests_get_their_status_and_reason(served, photos, tmp_path):
    with client_for(served, max_body_bytes=50_000) as client:
        answer = client.post("/predict", content=b"not an image")
        assert answer.status_code == 400 and "Cannot read the upload as an image" in answer.json()["error"]
        assert "BytesIO" not in answer.json()["error"]
        big = client.post("/predict", content=b"\xff" * 60_000)
        assert big.status_code == 413 and "50,000 bytes (--max-body-bytes)" in big.json()["error"]
        assert client.post("/predict?top_k=0", content=photos[0].read_bytes()).status_code == 400
        assert client.post("/predict", content=b"").status_code == 400
        assert client.get("/v2/models/dogs").status_code == 404
        bomb = png_header(tmp_path / "bomb.png", 30_000, 30_000)  # 900 megapixels declared in 70 bytes
        answer = client.post("/predict", content=bomb.read_bytes())
        assert answer.status_code == 400 and "pixels" in answer.json()["error"]
        assert client.get("/v2/health/live").json() == {"live": True}  # nothing above disturbed the server
        assert client.post("/predict", content=photos[0].read_bytes()).status_code == 200
        metrics = client.get("/metrics").text
        assert 'bigtransfer_requests_total{code="413",route="predict"} 1.0' in metrics
        assert 'bigtransfer_requests_total{code="400",route="predict"} 4.0' in metrics
        assert "bigtransfer_batch_images_bucket" in metrics and "bigtransfer_queue_images 0.0" in metrics


def test_a_request_slower_than_the_timeout_gets_504(served, photos):
    slow = ServedModel.__new__(ServedModel)
    slow.__dict__.update(served.__dict__)
    slow.logits = lambda batch: time.sleep(1.0) or served.logits(batch)
    with client_for(slow, timeout_s=0.3) as client:
        answer = client.post("/predict", content=photos[0].read_bytes())
        assert answer.status_code == 504 and "0.3 s" in answer.json()["error"]


def test_kserve_json_and_base64_bytes_and_the_classification_extension(served, model_dir, photos):
    expected = predicted_logits(model_dir, photos[:2])
    images = [base64.b64encode(p.read_bytes()).decode() for p in photos[:2]]
    request = {"id": "r1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": images}],
               "outputs": [{"name": "logits"}, {"name": "scores", "parameters": {"classification": 2}}]}  # fmt: skip
    with client_for(served) as client:
        answer = client.post("/v2/models/cats/infer", json=request).json()
        assert answer["id"] == "r1" and answer["model_name"] == "cats"
        logits, top = answer["outputs"]
        assert logits["shape"] == [2, 3] and np.allclose(np.reshape(logits["data"], (2, 3)), expected, atol=1e-5)
        assert top["datatype"] == "BYTES" and top["shape"] == [2, 2]
        score, index, label = top["data"][0].split(":")
        assert int(index) == int(np.argmax(expected[0])) and label == LABELS[int(index)] and 0 < float(score) <= 1
        pixels = {
            "inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [1, 3, 16, 16], "data": [0.0] * 768}]
        }
        wrong = client.post("/v2/models/cats/infer", json=pixels)
        assert wrong.status_code == 400 and "[N, 3, 32, 32]" in wrong.json()["error"]
        text = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}]}
        assert "base64" in client.post("/v2/models/cats/infer", json=text).json()["error"]


def test_a_wrong_method_or_an_unknown_path_answers_a_json_error_with_the_fix(served):
    with client_for(served) as client:
        for path in ("/predict", "/v2/models/cats/infer"):
            answer = client.get(path)
            assert answer.status_code == 405 and answer.headers["allow"] == "POST", path
            assert answer.json()["error"].startswith(f"GET {path} is not allowed: POST "), path
        assert "as the body or as a multipart file field" in client.get("/predict").json()["error"]
        answer = client.post("/info")
        assert answer.status_code == 405 and answer.json() == {"error": "POST /info is not allowed: use GET or HEAD."}
        answer = client.get("/nowhere")
        assert answer.status_code == 404 and answer.json()["error"].startswith("No route /nowhere: ")


def test_a_multipart_form_without_its_boundary_is_the_clients_400_not_a_server_failure(served):
    with client_for(served) as client:
        answer = client.post("/predict", content=b"--x\r\n", headers={"content-type": "multipart/form-data"})
    assert answer.status_code == 400 and "The multipart form cannot be read" in answer.json()["error"]


# -- the command line -------------------------------------------------------------------------------------------


def serve_until_it_exits(*options: str) -> subprocess.CompletedProcess:
    """`bigtransfer serve` in a subprocess, for the failures that end it before it listens."""
    command = [sys.executable, "-m", "bigtransfer", "serve", *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_port_in_use_fails_in_one_line_before_the_model_loads(processes, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        # no model there: had the server loaded it first, its error would be the one shown
        result = serve_until_it_exits(str(tmp_path / "no-model"), "--port", str(port), "--processes", processes)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"bigtransfer serve: port {port} on 127.0.0.1 is in use: stop what holds it or pick another with --port"
    ]


@pytest.mark.parametrize(
    "option, value, reason",
    [("--port", "99999", "port 99999 is out of range: ports run from 1 to 65535"),
     ("--port", "http", "'http' is not a port"),
     ("--host", "no-such-host.invalid", "host 'no-such-host.invalid' does not resolve")],
)  # fmt: skip
def test_a_port_or_host_that_cannot_be_listened_on_fails_in_one_line_naming_it(option, value, reason, tmp_path):
    result = serve_until_it_exits(str(tmp_path / "no-model"), option, value)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and reason in result.stderr, result.stderr


def test_serve_workers_is_the_old_spelling_of_processes_and_says_so(capsys):
    parser = build_parser()
    assert parser.parse_args(["serve", "m", "--workers", "3"]).processes == 3
    assert capsys.readouterr().err.splitlines() == [
        "bigtransfer serve: --workers is now --processes for serve; --workers will be removed"
    ]
    assert parser.parse_args(["serve", "m", "--processes", "2"]).processes == 2
    assert parser.parse_args(["serve", "m"]).processes == 1 and not capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    shown = capsys.readouterr().out
    assert "--processes N" in shown and "--workers" not in shown


# -- a real server --------------------------------------------------------------------------------------------


def test_tritonclient_works_unchanged_binary_and_json(server, model_dir, photos):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("cats")
    metadata = client.get_model_metadata("cats")
    assert [item["name"] for item in metadata["inputs"]] == ["pixel_values", "image"]
    assert "classification" in client.get_server_metadata()["extensions"]
    expected = predicted_logits(model_dir, photos)
    images = triton.InferInput("image", [3], "BYTES")
    images.set_data_from_numpy(np.array([p.read_bytes() for p in photos], dtype=np.object_))  # binary by default
    outputs = [triton.InferRequestedOutput("logits"), triton.InferRequestedOutput("scores", class_count=3)]
    result = client.infer("cats", [images], outputs=outputs)
    assert np.allclose(result.as_numpy("logits"), expected, atol=1e-5)
    ranked = result.as_numpy("scores")
    assert ranked.shape == (3, 3) and [int(row[0].split(b":")[1]) for row in ranked] == list(expected.argmax(1))
    pixels = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    request = triton.InferInput("pixel_values", list(pixels.shape), "FP32")
    request.set_data_from_numpy(pixels, binary_data=False)
    reference = BitForImageClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        direct = reference(torch.from_numpy(pixels)).logits.numpy()
    answer = client.infer("cats", [request], outputs=[triton.InferRequestedOutput("logits", binary_data=False)])
    assert np.allclose(answer.as_numpy("logits"), direct, atol=1e-5)


def test_concurrent_requests_are_batched_and_equal_unbatched_inference(server, model_dir, photos):
    files = photos * 4  # 12 requests of one image each
    expected = predicted_logits(model_dir, files)
    before = httpx.get(f"{server.url}/metrics").text

    def ask(path):
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                            "data": [base64.b64encode(path.read_bytes()).decode()]}], "outputs": [{"name": "logits"}]}  # fmt: skip
        return httpx.post(f"{server.url}/v2/models/cats/infer", json=body, timeout=60).json()["outputs"][0]["data"]

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = np.array(list(pool.map(ask, files)))
    assert np.abs(answers - expected).max() < 1e-5
    after = httpx.get(f"{server.url}/metrics").text
    assert forward_passes(after) - forward_passes(before) < len(files)  # some requests shared a forward pass


def test_sigterm_lets_the_request_under_way_finish_then_exits_0(model_dir, photos, tmp_path):
    running = ServeProcess(model_dir, tmp_path / "server.log")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # under way for 1.5 s: time to signal
        upload = slow_upload(photos[0].read_bytes(), 1.5)
        pending = pool.submit(httpx.post, f"{running.url}/predict", content=upload, timeout=60)
        time.sleep(0.5)
        code, log = running.stop()
        answer = pending.result()
    assert answer.status_code == 200 and answer.json()["labels"]
    assert code == 0, log[-2000:]
    access = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(row["path"] == "/predict" and row["status"] == 200 and row["ms"] >= 1000 for row in access)


def test_several_server_processes_answer_and_stop_together(model_dir, photos, tmp_path):
    running = ServeProcess(model_dir, tmp_path / "server.log", "--processes", "2")
    deadline = time.monotonic() + 120
    while running.log.read_text().count("serving cats") < 2 and time.monotonic() < deadline:
        time.sleep(0.5)  # the second process may still be loading the model
    answers = [httpx.post(f"{running.url}/predict", content=photos[i % 3].read_bytes(), timeout=60) for i in range(6)]
    code, log = running.stop()
    assert [answer.status_code for answer in answers] == [200] * 6
    assert log.count("serving cats") == 2 and "died" not in log  # none killed while loading and restarted
    assert code == 0, log[-2000:]


def test_an_onnx_export_serves_what_predict_gives_for_it(model_dir, photos, tmp_path, capsys):
    assert cli(["export", "--model", str(model_dir), "--out", str(tmp_path / "onnx"), "--json"]) == 0
    capsys.readouterr()
    assert cli(["predict", "--model", str(tmp_path / "onnx"), str(photos[0]), "--json", "--workers", "0"]) == 0
    expected = json.loads(capsys.readouterr().out)["results"][0]["predictions"]
    with client_for(ServedModel(tmp_path / "onnx", "cpu")) as client:
        assert client.get("/v2/models/onnx").json()["platform"] == "onnxruntime_onnx"
        answer = client.post("/predict", content=photos[0].read_bytes()).json()
    assert [item["label"] for item in answer["labels"]] == [item["label"] for item in expected]
    assert np.allclose([i["score"] for i in answer["labels"]], [i["score"] for i in expected], atol=1e-5)


def test_malformed_requests_are_400_and_the_protocol_options_are_honoured(served, photos):
    import gzip

    image = base64.b64encode(photos[0].read_bytes()).decode()
    good = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}]}
    malformed = [
        {**good, "parameters": None, "outputs": 5},
        {**good, "outputs": [{"name": "scores", "parameters": {"classification": "x"}}]},
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": "abc"}}]},
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": 1, "data": [image]}]},
    ]
    with client_for(served, max_body_bytes=200_000) as client:
        for request in malformed:
            answer = client.post("/v2/models/cats/infer", json=request)
            assert answer.status_code == 400, (request, answer.text)
            assert "error" in answer.json()
        binary = client.post("/v2/models/cats/infer", json={**good, "parameters": {"binary_data_output": True}})
        header = int(binary.headers["inference-header-content-length"])  # no outputs named: all, as binary
        outputs = json.loads(binary.content[:header])["outputs"]
        assert [o["parameters"]["binary_data_size"] for o in outputs] == [12, 12] and len(binary.content) == header + 24
        packed = gzip.compress(json.dumps(good).encode())
        zipped = client.post("/v2/models/cats/infer", content=packed, headers={"content-encoding": "gzip"})
        assert zipped.status_code == 200 and zipped.json()["outputs"][0]["shape"] == [1, 3]
        bomb = gzip.compress(b" " * 1_000_000)  # 1 MB of spaces in 1 KB: the limit holds after inflating
        assert client.post("/predict", content=bomb, headers={"content-encoding": "gzip"}).status_code == 413
        assert client.post("/predict", content=b"x", headers={"content-encoding": "br"}).status_code == 415


def test_a_full_queue_answers_503_and_a_request_larger_than_the_queue_413(served, photos):
    slow = ServedModel.__new__(ServedModel)
    slow.__dict__.update(served.__dict__)
    slow.logits = lambda batch: time.sleep(0.6) or served.logits(batch)
    with client_for(slow, max_batch_size=1, max_delay_ms=0, max_queue=1) as client:
        post = lambda _: client.post("/predict", content=photos[0].read_bytes())  # noqa: E731
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(post, range(4)))
        codes = sorted(answer.status_code for answer in answers)
        assert codes[0] == 200 and 503 in codes, codes  # one in the model, one waiting, the others refused at once
        refused = next(answer for answer in answers if answer.status_code == 503)
        assert refused.headers["retry-after"] == "1" and "--max-queue 1" in refused.json()["error"]
        images = [base64.b64encode(photos[0].read_bytes()).decode()] * 2
        request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": images}]}
        answer = client.post("/v2/models/cats/infer", json=request)
        assert answer.status_code == 413 and "at most 1 (--max-queue)" in answer.json()["error"]
