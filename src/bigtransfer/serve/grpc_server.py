"""gRPC beside REST: KServe v2 / Triton's `inference.GRPCInferenceService` (the stubs tritonclient ships), served
by grpc.aio in the REST server's event loop — so that one ModelService per model version, with its one batcher,
answers both protocols, and REST and gRPC requests share forward passes.

Each RPC is answered as REST's routes are (`app.InferenceServer._observed`): bounded by --timeout, a refusal
(`ServeError`) turned into the gRPC status code of its HTTP status with the same message, a bug logged with its
traceback and answered INTERNAL, every answer counted in the same Prometheus metrics (route "grpc/<RPC>", code
the status code's name) and written as one JSON line to the access log; ModelInfer is traced as REST's infer is
(a server span continuing the caller's traceparent, sent as gRPC metadata). Messages larger than --max-body-bytes
are refused by gRPC itself (RESOURCE_EXHAUSTED, as Triton's are) before they are read whole.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from . import kserve_grpc, tracing
from .app import InferenceServer, access_log, kserve_server_metadata
from .service import SERVER_FAILED, ServeError, refusal
from .tracing import NO_TRACING

logger = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"
STATUS_CODES = {  # a refusal's HTTP status → its gRPC status code (the usual mapping; Triton's for its errors)
    400: grpc.StatusCode.INVALID_ARGUMENT, 403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED, 415: grpc.StatusCode.INVALID_ARGUMENT,
    501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
}  # fmt: skip
NO_SHARED_MEMORY = "Shared memory is not supported by this server: send the tensors in the request."
Answer = Callable[[Any, Any, Any], Awaitable[Any]]


def rpc(bounded: bool = True, traced: bool = False) -> Callable[[Answer], Answer]:
    """An RPC answered as REST's routes are; `bounded`: within --timeout (a model load is not: cut short, it
    would leave the model half loaded); `traced`: a span of its own when the server traces (as REST's infer)."""

    def decorate(answer: Answer) -> Answer:
        name = answer.__name__

        @functools.wraps(answer)
        async def observed(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            began, code = time.perf_counter(), None
            metadata = dict(context.invocation_metadata() or ())  # lower-case keys, as the W3C propagator reads
            with (self.tracing if traced else NO_TRACING).request(f"{SERVICE}/{name}", metadata) as trace:
                trace.set({"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": name})
                try:
                    work = answer(self, request, context)
                    response = await (asyncio.wait_for(work, self.limits.timeout_s) if bounded else work)
                    code = grpc.StatusCode.OK
                    trace.answered_rpc(code.value[0], server_fault=False)
                    return response
                except Exception as error:
                    code, message, trailing, status = self.status(error, name)
                    trace.answered_rpc(code.value[0], server_fault=status >= 500)
                    await context.abort(code, message, trailing)
                finally:
                    self.record(name, code, time.perf_counter() - began, request, context)

        return observed

    return decorate


def unimplemented(name: str, message: str) -> Answer:
    """The RPC `name` of Triton's, which this server does not serve: UNIMPLEMENTED, saying what to do instead."""

    async def refuse(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise ServeError(501, message)

    refuse.__name__ = name
    return rpc()(refuse)


class InferenceServicer:
    """GRPCInferenceService's RPCs, on the repository and the metrics of the REST server beside them."""

    def __init__(self, server: InferenceServer):
        self.repository, self.limits, self.metrics = server.repository, server.limits, server.metrics
        self.tracing = server.tracing

    # -- answering ------------------------------------------------------------------------------------------------
    def status(self, error: Exception, name: str) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...], int]:
        """(code, message, trailing metadata, REST's HTTP status) of a failed RPC: REST's refusal, its status
        mapped."""
        answer = refusal(error, self.limits)
        if answer is None:  # a bug, not the client's fault: logged with its traceback, answered INTERNAL
            logger.exception("gRPC %s failed", name)
            answer = ServeError(500, SERVER_FAILED)
        metadata = tuple((header.lower(), value) for header, value in answer.headers.items())  # Retry-After
        return STATUS_CODES.get(answer.status, grpc.StatusCode.INTERNAL), str(answer), metadata, answer.status

    def record(self, name: str, code: grpc.StatusCode | None, seconds: float, request: Any,
               context: grpc.aio.ServicerContext) -> None:  # fmt: skip
        if code is None:  # never answered: the client cancelled, or its own deadline passed
            remaining = context.time_remaining()
            code = (
                grpc.StatusCode.DEADLINE_EXCEEDED
                if remaining is not None and remaining <= 0
                else grpc.StatusCode.CANCELLED
            )
        route = f"grpc/{name}"
        self.metrics.requests.labels(route, code.name).inc()
        self.metrics.latency.labels(route).observe(seconds)
        peer = context.peer() or ""  # "ipv4:127.0.0.1:54321"
        access_log.info(json.dumps({
            "time": round(time.time(), 3), "client": peer.partition(":")[2].rpartition(":")[0] or None,
            "method": "gRPC", "path": f"/{SERVICE}/{name}", "route": route, "status": code.name,
            "ms": round(seconds * 1000, 2), "bytes_in": request.ByteSize() if hasattr(request, "ByteSize") else 0,
        }))  # fmt: skip

    # -- health and metadata ----------------------------------------------------------------------------------------
    @rpc()
    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    @rpc()
    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.repository.ready)

    @rpc()
    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=self.repository.model_ready(request.name, request.version))

    @rpc()
    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(**kserve_server_metadata())

    @rpc()
    async def ModelMetadata(self, request, context):
        return kserve_grpc.model_metadata(self.repository.get(request.name, request.version))

    @rpc()
    async def ModelConfig(self, request, context):
        return kserve_grpc.model_config(self.repository.get(request.name, request.version))

    # -- inference ------------------------------------------------------------------------------------------------
    @rpc(traced=True)
    async def ModelInfer(self, request, context):
        service = self.repository.get(request.model_name, request.model_version)
        with service.request() as places:
            places(1)
            parsed = kserve_grpc.infer_request(request)
            values = await service.infer(parsed.inputs, places)
        with tracing.current().stage("encode"):
            return kserve_grpc.infer_response(service, parsed.id, service.outputs(values, parsed.outputs, True))

    # -- the repository extension ---------------------------------------------------------------------------------
    @rpc()
    async def RepositoryIndex(self, request, context):
        return kserve_grpc.index_response(self.repository.index(ready_only=request.ready))

    @rpc(bounded=False)
    async def RepositoryModelLoad(self, request, context):
        await self.repository.load(request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    @rpc(bounded=False)
    async def RepositoryModelUnload(self, request, context):
        await self.repository.unload(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    # -- what Triton has and this server does not -----------------------------------------------------------------
    ModelStreamInfer = unimplemented(
        "ModelStreamInfer", "ModelStreamInfer is not served here: call ModelInfer per request."
    )
    ModelStatistics = unimplemented("ModelStatistics", "ModelStatistics is not served here: GET /metrics on the HTTP "
                                    "port has the Prometheus counts of requests and batches.")  # fmt: skip
    SystemSharedMemoryStatus = unimplemented("SystemSharedMemoryStatus", NO_SHARED_MEMORY)
    SystemSharedMemoryRegister = unimplemented("SystemSharedMemoryRegister", NO_SHARED_MEMORY)
    SystemSharedMemoryUnregister = unimplemented("SystemSharedMemoryUnregister", NO_SHARED_MEMORY)
    CudaSharedMemoryStatus = unimplemented("CudaSharedMemoryStatus", NO_SHARED_MEMORY)
    CudaSharedMemoryRegister = unimplemented("CudaSharedMemoryRegister", NO_SHARED_MEMORY)
    CudaSharedMemoryUnregister = unimplemented("CudaSharedMemoryUnregister", NO_SHARED_MEMORY)
    TraceSetting = unimplemented(
        "TraceSetting", "TraceSetting is not served here: tracing is set when the server starts."
    )
    LogSettings = unimplemented(
        "LogSettings", "LogSettings is not served here: set --log-level when the server starts."
    )


class GrpcListener:
    """The gRPC server of one server process: started in the REST app's lifespan (after the models), stopped in
    it after REST has drained, letting the RPCs under way finish (up to --timeout). `shared_port`: several
    processes listen on the port (SO_REUSEPORT), the kernel spreading connections among them."""

    def __init__(self, server: InferenceServer, host: str, port: int, shared_port: bool = False):
        self.rest, self.limits, self.shared_port = server, server.limits, shared_port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        options = [("grpc.max_receive_message_length", self.limits.max_body_bytes),
                   ("grpc.so_reuseport", int(self.shared_port))]  # fmt: skip
        self.server = grpc.aio.server(options=options)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.rest), self.server)
        self.server.add_insecure_port(self.address)
        await self.server.start()
        logger.info("gRPC (KServe v2 / Triton's %s) on %s", SERVICE, self.address)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(self.limits.timeout_s)
