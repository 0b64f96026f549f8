"""`bigtransfer serve --grpc-port`: KServe v2 / Triton's GRPCInferenceService, driven by tritonclient.grpc
unchanged, answering what REST answers (tritonclient.http on the same server) — the same models, batches,
limits and refusal messages, as gRPC status codes."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import test_serve
from bigtransfer.serve.app import InferenceServer
from bigtransfer.serve.grpc_server import GrpcListener
from bigtransfer.serve.model import ServedModel
from bigtransfer.serve.repository import Repository
from bigtransfer.serve.service import Limits
from bigtransfer.serve.tracing import NO_TRACING, Tracing
from helpers import ServeProcess, free_port, ready_client, slow_upload
from test_serve import LABELS, forward_passes, predicted_logits

model_dir, photos, served = test_serve.model_dir, test_serve.photos, test_serve.served  # its fixtures: the same model


class GrpcServeProcess(ServeProcess):
    """`bigtransfer serve MODEL --grpc-port P` in a subprocess, with a gRPC and an HTTP tritonclient."""

    def __init__(self, model, log, *options: str):
        self.grpc_port = free_port()
        super().__init__(model, log, "--grpc-port", str(self.grpc_port), *options)
        self.grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")
        self.http = triton_http.InferenceServerClient(f"127.0.0.1:{self.port}")

    def stop(self, stop_signal: int = signal.SIGTERM) -> tuple[int, str]:
        self.grpc.close()
        self.http.close()
        return super().stop(stop_signal)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    running = GrpcServeProcess(model_dir, tmp_path_factory.mktemp("log") / "server.log", "--max-batch-size", "8",
                               "--max-delay-ms", "2000")  # fmt: skip
    yield running
    code, log = running.stop()
    assert code == 0, log[-3000:]


@contextlib.contextmanager
def grpc_beside_rest(repository: Repository, tracing: Tracing = NO_TRACING):
    """The app in process (TestClient runs its lifespan, and so the gRPC server, in its event loop) with gRPC on
    a free port: (REST client, gRPC client, gRPC address)."""
    server = InferenceServer(repository, tracing=tracing)
    port = free_port()
    server.listeners.append(GrpcListener(server, "127.0.0.1", port))
    with ready_client(server.app()) as rest:
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            yield rest, client, f"127.0.0.1:{port}"
        finally:
            client.close()


def slowed(served: ServedModel, seconds: float) -> ServedModel:
    slow = ServedModel.__new__(ServedModel)
    slow.__dict__.update(served.__dict__)
    slow.logits = lambda batch: time.sleep(seconds) or served.logits(batch)
    return slow


def grpc_refusal(call) -> tuple[str, str]:
    """(status code, message) a tritonclient.grpc call is refused with."""
    with pytest.raises(InferenceServerException) as refused:
        call()
    return refused.value.status(), refused.value.message()


def rest_refusal(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as refused:
        call()
    return refused.value.status(), refused.value.message()


def image_input(module, images: list[bytes]):
    tensor = module.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))  # raw / binary: tritonclient's default
    return tensor


def pixel_input(module, pixels: np.ndarray, **binary):
    tensor = module.InferInput("pixel_values", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, **binary)
    return tensor


def typed_request(name: str, datatype: str, shape: list[int], **contents) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest with typed contents (bytes_contents, fp32_contents), as other gRPC clients send."""
    request = service_pb2.ModelInferRequest(model_name="cats")
    request.inputs.add(name=name, datatype=datatype, shape=shape, contents=service_pb2.InferTensorContents(**contents))
    request.outputs.add(name="logits")
    scores = request.outputs.add(name="scores")
    scores.parameters["classification"].int64_param = 2
    return request


# -- a real server ------------------------------------------------------------------------------------------------


def test_health_metadata_config_and_index_rpcs_answer_what_rest_does(server):
    client, rest = server.grpc, server.http
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("cats")
    assert client.get_server_metadata(as_json=True) == rest.get_server_metadata()
    grpc_metadata, rest_metadata = client.get_model_metadata("cats", as_json=True), rest.get_model_metadata("cats")
    for tensor in grpc_metadata["inputs"] + grpc_metadata["outputs"]:
        tensor["shape"] = [int(n) for n in tensor["shape"]]  # protobuf's JSON writes int64 as strings
    assert grpc_metadata == rest_metadata
    config = client.get_model_config("cats").config
    assert config.name == "cats" and config.max_batch_size == 8 and config.platform == "pytorch"
    assert [(i.name, list(i.dims)) for i in config.input] == [("pixel_values", [3, 32, 32]), ("image", [1])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [3]), ("scores", [3])]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2_000_000
    index = client.get_model_repository_index(as_json=True)["models"]
    assert index == [{"name": "cats", "version": "1", "state": "READY"}]
    code, message = grpc_refusal(lambda: client.get_inference_statistics("cats"))
    assert code == "StatusCode.UNIMPLEMENTED" and "GET /metrics" in message
    code, message = grpc_refusal(lambda: client.get_system_shared_memory_status())
    assert code == "StatusCode.UNIMPLEMENTED" and "send the tensors in the request" in message


