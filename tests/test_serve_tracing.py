"""OpenTelemetry traces of `bigtransfer serve` (--otlp-endpoint): one server span per request that continues the
caller's traceparent, its stages as children (decode, queue_wait, forward, encode), the forward pass shared by a
batch's requests — read back with the SDK's in-memory exporter, and once over real OTLP/HTTP; off, nothing of
OpenTelemetry is even imported."""

from __future__ import annotations

import base64
import concurrent.futures
import http.server
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from PIL import Image
from tritonclient.utils import InferenceServerException

from bigtransfer.cli import main as cli
from bigtransfer.serve.model import ServedModel
from bigtransfer.serve.repository import Repository
from bigtransfer.serve.tracing import OpenTelemetryTracing, exporting_to, traces_url
from helpers import ServeProcess, client_for, free_port, run_python, save_tiny_classifier
from test_serve_grpc import grpc_beside_rest, image_input

TRACE_ID, CALLER_SPAN_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"
STAGES = ["decode", "queue_wait", "forward", "encode"]  # in the order a request meets them


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("traced") / "cats")


@pytest.fixture(scope="module")
def served(model_dir):
    return ServedModel(model_dir, "cpu")


@pytest.fixture(scope="module")
def photo() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def exporter():
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OpenTelemetryTracing(provider)


def roots_and_children(spans) -> list[tuple]:
    """(server span, its children by start time) for each request, in the order the requests were answered."""
    roots = [span for span in spans if span.kind == SpanKind.SERVER]
    return [(root, sorted((span for span in spans if span.parent is not None and span.parent.span_id ==
                           root.context.span_id), key=lambda span: span.start_time)) for root in roots]  # fmt: skip


def check_request_trace(root, children, name: str, images: int) -> None:
    assert root.name == name and root.status.status_code != StatusCode.ERROR
    assert {key: root.attributes[key] for key in ("model", "model_version", "images", "http.response.status_code")} \
        == {"model": "cats", "model_version": "1", "images": images, "http.response.status_code": 200}  # fmt: skip
    assert [span.name for span in children] == STAGES
    for span in children:
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time, span.name
        assert span.context.trace_id == root.context.trace_id
    queue_wait, forward = children[1], children[2]
    assert queue_wait.end_time == forward.start_time and forward.attributes["batch_images"] == images
    assert children[0].end_time <= queue_wait.start_time and forward.end_time <= children[3].start_time


def test_a_predict_request_is_one_server_span_continuing_the_callers_trace_with_its_four_stages(
    served, photo, tracing, exporter
):
    with client_for(served, tracing, max_delay_ms=0) as client:
        answer = client.post("/predict", content=photo, headers={"traceparent": TRACEPARENT})
        assert answer.status_code == 200
        assert client.get("/v2/health/ready").status_code == 200  # probes are not traced
    ((root, children),) = roots_and_children(exporter.get_finished_spans())
    check_request_trace(root, children, "POST /predict", images=1)
    assert f"{root.context.trace_id:032x}" == TRACE_ID and f"{root.parent.span_id:016x}" == CALLER_SPAN_ID
    assert root.parent.is_remote and root.attributes["http.route"] == "/predict"


def test_an_infer_request_of_two_images_starts_its_own_trace_without_a_traceparent(served, photo, tracing, exporter):
    images = [base64.b64encode(photo).decode()] * 2
    request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": images}]}
    with client_for(served, tracing, max_delay_ms=0) as client:
        assert client.post("/v2/models/cats/infer", json=request).status_code == 200
    ((root, children),) = roots_and_children(exporter.get_finished_spans())
    check_request_trace(root, children, "POST /v2/models/{name}/infer", images=2)
    assert root.parent is None


