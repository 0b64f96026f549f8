"""The inference server: KServe v2 REST (as Triton speaks it), a simple /predict, a page to try the model, health,
and Prometheus metrics — a Starlette app run by uvicorn, with dynamic batching in front of the model.

Every route answers through `_observed`: it refuses a Host or a page's Origin the server does not trust (403,
see trust.py), bounds the request's time, maps failures to their HTTP status (400 bad input, 404 unknown model,
413 body too large, 415 a form's content type for JSON, 503 queue full with Retry-After, 504 timeout), counts the
answer and its latency, and writes one JSON line to the access log. A bad request never reaches the model.
Starlette's own refusals (no such route, a method the route does not take) answer in the same JSON body.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
import zlib
from collections.abc import Awaitable, Callable
from importlib import resources

import numpy as np
import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .._util.package import package_version
from ..inference.pipelines import ranked
from . import admission
from .admission import DecodeBudget, ImagePlaces
from .batching import BatchRecord, DynamicBatcher, QueueFull
from .kserve import HEADER_LENGTH, ProtocolError, RequestedOutput, classification_strings, parse_request, response_body
from .model import ServedModel
from .trust import Trust

access_log = logging.getLogger("bigtransfer.serve.access")
logger = logging.getLogger(__name__)
OUTPUTS = ("logits", "scores")
TOP_K = 5
WHAT_TO_POST = {  # by route: what a request sent with the wrong method is told to send instead
    "predict": "POST an image, as the body or as a multipart file field (e.g. curl -F image=@cat.jpg)",
    "infer": "POST a KServe v2 inference request (JSON tensors, or the binary-tensor extension)",
}
AS_A_FILE_FIELD = "send the image as a file field (e.g. -F image=@cat.jpg)"
# what a web page may POST anywhere without asking the server first (no CORS preflight): never JSON tensors
FORM_TYPES = ("text/plain", "multipart/form-data", "application/x-www-form-urlencoded")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one server accepts and how it batches (the `serve` options)."""

    max_batch_size: int = 32  # images per forward pass
    max_delay_ms: float = 5.0  # how long the first request of a batch waits for others
    max_queue: int = 256  # images under way (being decoded, waiting for the model, in it); beyond it, 503
    max_body_bytes: int = 20 * 2**20  # per request; beyond it, 413
    timeout_s: float = 30.0  # per request; beyond it, 504

    def __post_init__(self):
        if (
            min(self.max_batch_size, self.max_queue, self.max_body_bytes) < 1
            or self.max_delay_ms < 0
            or self.timeout_s <= 0
        ):
            raise ValueError(f"Server limits out of range: {self}.")


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class Metrics:
    """Prometheus metrics of one server process, in its own registry (several apps may live in one process)."""

    def __init__(self, batcher: DynamicBatcher, max_batch_size: int):
        import prometheus_client as prometheus

        self.prometheus = prometheus
        self.registry = prometheus.CollectorRegistry()
        self.requests = prometheus.Counter("bigtransfer_requests", "Requests answered, by route and HTTP status.",
                                           ["route", "code"], registry=self.registry)  # fmt: skip
        self.latency = prometheus.Histogram("bigtransfer_request_seconds", "Time to answer a request, by route.",
                                            ["route"], registry=self.registry,
                                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))  # fmt: skip
        sizes = sorted({1, *(2**i for i in range(12) if 2**i < max_batch_size), max_batch_size})
        self.batch_images = prometheus.Histogram("bigtransfer_batch_images", "Images per forward pass.",
                                                 registry=self.registry, buckets=sizes)  # fmt: skip
        self.batch_seconds = prometheus.Histogram("bigtransfer_batch_seconds", "Time of one forward pass.",
                                                  registry=self.registry)  # fmt: skip
        queue = prometheus.Gauge("bigtransfer_queue_images", "Images waiting for the model.", registry=self.registry)
        queue.set_function(lambda: batcher.depth)

    def batch(self, record: BatchRecord) -> None:
        self.batch_images.observe(record.images)
        self.batch_seconds.observe(record.seconds)

    def text(self) -> Response:
        return Response(self.prometheus.generate_latest(self.registry), media_type=self.prometheus.CONTENT_TYPE_LATEST)