def test_grpc_answers_equal_rest_answers_for_images_and_pixel_values(server, model_dir, photos):
    images = [photo.read_bytes() for photo in photos]
    outputs = lambda module: [module.InferRequestedOutput("logits"),  # noqa: E731
                              module.InferRequestedOutput("scores", class_count=2)]  # fmt: skip
    expected = predicted_logits(model_dir, photos)
    by_grpc = server.grpc.infer("cats", [image_input(triton_grpc, images)], outputs=outputs(triton_grpc))
    by_rest = server.http.infer("cats", [image_input(triton_http, images)], outputs=outputs(triton_http))
    assert np.abs(by_grpc.as_numpy("logits") - expected).max() < 1e-5
    assert np.abs(by_grpc.as_numpy("logits") - by_rest.as_numpy("logits")).max() < 1e-5
    assert by_grpc.as_numpy("scores").tolist() == by_rest.as_numpy("scores").tolist()  # "score:index:label"
    assert by_grpc.as_numpy("scores")[0][0].decode().split(":")[2] in LABELS.values()
    response = by_grpc.get_response()
    assert response.model_name == "cats" and response.model_version == "1" and len(response.raw_output_contents) == 2

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:  # typed contents, as other clients send
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        typed = triton_grpc.InferResult(stub.ModelInfer(typed_request("image", "BYTES", [3], bytes_contents=images)))
        assert np.abs(typed.as_numpy("logits") - by_rest.as_numpy("logits")).max() < 1e-5
        assert typed.as_numpy("scores").tolist() == by_rest.as_numpy("scores").tolist()

        pixels = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
        by_rest_json = server.http.infer("cats", [pixel_input(triton_http, pixels, binary_data=False)],
                                         outputs=[triton_http.InferRequestedOutput("logits", binary_data=False)])  # fmt: skip
        by_rest_binary = server.http.infer("cats", [pixel_input(triton_http, pixels)])
        by_grpc = server.grpc.infer("cats", [pixel_input(triton_grpc, pixels)])
        typed = triton_grpc.InferResult(stub.ModelInfer(
            typed_request("pixel_values", "FP32", [2, 3, 32, 32], fp32_contents=pixels.ravel())))  # fmt: skip
    for answer in (by_rest_binary, by_grpc, typed):
        assert np.abs(answer.as_numpy("logits") - by_rest_json.as_numpy("logits")).max() < 1e-5
    assert np.abs(by_grpc.as_numpy("scores") - by_rest_binary.as_numpy("scores")).max() < 1e-5


def test_rest_and_grpc_requests_share_one_forward_pass(server, photos):
    before = httpx.get(f"{server.url}/metrics").text
    image = photos[0].read_bytes()
    rest_request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                "data": [base64.b64encode(image).decode()]}], "outputs": [{"name": "logits"}]}  # fmt: skip
    upload = slow_upload(json.dumps(rest_request).encode(), 0.5)  # admitted first, then under way for 0.5 s
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # (httpx: tritonclient.http's gevent keeps to its thread)
        by_rest = pool.submit(httpx.post, f"{server.url}/v2/models/cats/infer", content=upload, timeout=60,
                              headers={"Content-Type": "application/json"})  # fmt: skip
        time.sleep(0.2)
        # queued while the REST request is on its way: it waits for it (up to --max-delay-ms 2000), one pass for both
        by_grpc = pool.submit(server.grpc.infer, "cats", [image_input(triton_grpc, [image])])
        answers = by_rest.result(timeout=60).json()["outputs"][0]["data"], by_grpc.result(timeout=60)
    after = httpx.get(f"{server.url}/metrics").text
    assert np.abs(np.float32(answers[0]) - answers[1].as_numpy("logits")[0]).max() < 1e-5
    assert forward_passes(after) - forward_passes(before) == 1  # one batcher behind both protocols
    images = lambda text: float(next(line.split()[-1] for line in text.splitlines()  # noqa: E731
                                     if line.startswith("bigtransfer_batch_images_sum")))  # fmt: skip
    assert images(after) - images(before) == 2


