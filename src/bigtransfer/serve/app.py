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
import os
import time
import zlib
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Protocol

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
from .service import SERVER_FAILED, ModelService, ServeError, refusal
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
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode: where processes write
# what a web page may POST anywhere without asking the server first (no CORS preflight): never JSON tensors
FORM_TYPES = ("text/plain", "multipart/form-data", "application/x-www-form-urlencoded")


class Listener(Protocol):
    """A protocol served beside REST in the same event loop (and so by the same models and batchers)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def kserve_server_metadata() -> dict[str, Any]:
    """KServe v2 server metadata, alike on REST and gRPC."""
    return {
        "name": "bigtransfer",
        "version": package_version(),
        "extensions": ["classification", "binary_tensor_data", "model_repository"],
    }


class Metrics:
    """Prometheus metrics of one server process, in its own registry (several apps may live in one process) — or,
    when several processes serve (`runner.shared_metrics`: prometheus_client's multiprocess mode), in files that
    every process writes and /metrics sums, whichever process answers it."""

    def __init__(self, repository: Repository, max_batch_size: int):
        import prometheus_client as prometheus
        from prometheus_client import multiprocess

        self.prometheus = prometheus
        self.shared = multiprocess if MULTIPROCESS_ENV in os.environ else None  # the files of several processes
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
        self.queue = prometheus.Gauge("bigtransfer_queue_images", "Images waiting for a model.",
                                      registry=self.registry, multiprocess_mode="livesum")  # fmt: skip
        self.queued = lambda: sum(service.batcher.depth for service in repository.services())
        if self.shared is None:  # a function read at each scrape, which other processes' scrapes cannot call
            self.queue.set_function(self.queued)

    def batch(self, service: ModelService, record: BatchRecord) -> None:
        self.batch_images.labels(service.name, service.version).observe(record.images)
        self.batch_seconds.labels(service.name, service.version).observe(record.seconds)
        if self.shared is not None:  # this process's queue as each pass leaves it, for the others' scrapes
            self.queue.set(self.queued())

    def text(self) -> Response:
        registry = self.registry
        if self.shared is not None:
            self.queue.set(self.queued())
            registry = self.prometheus.CollectorRegistry()
            self.shared.MultiProcessCollector(registry)
        return Response(self.prometheus.generate_latest(registry), media_type=self.prometheus.CONTENT_TYPE_LATEST)

    def close(self) -> None:
        """This process stops serving: its queue leaves the sum."""
        if self.shared is not None:
            self.shared.mark_process_dead(os.getpid())


class InferenceServer:
    """The REST routes of a server of a repository of models (one model: `Repository.of(served_model)`), traced
    with `tracing` (tracing.py; off by default)."""

    def __init__(self, repository: Repository, trust: Trust = Trust(), tracing: Tracing = NO_TRACING):
        self.repository, self.limits, self.trust, self.tracing = repository, repository.limits, trust, tracing
        self.metrics = Metrics(repository, self.limits.max_batch_size)
        repository.on_batch = self.metrics.batch
        self.listeners: list[Listener] = []  # other protocols on this event loop (gRPC), started after the models
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
            ("/v2/repository/index", "repository_index", self.repository_index, ["POST"]),
            ("/v2/repository/models/{name}/load", "repository_load", self.repository_load, ["POST"]),
            ("/v2/repository/models/{name}/unload", "repository_unload", self.repository_unload, ["POST"]),
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
        starting = asyncio.create_task(self._start())  # listening meanwhile: health answers 503 until warmed up
        for listener in self.listeners:  # gRPC too listens while the models warm up, and answers not ready meanwhile
            await listener.start()
        yield
        starting.cancel()
        # uvicorn has stopped accepting and the requests under way have been answered; then the other protocols drain
        for listener in self.listeners:
            await listener.stop()
        await self.repository.stop()
        self.metrics.close()
        self.tracing.shutdown()  # exports the spans not sent yet

    async def _start(self) -> None:
        try:
            await self.repository.start()  # each model warms up before it is ready
        except Exception:
            logger.exception("warming up the models failed: the server stays not ready")
            return
        for service in self.repository.services():
            logger.info("serving %s version %s (%s) on %s", service.name, service.version, service.model.source,
                        service.model.device)  # fmt: skip

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
                    answer = ServeError(500, SERVER_FAILED)
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

    def _default_service(self, request: Request) -> ModelService:
        """The model of /predict, /info and the page: ?model=NAME, or the server's one model."""
        names = sorted(self.repository.entries)
        name = request.query_params.get("model") or (names[0] if len(names) == 1 else None)
        if name is None:
            raise ServeError(400, f"This server serves several models ({', '.join(names)}): name one with ?model=NAME "
                                  "(e.g. /predict?model=NAME), or use /v2/models/NAME/infer.")  # fmt: skip
        return self.repository.get(name)

    # -- pages, health, metadata --------------------------------------------------------------------------------
    async def show_page(self, request: Request) -> Response:
        return HTMLResponse(self.page)

    async def info(self, request: Request) -> Response:
        return JSONResponse({**self._default_service(request).model.info(), "limits": dataclasses.asdict(self.limits)})

    async def show_metrics(self, request: Request) -> Response:
        return self.metrics.text()

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def server_ready(self, request: Request) -> Response:
        ready = self.repository.ready
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(kserve_server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        return JSONResponse(self.repository.metadata(request.path_params["name"], request.path_params.get("version")))

    # -- the repository extension (as Triton speaks it) ---------------------------------------------------------
    async def _options(self, request: Request) -> dict:
        """The optional JSON body of a repository request: {"ready": …} or {"parameters": {…}}."""
        body = await self._body(request)
        try:
            options = json.loads(body) if body.strip() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ProtocolError(f"The request body is not JSON ({error}): send {{}} or nothing.") from None
        if not isinstance(options, dict):
            raise ProtocolError('The request body must be a JSON object, e.g. {"ready": true}.')
        return options

    async def repository_index(self, request: Request) -> Response:
        return JSONResponse(self.repository.index(ready_only=(await self._options(request)).get("ready") is True))

    async def repository_load(self, request: Request) -> Response:
        parameters = (await self._options(request)).get("parameters") or {}
        if "config" in parameters or any(str(key).startswith("file:") for key in parameters):
            raise ProtocolError("A load request's config and files are not supported: the server reads the model "
                                "from its repository folder; change the files there, then load it.")  # fmt: skip
        # shielded: a load slower than the request's timeout answers 504 but finishes, never left half done
        await asyncio.shield(self.repository.load(request.path_params["name"]))
        return Response(status_code=200)

    async def repository_unload(self, request: Request) -> Response:
        await self._options(request)
        await asyncio.shield(self.repository.unload(request.path_params["name"]))
        return Response(status_code=200)

    async def model_ready(self, request: Request) -> Response:
        name = request.path_params["name"]
        ready = self.repository.model_ready(name, request.path_params.get("version"))
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
        service = self._default_service(request)
        with service.request() as places:
            places(1)
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
            labels = await service.classify(body, top_k, places)
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
        with service.request() as places:
            places(1)
            parsed = parse_request(await self._body(request), request.headers.get(HEADER_LENGTH))
            values = await service.infer(parsed.inputs, places)
        with tracing.current().stage("encode"):
            outputs = service.outputs(values, parsed.outputs, parsed.binary_default)
            body, headers = response_body(service.name, service.version, parsed.id, outputs)
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
