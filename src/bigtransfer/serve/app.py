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
import time
import zlib
from collections.abc import Awaitable, Callable
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .._util.package import package_version
from . import tracing
from .batching import BatchRecord
from .kserve import HEADER_LENGTH, ProtocolError, parse_request, response_body
from .repository import Repository
from .service import ModelService, ServeError, refusal
from .tracing import NO_TRACING, NOT_TRACED, TRACED_ROUTES, RequestTrace, Tracing
from .trust import Trust

access_log = logging.getLogger("bigtransfer.serve.access")
logger = logging.getLogger(__name__)
TOP_K = 5
WHAT_TO_POST = {  # by route: what a request sent with the wrong method is told to send instead
    "predict": "POST an image, as the body or as a multipart file field (e.g. curl -F image=@cat.jpg)",
    "infer": "POST a KServe v2 inference request (JSON tensors, or the binary-tensor extension)",
}
AS_A_FILE_FIELD = "send the image as a file field (e.g. -F image=@cat.jpg)"
# what a web page may POST anywhere without asking the server first (no CORS preflight): never JSON tensors
FORM_TYPES = ("text/plain", "multipart/form-data", "application/x-www-form-urlencoded")


class Metrics:
    """Prometheus metrics of one server process, in its own registry (several apps may live in one process)."""

    def __init__(self, repository: Repository, max_batch_size: int):
        import prometheus_client as prometheus

        self.prometheus = prometheus
        self.registry = prometheus.CollectorRegistry()
        self.requests = prometheus.Counter("bigtransfer_requests", "Requests answered, by route and HTTP status.",
                                           ["route", "code"], registry=self.registry)  # fmt: skip
        self.latency = prometheus.Histogram("bigtransfer_request_seconds", "Time to answer a request, by route.",
                                            ["route"], registry=self.registry,
                                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))  # fmt: skip
        sizes = sorted({1, *(2**i for i in range(12) if 2**i < max_batch_size), max_batch_size})
        self.batch_images = prometheus.Histogram("bigtransfer_batch_images", "Images per forward pass, by model.",
                                                 ["model", "version"], registry=self.registry, buckets=sizes)  # fmt: skip
        self.batch_seconds = prometheus.Histogram("bigtransfer_batch_seconds", "Time of one forward pass, by model.",
                                                  ["model", "version"], registry=self.registry)  # fmt: skip
        queue = prometheus.Gauge("bigtransfer_queue_images", "Images waiting for a model.", registry=self.registry)
        queue.set_function(lambda: sum(service.batcher.depth for service in repository.services()))

    def batch(self, service: ModelService, record: BatchRecord) -> None:
        self.batch_images.labels(service.name, service.version).observe(record.images)
        self.batch_seconds.labels(service.name, service.version).observe(record.seconds)

    def text(self) -> Response:
        return Response(self.prometheus.generate_latest(self.registry), media_type=self.prometheus.CONTENT_TYPE_LATEST)