def test_bad_grpc_requests_get_rests_messages_as_status_codes(server, photos):
    image = [photos[0].read_bytes()]
    cases = [  # (the model, its inputs, its outputs by each client's module), REST's status, gRPC's code
        (("cats", lambda m: [image_input(m, [b"not an image at all"])], None), "400", "INVALID_ARGUMENT"),
        (("cats", lambda m: [pixel_input(m, np.zeros((1, 3, 16, 16), np.float32))], None), "400", "INVALID_ARGUMENT"),
        (("cats", lambda m: [image_input(m, image)], lambda m: [m.InferRequestedOutput("probs")]), "400",
         "INVALID_ARGUMENT"),
        (("dogs", lambda m: [image_input(m, image)], None), "404", "NOT_FOUND"),
    ]  # fmt: skip
    messages = []
    for (model, inputs, outputs), rest_status, grpc_code in cases:
        asked = {m: dict(inputs=inputs(m), outputs=outputs(m) if outputs else None) for m in (triton_http, triton_grpc)}
        rest = rest_refusal(lambda: server.http.infer(model, **asked[triton_http]))  # noqa: B023
        by_grpc = grpc_refusal(lambda: server.grpc.infer(model, **asked[triton_grpc]))  # noqa: B023
        assert rest[0] == rest_status and by_grpc == (f"StatusCode.{grpc_code}", rest[1]), (rest, by_grpc)
        messages.append(rest[1])
    assert "Cannot read the upload as an image" in messages[0] and "[N, 3, 32, 32]" in messages[1]
    assert "Unknown output 'probs'" in messages[2] and "Unknown model 'dogs'" in messages[3]
    assert grpc_refusal(lambda: server.grpc.get_model_metadata("dogs")) == ("StatusCode.NOT_FOUND", messages[3])

    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'bigtransfer_requests_total{code="INVALID_ARGUMENT",route="grpc/ModelInfer"} 3.0' in metrics
    assert 'bigtransfer_requests_total{code="NOT_FOUND",route="grpc/ModelInfer"} 1.0' in metrics
    access = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    refused = [row for row in access if row["route"] == "grpc/ModelInfer" and row["status"] == "NOT_FOUND"]
    assert refused and refused[0]["path"] == "/inference.GRPCInferenceService/ModelInfer"
    assert refused[0]["client"] == "127.0.0.1" and refused[0]["bytes_in"] > len(image[0])


def test_sigterm_drains_grpc_and_rest_requests_under_way_then_exits_0(model_dir, photos, tmp_path):
    running = GrpcServeProcess(model_dir, tmp_path / "server.log", "--max-delay-ms", "1500")
    image = [photos[0].read_bytes()]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # REST uploads for 1.5 s; gRPC's request waits for it
        by_rest = pool.submit(httpx.post, f"{running.url}/predict", content=slow_upload(image[0], 1.5), timeout=60)
        time.sleep(0.2)
        by_grpc = pool.submit(running.grpc.infer, "cats", [image_input(triton_grpc, image)], client_timeout=60)
        time.sleep(0.3)
        running.process.send_signal(signal.SIGTERM)
        answers = by_grpc.result(timeout=60), by_rest.result(timeout=60)
        code = running.process.wait(timeout=60)
    log = running.log.read_text()
    assert answers[0].as_numpy("logits").shape == (1, 3) and answers[1].status_code == 200
    assert code == 0, log[-2000:]
    access = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(row["route"] == "grpc/ModelInfer" and row["status"] == "OK" and row["ms"] >= 1000 for row in access)
    running.grpc.close()
    running.http.close()


def test_several_processes_share_the_grpc_port(model_dir, photos, tmp_path):
    running = GrpcServeProcess(model_dir, tmp_path / "server.log", "--processes", "2")
    deadline = time.monotonic() + 120
    while running.log.read_text().count("gRPC (KServe v2") < 2 and time.monotonic() < deadline:
        time.sleep(0.5)  # the second process may still be loading the model
    image = [photos[0].read_bytes()]
    clients = [triton_grpc.InferenceServerClient(f"127.0.0.1:{running.grpc_port}") for _ in range(4)]
    answers = [client.infer("cats", [image_input(triton_grpc, image)]).as_numpy("logits") for client in clients]
    for client in clients:
        client.close()
    code, log = running.stop()
    assert all(answer.shape == (1, 3) for answer in answers)
    assert log.count("gRPC (KServe v2") == 2 and code == 0, log[-2000:]


# -- limits and the repository, in process ------------------------------------------------------------------------