def test_requests_sharing_one_batch_have_forward_spans_of_the_same_times(served, photo, tracing, exporter):
    # the batch holds two images: the first request waits (up to 5 s) for the second, then both go together
    with (
        client_for(served, tracing, max_batch_size=2, max_delay_ms=5000) as client,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        answers = list(pool.map(lambda _: client.post("/predict", content=photo), range(2)))
    assert [answer.status_code for answer in answers] == [200, 200]
    (first, first_stages), (second, second_stages) = roots_and_children(exporter.get_finished_spans())
    assert first.context.trace_id != second.context.trace_id  # two requests, two traces
    forwards = [next(span for span in stages if span.name == "forward") for stages in (first_stages, second_stages)]
    assert forwards[0].start_time == forwards[1].start_time and forwards[0].end_time == forwards[1].end_time
    assert [span.attributes["batch_images"] for span in forwards] == [2, 2]


def test_a_refused_request_is_traced_with_its_status_and_a_server_failure_marks_the_span(served, tracing, exporter):
    broken = ServedModel.__new__(ServedModel)
    broken.__dict__.update(served.__dict__)
    broken.logits = lambda batch: 1 / 0
    with client_for(broken, tracing, warmup_batch_sizes=()) as client:  # its warm-up would fail
        assert client.post("/predict", content=b"not an image").status_code == 400
        request = {"inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [1, 3, 32, 32],
                               "data": [0.0] * 3 * 32 * 32}]}  # fmt: skip
        assert client.post("/v2/models/cats/infer", json=request).status_code == 500
    (refused, refused_stages), (failed, failed_stages) = roots_and_children(exporter.get_finished_spans())
    assert refused.attributes["http.response.status_code"] == 400 and refused.status.status_code != StatusCode.ERROR
    assert [span.name for span in refused_stages] == ["decode"]  # the image failed there
    assert failed.attributes["http.response.status_code"] == 500 and failed.status.status_code == StatusCode.ERROR
    assert [span.name for span in failed_stages] == ["queue_wait", "forward"]  # pixel_values need no decoding


def test_a_grpc_model_infer_is_traced_as_rest_infer_is_continuing_the_traceparent_of_its_metadata(
    served, photo, tracing, exporter
):
    with grpc_beside_rest(Repository.of(served), tracing) as (_, client, _):
        assert client.is_server_live()  # health is not traced
        answer = client.infer("cats", [image_input(triton_grpc, [photo, photo])], headers={"traceparent": TRACEPARENT})
        assert answer.as_numpy("logits").shape == (2, 3)
        with pytest.raises(InferenceServerException):
            client.infer("dogs", [image_input(triton_grpc, [photo])])
    (root, children), (refused, refused_stages) = roots_and_children(exporter.get_finished_spans())
    assert root.name == "inference.GRPCInferenceService/ModelInfer" and root.status.status_code != StatusCode.ERROR
    assert {key: root.attributes[key] for key in ("rpc.system", "rpc.method", "rpc.grpc.status_code", "model", "images")} \
        == {"rpc.system": "grpc", "rpc.method": "ModelInfer", "rpc.grpc.status_code": 0, "model": "cats", "images": 2}  # fmt: skip
    assert [span.name for span in children] == STAGES and children[2].attributes["batch_images"] == 2
    assert f"{root.context.trace_id:032x}" == TRACE_ID and f"{root.parent.span_id:016x}" == CALLER_SPAN_ID
    assert (
        refused.attributes["rpc.grpc.status_code"] == 5 and refused.status.status_code != StatusCode.ERROR
    )  # NOT_FOUND
    assert refused_stages == [] and refused.parent is None


def test_without_otlp_endpoint_nothing_of_opentelemetry_is_imported(model_dir, photo):
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})  # helpers
from bigtransfer.cli import build_parser
from bigtransfer.serve.model import ServedModel
from helpers import client_for
build_parser().parse_args(["serve", "{model_dir}"])
with client_for(ServedModel("{model_dir}", "cpu")) as client:
    assert client.post("/predict", content={photo!r}).status_code == 200
loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
assert not loaded, loaded
print("no opentelemetry")
"""
    done = run_python(code)
    assert done.returncode == 0 and "no opentelemetry" in done.stdout, done.stderr[-3000:]


def test_the_service_name_is_bigtransfer_unless_otel_service_name_says_otherwise(monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    names = []
    for named in (None, "cats-api"):
        if named:
            monkeypatch.setenv("OTEL_SERVICE_NAME", named)
        tracing = exporting_to("http://127.0.0.1:4318")
        names.append(tracing.provider.resource.attributes["service.name"])
        tracing.shutdown()
    assert names == ["bigtransfer", "cats-api"]


def test_the_endpoint_is_a_collectors_base_url_and_a_wrong_one_fails_in_one_line(capsys):
    assert traces_url("http://collector:4318") == traces_url("http://collector:4318/") == \
        "http://collector:4318/v1/traces"  # fmt: skip
    assert traces_url("https://otel.example/v1/traces") == "https://otel.example/v1/traces"
    with pytest.raises(SystemExit) as refused:
        cli(["serve", "cats", "--otlp-endpoint", "collector:4318"])
    assert refused.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "is not an http(s) URL" in error and "http://127.0.0.1:4318" in error


def test_a_missing_sdk_is_one_line_naming_the_otel_extra_before_the_model_loads():
    code = f"""
import sys
sys.modules["opentelemetry.exporter.otlp.proto.http.trace_exporter"] = None  # as if the exporter were not installed
from bigtransfer.cli import main
sys.exit(main(["serve", "no-such-model", "--port", "{free_port()}", "--otlp-endpoint", "http://127.0.0.1:4318"]))
"""
    done = run_python(code)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("\n") == 1 and "OpenTelemetry" in done.stderr and ".[otel]" in done.stderr


class Collector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP receiver on 127.0.0.1 that keeps the ExportTraceServiceRequests POSTed to /v1/traces."""

    def __init__(self):
        self.requests: list[ExportTraceServiceRequest] = []
        self.arrived = threading.Event()
        super().__init__(("127.0.0.1", 0), CollectorHandler)


class CollectorHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf":
            self.server.requests.append(ExportTraceServiceRequest.FromString(body))
            self.server.arrived.set()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")  # an empty ExportTraceServiceResponse: all accepted
        self.end_headers()


def test_serve_exports_its_spans_over_otlp_http_to_a_collector(model_dir, photo, tmp_path, monkeypatch):
    import httpx

    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    collector = Collector()
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    running = ServeProcess(model_dir, tmp_path / "server.log", "--otlp-endpoint", endpoint,
                           env={"OTEL_BSP_SCHEDULE_DELAY": "50"})  # fmt: skip
    try:
        answer = httpx.post(f"{running.url}/predict", content=photo, headers={"traceparent": TRACEPARENT}, timeout=30)
        assert answer.status_code == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(exported(collector)) < 1 + len(STAGES):
            collector.arrived.wait(0.2)
    finally:
        code, log = running.stop()
        collector.shutdown()
    assert code == 0, log[-3000:]
    spans = exported(collector)
    (root,) = [span for span in spans if span.kind == span.SPAN_KIND_SERVER]
    assert root.name == "POST /predict" and root.trace_id.hex() == TRACE_ID and root.parent_span_id.hex() == \
        CALLER_SPAN_ID  # fmt: skip
    children = sorted(
        (span for span in spans if span.parent_span_id == root.span_id), key=lambda s: s.start_time_unix_nano
    )
    assert [span.name for span in children] == STAGES
    resource = {
        item.key: item.value.string_value for item in collector.requests[0].resource_spans[0].resource.attributes
    }
    assert resource["service.name"] == "bigtransfer"


def exported(collector: Collector) -> list:
    return [span for request in list(collector.requests) for resource in request.resource_spans
            for scope in resource.scope_spans for span in scope.spans]  # fmt: skip