class InferenceServer:
    """The REST routes of a server of a repository of models (one model: `Repository.of(served_model)`), traced
    with `tracing` (tracing.py; off by default)."""

    def __init__(self, repository: Repository, trust: Trust = Trust(), tracing: Tracing = NO_TRACING):
        self.repository, self.limits, self.trust, self.tracing = repository, repository.limits, trust, tracing
        self.metrics = Metrics(repository, self.limits.max_batch_size)
        repository.on_batch = self.metrics.batch
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
        await self.repository.start()
        for service in self.repository.services():
            logger.info("serving %s version %s (%s) on %s", service.name, service.version, service.model.source,
                        service.model.device)  # fmt: skip
        yield
        await self.repository.stop()  # uvicorn has stopped accepting and the requests under way have been answered
        self.tracing.shutdown()  # exports the spans not sent yet

    def _observed(self, route: str, handler: Callable[[Request], Awaitable[Response]]) -> Callable:
        async def endpoint(request: Request) -> Response:
            if route not in TRACED_ROUTES:
                return await respond(request, NOT_TRACED)
            path = request.scope["route"].path
            with self.tracing.request(f"{request.method} {path}", request.headers) as trace:
                trace.set({"http.request.method": request.method, "http.route": path})
                return await respond(request, trace)

        async def respond(request: Request, trace: RequestTrace) -> Response:
            began = time.perf_counter()
            try:
                refused = self.trust.refusal(request.method, request.headers, route)
                if refused is not None:
                    raise ServeError(403, refused)
                response = await asyncio.wait_for(handler(request), self.limits.timeout_s)
            except Exception as error:
                answer = refusal(error, self.limits)
                if answer is None:  # a bug, not the client's fault: logged with its traceback, answered 500
                    logger.exception("%s %s failed", request.method, request.url.path)
                    answer = ServeError(500, "The server failed on this request; its log has the details.")
                response = _error(answer.status, str(answer), answer.headers)
            trace.answered(response.status_code)
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

    def _service(self, request: Request) -> ModelService:
        """The model version a /v2/models route names."""
        return self.repository.get(request.path_params["name"], request.path_params.get("version"))

    def _default_service(self) -> ModelService:
        """The model of /predict, /info and the page: the server's one model."""
        services = self.repository.services()
        if len({service.name for service in services}) != 1:
            names = ", ".join(sorted(self.repository.entries))
            raise ServeError(400, f"This server serves several models ({names}): use /v2/models/NAME/infer.")
        return self.repository.get(services[0].name)

    # -- pages, health, metadata --------------------------------------------------------------------------------
    async def show_page(self, request: Request) -> Response:
        return HTMLResponse(self.page)

    async def info(self, request: Request) -> Response:
        return JSONResponse({**self._default_service().model.info(), "limits": dataclasses.asdict(self.limits)})

    async def show_metrics(self, request: Request) -> Response:
        return self.metrics.text()

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def server_ready(self, request: Request) -> Response:
        ready = self.repository.ready
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "bigtransfer", "version": package_version(),
                             "extensions": ["classification", "binary_tensor_data"]})  # fmt: skip

    async def model_metadata(self, request: Request) -> Response:
        return JSONResponse(self._service(request).metadata())

    async def model_ready(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            ready = self._service(request).ready
        except ServeError as error:
            if error.status != 503:
                raise
            ready = False
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)

    # -- inference ------------------------------------------------------------------------------------------------
    async def _body(self, request: Request) -> bytes:
        """The request body, refused (413) past max_body_bytes — by its declared length before reading any."""
        limit = self.limits.max_body_bytes
        too_large = ServeError(
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
            raise ServeError(415, f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or none.")
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

    async def predict(self, request: Request) -> Response:
        began = time.perf_counter()
        top_k = _positive_int(request.query_params.get("top_k", str(TOP_K)), "top_k")
        service = self._default_service()
        with service.request() as need:
            need(1)
            body = await self._body(request)
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                request._body = body  # the form parser reads the body already checked against the limit
                try:
                    form = await request.form()
                except HTTPException as error:  # Starlette's answer to a malformed form: the client's fault, not ours
                    raise ProtocolError(
                        f"The multipart form cannot be read ({error.detail}): {AS_A_FILE_FIELD}."
                    ) from None
                uploads = [value for value in form.values() if hasattr(value, "read")]
                if not uploads:
                    raise ProtocolError(f"The form holds no file: {AS_A_FILE_FIELD}.")
                body = await uploads[0].read()
            if not body:
                raise ProtocolError("No image: POST the image's bytes as the body, or as a multipart file field.")
            labels = await service.classify(body, top_k)
        with tracing.current().stage("encode"):
            return JSONResponse({
                "model": service.name, "scores": service.model.score_function, "labels": labels,
                "milliseconds": round((time.perf_counter() - began) * 1000, 2),
            })  # fmt: skip

    async def infer(self, request: Request) -> Response:
        service = self._service(request)
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type in FORM_TYPES:
            raise ServeError(415, f"An infer request is JSON, not {media_type}: send Content-Type: application/json "
                                  "(curl: -H 'Content-Type: application/json'), or application/octet-stream with "
                                  "binary tensors.")  # fmt: skip
        with service.request() as need:
            need(1)
            parsed = parse_request(await self._body(request), request.headers.get(HEADER_LENGTH))
            values = await service.infer(parsed.inputs, need)
        with tracing.current().stage("encode"):
            body, headers = response_body(service.name, parsed.id, service.outputs(values, parsed.outputs,
                                                                                    parsed.binary_default))  # fmt: skip
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
