"""Running the server: uvicorn in this process, or in N processes (each loads the model: CPUs serve in parallel)."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from .._util.package import install_hint
from ..checkpoints.naming import default_model_name
from ..data.workers import available_cores
from ..runtime.discovery import discover, is_repository, one_model
from .address import check_address
from .app import MULTIPROCESS_ENV, InferenceServer
from .connections import HeaderDeadlineProtocol
from .model import ServedModel
from .repository import Repository
from .service import Limits
from .tracing import NO_TRACING, Tracing, exporting_to
from .trust import Trust, trust_for

SETTINGS_ENV = "BIGTRANSFER_SERVE_SETTINGS"  # how the parent hands the model and limits to worker processes


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    limits: Limits = Limits(),
    processes: int = 1,
    device: str | None = None,
    bf16: bool = False,
    name: str | None = None,
    log_level: str = "info",
    allowed_hosts: tuple[str, ...] = (),
    allowed_origins: tuple[str, ...] = (),
    model_control: str = "none",
    load_models: tuple[str, ...] = (),
    grpc_port: int | None = None,
    otlp_endpoint: str | None = None,
) -> None:
    """Serve `model` (one model, or a repository folder of them: `runtime.discovery`) until SIGTERM or Ctrl-C,
    which stop accepting connections and let the requests under way finish (up to the request timeout) before the
    process exits (Ctrl-C: KeyboardInterrupt); with `grpc_port`, gRPC too (KServe v2 / Triton's
    GRPCInferenceService), by the same models and batchers. The addresses are checked first: a port in use fails
    before a minute of model loading, not after. `model_control` is Triton's --model-control-mode: "none" loads
    every model at start, "explicit" only `load_models` ("*": all) and allows load and unload while serving. With
    `otlp_endpoint`, each process exports traces of its requests there (tracing.py)."""
    check_address(host, port)
    if grpc_port is not None:
        _check_grpc(host, port, grpc_port)
    _log_access_to_stderr(log_level)
    # No limit on connections (uvicorn's limit_concurrency counts idle ones, and answered every request 503 while
    # a few hundred sockets sent nothing): they close when their headers are late, and the app bounds requests.
    options = dict(host=host, port=port, log_level=log_level, access_log=False, http=HeaderDeadlineProtocol,
                   ws="none", timeout_graceful_shutdown=int(limits.timeout_s) + 1)  # fmt: skip
    trust = trust_for(host, allowed_hosts, allowed_origins)
    settings = {"model": model, "device": device, "bf16": bf16, "name": name, "limits": dataclasses.asdict(limits),
                "trust": dataclasses.asdict(trust), "threads": max(1, available_cores() // processes),
                "model_control": model_control, "load_models": list(load_models),
                "host": host, "grpc_port": grpc_port, "processes": processes, "otlp_endpoint": otlp_endpoint}  # fmt: skip
    _models(settings)  # a repository's mistakes, before any process starts
    with _exit_0_once_drained():
        if processes == 1:
            server = _server(settings, trust)  # loads before listening
            uvicorn.Server(uvicorn.Config(server.app(), **options)).run()  # re-raises SIGINT: KeyboardInterrupt
            return
        os.environ[SETTINGS_ENV] = json.dumps(settings)
        # a process loading the model answers the supervisor's health pings late: 5 s (uvicorn's default) on a
        # busy machine had it killed and restarted in a loop
        health = {"timeout_worker_healthcheck": 120} if _supports(uvicorn.Config, "timeout_worker_healthcheck") else {}
        config = uvicorn.Config("bigtransfer.serve.runner:app_from_environment", factory=True, workers=processes,
                                **options, **health)  # fmt: skip
        supervisor = _Supervisor(config, sockets=[config.bind_socket()])  # as uvicorn.run does, telling SIGINT apart
        with shared_metrics():
            supervisor.run()
        if supervisor.interrupted:
            raise KeyboardInterrupt


@contextlib.contextmanager
def shared_metrics() -> Iterator[None]:
    """prometheus_client's multiprocess mode for the server processes started inside: each writes its metrics to
    files in a directory made here (set before they start, so before they import prometheus_client) and removed
    at the end, and /metrics sums them all."""
    directory, previous = tempfile.mkdtemp(prefix="bigtransfer-metrics-"), os.environ.get(MULTIPROCESS_ENV)
    os.environ[MULTIPROCESS_ENV] = directory
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(MULTIPROCESS_ENV, None)
        else:
            os.environ[MULTIPROCESS_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)


class _Supervisor(Multiprocess):
    """uvicorn's supervisor of server processes, which stops alike on SIGINT and SIGTERM; this one remembers a
    SIGINT, so that Ctrl-C exits 130 with several processes as with one."""

    interrupted = False

    def handle_int(self) -> None:
        self.interrupted = True
        super().handle_int()


def _supports(function: Any, parameter: str) -> bool:
    return parameter in inspect.signature(function).parameters


class _Drained(Exception):
    pass


@contextlib.contextmanager
def _exit_0_once_drained() -> Iterator[None]:
    """uvicorn drains on SIGTERM, then raises the signal again to the handler it found: this one, which ends the
    server normally — a stop asked for by the operator (or Kubernetes) is not a failure."""

    def drained(signum: int, frame: Any) -> None:
        raise _Drained

    previous = signal.signal(signal.SIGTERM, drained)
    try:
        yield
    except _Drained:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def app_from_environment() -> Any:
    """The app of one of several server processes, from the settings the parent left in the environment."""
    import torch

    settings = json.loads(os.environ[SETTINGS_ENV])
    torch.set_num_threads(settings["threads"])  # the processes share the cores
    _log_access_to_stderr("info")
    trust = Trust(**{field: tuple(names) for field, names in settings["trust"].items()})
    return _server(settings, trust).app()


def _check_grpc(host: str, port: int, grpc_port: int) -> None:
    """gRPC's port free and its packages there, before the model loads."""
    if grpc_port == port:
        raise ValueError(f"--grpc-port {grpc_port} is the HTTP --port too: give gRPC a port of its own")
    try:
        from . import grpc_server  # noqa: F401
    except ImportError as error:
        raise ImportError(f"Serving gRPC (--grpc-port) needs {error.name}: {install_hint('grpc')}.") from None
    check_address(host, grpc_port, "--grpc-port")