class InferenceServer:
    """The routes of one model's server."""

    def __init__(self, model: ServedModel, limits: Limits = Limits(), trust: Trust = Trust()):
        self.model, self.limits, self.trust = model, limits, trust
        self.places = ImagePlaces(limits.max_queue)
        self.decoding = DecodeBudget(admission.MAX_DECODE_BYTES())
        self.batcher = DynamicBatcher(model.logits, limits.max_batch_size, limits.max_delay_ms / 1000,
                                      limits.max_queue, on_batch=lambda record: self.metrics.batch(record))  # fmt: skip
        self.metrics = Metrics(self.batcher, limits.max_batch_size)
        self.ready = False
        self.page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    # -- the app ------------------------------------------------------------------------------------------------
    def app(self) -> Starlette:
        routes = [
            ("/", "page", self.show_page, ["GET"]),
            ("/info", "info", self.info, ["GET"]),
            ("/predict", "predict", self.predict, ["POST"]),
            ("/metrics", "metrics", self.show_metrics, ["GET"]),
            ("/v2", "server_metadata", self.server_metadata, ["GET"]),
            ("/v2/health/live", "live", self.live, ["GET"]),
            ("/v2/health/ready", "ready", self.server_ready, ["GET"]),
            ("/v2/models/{name}", "model_metadata", self.model_metadata, ["GET"]),
            ("/v2/models/{name}/versions/{version}", "model_metadata", self.model_metadata, ["GET"]),
            ("/v2/models/{name}/ready", "model_ready", self.model_ready, ["GET"]),
            ("/v2/models/{name}/versions/{version}/ready", "model_ready", self.model_ready, ["GET"]),
            ("/v2/models/{name}/infer", "infer", self.infer, ["POST"]),
            ("/v2/models/{name}/versions/{version}/infer", "infer", self.infer, ["POST"]),
        ]
        # the pages of --allowed-origins get CORS answers (preflights included), so that they can read the answers
        cors = Middleware(CORSMiddleware, allow_origins=list(self.trust.origins), allow_methods=["GET", "POST"],
                          allow_headers=["*"], expose_headers=[HEADER_LENGTH])  # fmt: skip
        return Starlette(
            routes=[Route(path, self._observed(route, handler), methods=methods, name=route)
                    for path, route, handler, methods in routes],
            exception_handlers={HTTPException: _refused_by_routing},
            middleware=[cors] if self.trust.origins else [],
            lifespan=self._lifespan,
        )  # fmt: skip

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette):
        self.batcher.start()
        self.ready = True
        logger.info("serving %s (%s) on %s", self.model.name, self.model.source, self.model.device)
        yield
        self.ready = False  # uvicorn has stopped accepting and the requests under way have been answered
        await self.batcher.stop(self.limits.timeout_s)
        self.decoding.close()

    def _observed(self, route: str, handler: Callable[[Request], Awaitable[Response]]) -> Callable:
        async def endpoint(request: Request) -> Response:
            began = time.perf_counter()
            try:
                refusal = self.trust.refusal(request.method, request.headers, route)
                if refusal is not None:
                    raise HTTPError(403, refusal)
                response = await asyncio.wait_for(handler(request), self.limits.timeout_s)
            except HTTPError as error:
                response = _error(error.status, str(error), error.headers)
            except ProtocolError as error:
                response = _error(400, str(error))
            except QueueFull as error:
                response = _error(503, str(error), {"Retry-After": "1"})
            except asyncio.TimeoutError:
                response = _error(
                    504, f"The request took longer than the server's limit of {self.limits.timeout_s:g} s."
                )
            except Exception:  # a bug, not the client's fault: logged with its traceback, answered 500
                logger.exception("%s %s failed", request.method, request.url.path)
                response = _error(500, "The server failed on this request; its log has the details.")
            seconds = time.perf_counter() - began
            if route != "metrics":
                self.metrics.requests.labels(route, str(response.status_code)).inc()
                self.metrics.latency.labels(route).observe(seconds)
            access_log.info(json.dumps({
                "time": round(time.time(), 3), "client": request.client.host if request.client else None,
                "method": request.method, "path": request.url.path, "route": route, "status": response.status_code,
                "ms": round(seconds * 1000, 2), "bytes_in": int(request.headers.get("content-length") or 0),
            }))  # fmt: skip
            return response

        return endpoint

    # -- pages, health, metadata --------------------------------------------------------------------------------
    async def show_page(self, request: Request) -> Response:
        return HTMLResponse(self.page)

    async def info(self, request: Request) -> Response:
        return JSONResponse({**self.model.info(), "limits": dataclasses.asdict(self.limits)})

    async def show_metrics(self, request: Request) -> Response:
        return self.metrics.text()

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def server_ready(self, request: Request) -> Response:
        return JSONResponse({"ready": self.ready}, status_code=200 if self.ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "bigtransfer", "version": package_version(),
                             "extensions": ["classification", "binary_tensor_data"]})  # fmt: skip

    async def model_metadata(self, request: Request) -> Response:
        self._check_model(request)
        height, width, classes = self.model.height, self.model.width, len(self.model.labels)
        return JSONResponse({
            "name": self.model.name, "versions": ["1"],
            "platform": "pytorch" if hasattr(self.model.network, "parameters") else "onnxruntime_onnx",
            "inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, height, width]},
                       {"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": name, "datatype": "FP32", "shape": [-1, classes]} for name in OUTPUTS],
        })  # fmt: skip

    async def model_ready(self, request: Request) -> Response:
        self._check_model(request)
        return JSONResponse({"name": self.model.name, "ready": self.ready}, status_code=200 if self.ready else 503)

    def _check_model(self, request: Request) -> None:
        name, version = request.path_params["name"], request.path_params.get("version", "1")
        if name != self.model.name or version not in ("1", ""):
            raise HTTPError(
                404, f"Unknown model {name!r} (version {version}): this server serves {self.model.name!r}, version 1."
            )

    # -- inference ------------------------------------------------------------------------------------------------
    async def _body(self, request: Request) -> bytes:
        """The request body, refused (413) past max_body_bytes — by its declared length before reading any."""
        limit = self.limits.max_body_bytes
        too_large = HTTPError(
            413, f"The request body is larger than the server's limit of {limit:,} bytes (--max-body-bytes)."
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding == "identity":
            return body
        if encoding not in ("gzip", "deflate"):
            raise HTTPError(415, f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or none.")
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
        try:
            inflated = inflater.decompress(body, limit + 1)  # the limit holds for what the body inflates to
        except zlib.error as error:
            raise ProtocolError(f"The {encoding} body is corrupt ({error}): send it compressed whole.") from None
        if len(inflated) > limit or inflater.unconsumed_tail:
            raise too_large
        if not inflater.eof or inflater.unused_data:  # zlib does not complain of a stream cut short, or trailing bytes
            raise ProtocolError(
                f"The {encoding} body is corrupt ({'cut short' if not inflater.eof else 'bytes after its end'}): "
                "send it compressed whole."
            )
        return inflated

    async def _pixels(self, images: list[bytes]) -> np.ndarray:
        """Encoded images → N×H×W×3 uint8 pixels (`ServedModel.pixels`), decoded in threads as the decode memory
        allows, one image's turn at a time (so that other requests' images take turns with these), each charged
        what its header says decoding will take (`ServedModel.decoding_bytes`); 400 naming the first unusable
        one, refused from its header before it waits for a turn. Once one image fails to decode, the request's
        images not yet started are never decoded."""
        names = ["the upload"] if len(images) == 1 else [f"image {i} of the request" for i in range(len(images))]
        failed = threading.Event()

        def pixels(data: bytes, name: str) -> np.ndarray | None:
            if failed.is_set():
                return None  # the request fails with the earlier image's error
            try:
                return self.model.pixels(data, name)
            except Exception:
                failed.set()
                raise

        decodes = []
        try:
            for data, name in zip(images, names):
                if failed.is_set():
                    break
                decodes.append(await self.decoding.start(self.model.decoding_bytes(data, name), pixels, data, name))
            decoded = await asyncio.gather(*decodes)
        except (ValueError, OSError) as error:
            raise ProtocolError(str(error)) from None
        finally:
            for decode in decodes:
                decode.cancel()  # those not started yet; a running decode finishes, its memory counted till then
        return np.stack(decoded)

    def _admit(self, need: Callable[[int], None], images: int) -> None:
        """Places for a request's `images` (of those under way, --max-queue), or 413/503 before its body is read
        (one image) or decoded (all of them)."""
        if images > self.limits.max_queue:
            raise HTTPError(413, f"{images} images in one request: at most {self.limits.max_queue} (--max-queue).")
        need(images)

    async def _logits(self, pixels: np.ndarray) -> torch.Tensor:
        """Logits (float32, on the CPU) through the batcher (its images were admitted); a request larger than a
        batch goes in batch-sized parts, all withdrawn when one fails."""
        size = self.limits.max_batch_size
        parts = [
            asyncio.ensure_future(self.batcher.run(pixels[start : start + size]))
            for start in range(0, len(pixels), size)
        ]
        try:
            return torch.cat(await asyncio.gather(*parts))
        except BaseException:
            for part in parts:
                part.cancel()
            raise

    async def predict(self, request: Request) -> Response:
        with self.places.for_request() as need:
            return await self._predict(request, need)

    async def _predict(self, request: Request, need: Callable[[int], None]) -> Response:
        began = time.perf_counter()
        top_k = _positive_int(request.query_params.get("top_k", str(TOP_K)), "top_k")
        self._admit(need, 1)
        body = await self._body(request)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            request._body = body  # the form parser reads the body already checked against the limit
            try:
                form = await request.form()
            except HTTPException as error:  # Starlette's answer to a malformed form: the client's fault, not ours
                raise ProtocolError(f"The multipart form cannot be read ({error.detail}): {AS_A_FILE_FIELD}.") from None
            uploads = [value for value in form.values() if hasattr(value, "read")]
            if not uploads:
                raise ProtocolError(f"The form holds no file: {AS_A_FILE_FIELD}.")
            body = await uploads[0].read()
        if not body:
            raise ProtocolError("No image: POST the image's bytes as the body, or as a multipart file field.")
        scores = self.model.scores(await self._logits(await self._pixels([body])))
        (labels,) = ranked(scores, top_k, self.model.network.config.id2label)  # as predict ranks
        return JSONResponse({
            "model": self.model.name, "scores": self.model.score_function, "labels": labels,
            "milliseconds": round((time.perf_counter() - began) * 1000, 2),
        })  # fmt: skip

    async def infer(self, request: Request) -> Response:
        with self.places.for_request() as need:
            return await self._infer(request, need)

    async def _infer(self, request: Request, need: Callable[[int], None]) -> Response:
        self._check_model(request)
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type in FORM_TYPES:
            raise HTTPError(415, f"An infer request is JSON, not {media_type}: send Content-Type: application/json "
                                 "(curl: -H 'Content-Type: application/json'), or application/octet-stream with "
                                 "binary tensors.")  # fmt: skip
        self._admit(need, 1)
        parsed = parse_request(await self._body(request), request.headers.get(HEADER_LENGTH))
        if len(parsed.inputs) != 1:
            raise ProtocolError("Send exactly one input: pixel_values (FP32 N×3×H×W) or image (BYTES, encoded images).")
        tensor = parsed.inputs[0]
        self._admit(need, len(tensor.value) if tensor.datatype == "BYTES" else (tensor.shape or [1])[0])
        if tensor.name == "image" and tensor.datatype == "BYTES":
            pixels = await self._pixels(list(tensor.value)) if tensor.value else None
        elif tensor.name == "pixel_values" and tensor.datatype == "FP32":
            expected = [3, self.model.height, self.model.width]
            if len(tensor.shape) != 4 or tensor.shape[1:] != expected:
                raise ProtocolError(
                    f"pixel_values must have shape [N, {', '.join(map(str, expected))}], got {tensor.shape}."
                )
            pixels = np.asarray(tensor.value, dtype=np.float32)
            if not np.isfinite(pixels).all():
                raise ProtocolError("pixel_values holds NaN or infinite values.")
        else:
            raise ProtocolError(
                f"Unknown input {tensor.name!r} ({tensor.datatype}): use pixel_values (FP32) or image (BYTES)."
            )
        if pixels is None or not len(pixels):
            raise ProtocolError("The input holds no image.")
        logits = await self._logits(pixels)
        if tensor.name == "pixel_values" and not torch.isfinite(logits).all():  # JSON has no NaN: out-of-range pixels
            raise ProtocolError(
                "The model's output for these pixel_values is not finite: send normalised pixels (values within a "
                f"few units of 0; the largest here is {np.abs(pixels).max():g})."
            )
        values = {"logits": logits.numpy(), "scores": self.model.scores(logits).numpy()}  # views, no copies
        outputs = []
        for output in parsed.outputs or [RequestedOutput(name, parsed.binary_default, 0) for name in OUTPUTS]:
            if output.name not in values:
                raise ProtocolError(f"Unknown output {output.name!r}: this model has {', '.join(OUTPUTS)}.")
            array = values[output.name]
            if output.classification > 0:
                array = classification_strings(array, output.classification, self.model.labels)
            outputs.append((output.name, array, output.binary))
        body, headers = response_body(self.model.name, parsed.id, outputs)
        return Response(body, headers=headers)


def _positive_int(text: str, name: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ProtocolError(f"{name} must be a whole number ≥ 1, got {text!r}.")
    return int(text)


async def _refused_by_routing(request: Request, refusal: HTTPException) -> Response:
    """Starlette's own answers (no such route; a method the route does not take) in our error body, with the fix."""
    path = request.url.path
    if refusal.status_code == 405:
        route = request.scope["route"].name  # the route whose path matched
        allowed = " or ".join(sorted(refusal.headers["Allow"].split(", ")))
        message = f"{request.method} {path} is not allowed: {WHAT_TO_POST.get(route, f'use {allowed}')}."
    elif refusal.status_code == 404:
        message = (
            f"No route {path}: this server answers GET / (a page to try the model), POST /predict, the KServe v2 "
            "routes under /v2, and GET /metrics."
        )
    else:
        message = refusal.detail
    return _error(refusal.status_code, message, refusal.headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """KServe's error body: {"error": message}."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)