def test_grpc_refuses_what_rest_refuses_at_the_limits(served, photos):
    image = photos[0].read_bytes()
    limits = Limits(max_batch_size=1, max_delay_ms=0, max_queue=1, max_body_bytes=50_000, timeout_s=0.4)
    with grpc_beside_rest(Repository.of(slowed(served, 0.25), limits)) as (rest, client, _):
        code, message = grpc_refusal(lambda: client.infer("cats", [image_input(triton_grpc, [b"\xff" * 60_000])]))
        assert code == "StatusCode.RESOURCE_EXHAUSTED" and "50000" in message  # gRPC's own refusal, as Triton's
        assert rest.post("/predict", content=b"\xff" * 60_000).status_code == 413

        code, message = grpc_refusal(lambda: client.infer("cats", [image_input(triton_grpc, [image] * 2)]))
        assert code == "StatusCode.RESOURCE_EXHAUSTED" and "at most 1 (--max-queue)" in message

        ask = lambda _: client.infer("cats", [image_input(triton_grpc, [image])])  # noqa: E731
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            outcomes = [pool.submit(ask, turn) for turn in range(4)]
            refused = [future.exception() for future in outcomes if future.exception() is not None]
        assert len(refused) < 4 and any(error.status() == "StatusCode.UNAVAILABLE" for error in refused), refused
        full = next(error for error in refused if error.status() == "StatusCode.UNAVAILABLE")
        assert "--max-queue 1" in full.message()  # QueueFull's words, as REST's 503 has them

    with grpc_beside_rest(Repository.of(slowed(served, 1.0), Limits(timeout_s=0.3))) as (rest, client, _):
        code, message = grpc_refusal(lambda: client.infer("cats", [image_input(triton_grpc, [image])]))
        assert (
            code == "StatusCode.DEADLINE_EXCEEDED" and message == rest.post("/predict", content=image).json()["error"]
        )


def test_a_repository_of_two_models_loads_unloads_and_infers_over_grpc(model_dir, photos):
    repository = Repository(Limits(max_delay_ms=0), explicit=True)  # load and unload allowed
    repository.add("cats", {"1": model_dir})
    repository.add("kittens", {"1": model_dir, "2": model_dir})
    repository.load_now("cats")
    image = [photos[0].read_bytes()]
    with grpc_beside_rest(repository) as (rest, client, address), grpc.insecure_channel(address) as channel:
        assert client.get_model_repository_index(as_json=True)["models"] == [
            {"name": "cats", "version": "1", "state": "READY"},
            {"name": "kittens", "version": "1", "state": "UNAVAILABLE", "reason": "not loaded"},
            {"name": "kittens", "version": "2", "state": "UNAVAILABLE", "reason": "not loaded"},
        ]
        assert not client.is_model_ready("kittens") and client.is_server_ready()
        code, message = grpc_refusal(lambda: client.infer("kittens", [image_input(triton_grpc, image)]))
        assert code == "StatusCode.UNAVAILABLE" and message == rest.get("/v2/models/kittens").json()["error"]
        client.load_model("kittens")
        assert client.is_model_ready("kittens") and client.is_model_ready("kittens", "2")
        ready = service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
            service_pb2.RepositoryIndexRequest(ready=True), timeout=10
        )  # tritonclient does not ask for ready models only
        assert [(row.name, row.version) for row in ready.models] == [("cats", "1"), ("kittens", "1"), ("kittens", "2")]
        cats = client.infer("cats", [image_input(triton_grpc, image)])
        kittens = client.infer("kittens", [image_input(triton_grpc, image)], model_version="1")
        assert kittens.get_response().model_version == "1"
        assert client.infer("kittens", [image_input(triton_grpc, image)]).get_response().model_version == "2"
        assert np.abs(cats.as_numpy("logits") - kittens.as_numpy("logits")).max() < 1e-5
        client.unload_model("cats")
        assert not client.is_model_ready("cats")
        assert grpc_refusal(lambda: client.infer("cats", [image_input(triton_grpc, image)]))[0] == (
            "StatusCode.UNAVAILABLE")  # fmt: skip
        code, message = grpc_refusal(lambda: client.load_model("lions"))
        assert code == "StatusCode.NOT_FOUND" and "Unknown model 'lions'" in message


# -- the command line -----------------------------------------------------------------------------------------------


def test_a_grpc_port_in_use_or_equal_to_the_http_port_fails_in_one_line_before_the_model_loads(tmp_path):
    def serve(*options):
        command = [sys.executable, "-m", "bigtransfer", "serve", str(tmp_path / "no-model"), *options]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = serve("--port", str(free_port()), "--grpc-port", str(port))  # no model: it never got that far
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"bigtransfer serve: port {port} on 127.0.0.1 is in use: stop what holds it or pick another with --grpc-port"
    ]
    same = free_port()
    result = serve("--port", str(same), "--grpc-port", str(same))
    assert result.returncode == 2 and result.stderr.splitlines() == [
        f"bigtransfer serve: --grpc-port {same} is the HTTP --port too: give gRPC a port of its own"
    ]