def _server(settings: dict[str, Any], trust: Trust) -> InferenceServer:
    """The server of one process: REST, and gRPC on its port when asked (shared by the processes, if several),
    traced when asked (a missing SDK fails before the models load)."""
    tracing = _tracing(settings)
    server = InferenceServer(_repository(settings), trust, tracing)
    if settings["grpc_port"] is not None:
        from .grpc_server import GrpcListener

        listener = GrpcListener(server, settings["host"], settings["grpc_port"], settings["processes"] > 1)
        server.listeners.append(listener)
    return server


def _repository(settings: dict[str, Any]) -> Repository:
    """The models to serve (those to load at start read before the server listens)."""
    model, device, bf16 = settings["model"], settings["device"], settings["bf16"]
    models, loaded = _models(settings)
    repository = Repository(Limits(**settings["limits"]), lambda source, name: ServedModel(source, device, bf16, name),
                            explicit=settings["model_control"] == "explicit",
                            find=(lambda: discover(model)) if is_repository(model) else None)  # fmt: skip
    for name, versions in models.items():
        repository.add(name, versions)
    for name in loaded:
        repository.load_now(name)
    return repository


def _models(settings: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The models of MODEL ({name: {version: source}}: one, or a repository's) and those loaded at start; found
    (nothing loaded) by the parent process too, so that a mistake is one line before any process starts."""
    model = settings["model"]
    if not is_repository(model):
        models = {settings["name"] or default_model_name(model): {"1": one_model(model)}}
    elif settings["name"]:
        raise ValueError(f"--name names the one model of `serve MODEL`; the models of the repository {model} are "
                         "named by their folders.")  # fmt: skip
    else:
        models = discover(model)
    return models, loaded_at_start(list(models), settings["model_control"] == "explicit", settings["load_models"])


def loaded_at_start(names: list[str], explicit: bool, asked: list[str]) -> list[str]:
    """The models loaded before serving starts, as in Triton: all of them, or in explicit mode those --load-model
    names ("*": all; none by default)."""
    if asked and not explicit:
        raise ValueError("--load-model picks the models loaded at start with --model-control-mode explicit; "
                         "without it every model loads.")  # fmt: skip
    if not explicit or asked == ["*"]:
        return names
    if "*" in asked:
        raise ValueError("--load-model '*' loads every model: give it alone, not beside model names.")
    unknown = [name for name in asked if name not in names]
    if unknown:
        raise ValueError(f"--load-model {unknown[0]}: the repository has no such model (it has {', '.join(names)}).")
    return list(dict.fromkeys(asked))


def _tracing(settings: dict[str, Any]) -> Tracing:
    endpoint = settings["otlp_endpoint"]
    return NO_TRACING if endpoint is None else exporting_to(endpoint)


def _log_access_to_stderr(level: str) -> None:
    """The access log (one JSON object per request) and the server's messages, on stderr."""
    root = logging.getLogger("bigtransfer.serve")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(level.upper())
