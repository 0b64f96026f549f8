"""OpenTelemetry traces of the requests that reach a model, opt-in (`serve --otlp-endpoint URL`).

Each request of a traced route is one server span named like its route ("POST /v2/models/{name}/infer"), which
continues the caller's trace (W3C traceparent, read from a header mapping: REST's headers, gRPC's metadata), with
child spans for the stages of its way: decode, queue_wait, forward, encode. The requests of one batch share one
forward pass, so their forward spans carry the same times (and batch_images). The stages find their request's
trace in a context variable, so the code between the route and the batcher passes nothing along. Off (the
default), every request gets `NOT_TRACED`, whose methods do nothing, and the OpenTelemetry SDK is never imported.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .._util.package import optional_import, package_version

if TYPE_CHECKING:
    from .batching import Pending

TRACED_ROUTES = frozenset({"predict", "infer"})  # not the probes and scrapes every few seconds: they would drown
TRACES_PATH = "/v1/traces"  # OTLP/HTTP's path for spans, below a collector's base URL


class RequestTrace:
    """The trace of one request, which its stages add to; this one records nothing (tracing is off)."""

    def set(self, attributes: Mapping[str, Any]) -> None:
        pass

    def answered(self, status: int) -> None:
        pass

    def answered_rpc(self, code: int, server_fault: bool) -> None:
        pass

    def stage(self, name: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def batched(self, pending: Pending) -> None:
        pass


NOT_TRACED = RequestTrace()
_current: contextvars.ContextVar[RequestTrace] = contextvars.ContextVar("bigtransfer_trace", default=NOT_TRACED)


def current() -> RequestTrace:
    """The trace of the request this code runs for (`NOT_TRACED` outside one, or with tracing off)."""
    return _current.get()


class Tracing:
    """Starts a trace per request; this one does not trace (the default)."""

    def request(self, name: str, headers: Mapping[str, str]) -> contextlib.AbstractContextManager[RequestTrace]:
        return contextlib.nullcontext(NOT_TRACED)

    def shutdown(self) -> None:
        pass


NO_TRACING = Tracing()


class OpenTelemetryTracing(Tracing):
    """Traces requests with `provider` (an OpenTelemetry SDK TracerProvider: the server's own exporter, or a
    test's in-memory one); `shutdown` exports what is left."""

    def __init__(self, provider: Any):
        from opentelemetry import propagate, trace

        self.provider, self._extract, self._server = provider, propagate.extract, trace.SpanKind.SERVER
        self.tracer = provider.get_tracer("bigtransfer.serve", package_version())

    @contextlib.contextmanager
    def request(self, name: str, headers: Mapping[str, str]) -> Iterator[RequestTrace]:
        """The span of one request, a child of the caller's span when `headers` carry a traceparent (the
        propagators of OTEL_PROPAGATORS: W3C trace context and baggage unless told otherwise)."""
        span = self.tracer.start_span(name, context=self._extract(headers), kind=self._server)
        traced = _Traced(self.tracer, span)
        token = _current.set(traced)
        try:
            yield traced
        finally:
            _current.reset(token)
            span.end()

    def shutdown(self) -> None:
        self.provider.shutdown()


class _Traced(RequestTrace):
    def __init__(self, tracer: Any, span: Any):
        from opentelemetry import trace

        self.tracer, self.span, self._error = tracer, span, trace.StatusCode.ERROR
        self._inside = trace.set_span_in_context(span)

    def set(self, attributes: Mapping[str, Any]) -> None:
        self.span.set_attributes(attributes)

    def answered(self, status: int) -> None:
        from opentelemetry.trace import Status

        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:  # a server span fails on the server's errors only, not on the client's (4xx)
            self.span.set_status(Status(self._error))

    def answered_rpc(self, code: int, server_fault: bool) -> None:
        """A gRPC answer: its status code's number; the span fails on the server's faults (INTERNAL), not on
        the client's (INVALID_ARGUMENT, NOT_FOUND…)."""
        from opentelemetry.trace import Status

        self.span.set_attribute("rpc.grpc.status_code", code)
        if server_fault:
            self.span.set_status(Status(self._error))

    def stage(self, name: str) -> contextlib.AbstractContextManager[None]:
        return self.tracer.start_as_current_span(name, context=self._inside)

    def batched(self, pending: Pending) -> None:
        """queue_wait (queued → its batch began) and forward (the batch's pass), with the batch's own times; a
        request withdrawn before its batch ran (timed out) waited until now."""
        began = pending.batch_began_ns
        self._interval("queue_wait", pending.queued_ns, time.time_ns() if began is None else began)
        if began is not None:
            self._interval("forward", began, pending.batch_ended_ns, {"batch_images": pending.batch_images})

    def _interval(self, name: str, start_ns: int, end_ns: int, attributes: Mapping[str, Any] | None = None) -> None:
        span = self.tracer.start_span(name, context=self._inside, start_time=start_ns, attributes=attributes)
        span.end(end_time=end_ns)


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP URL of spans for --otlp-endpoint: a collector's base URL (as OTEL_EXPORTER_OTLP_ENDPOINT
    has it, e.g. http://otel-collector:4318) gets /v1/traces; a URL that ends with it stays as it is."""
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{endpoint!r} is not an http(s) URL: give the OTLP/HTTP address of a collector, e.g. http://127.0.0.1:4318"
        )
    return endpoint if parts.path.rstrip("/").endswith(TRACES_PATH) else endpoint.rstrip("/") + TRACES_PATH


def exporting_to(endpoint: str) -> OpenTelemetryTracing:
    """Tracing that exports spans in batches over OTLP/HTTP to `endpoint` (see `traces_url`). The SDK reads the
    standard OTEL_* variables: the service name (OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES; bigtransfer by
    default), the exporter's headers, timeout and compression, the sampler, the batch sizes and delays."""
    needed = "Tracing (--otlp-endpoint) needs the OpenTelemetry SDK and its OTLP/HTTP exporter"
    sdk = optional_import("opentelemetry.sdk.trace", needed, "otel")
    otlp = optional_import("opentelemetry.exporter.otlp.proto.http.trace_exporter", needed, "otel")
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    detected = dict(Resource.create().attributes)
    if str(detected[SERVICE_NAME]).startswith("unknown_service"):  # the SDK's stand-in when no name was set
        del detected[SERVICE_NAME]
    defaults = Resource({SERVICE_NAME: "bigtransfer", SERVICE_VERSION: package_version()})
    provider = sdk.TracerProvider(resource=defaults.merge(Resource(detected)))
    provider.add_span_processor(BatchSpanProcessor(otlp.OTLPSpanExporter(endpoint=traces_url(endpoint))))
    return OpenTelemetryTracing(provider)
