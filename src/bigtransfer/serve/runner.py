"""Running the server: uvicorn in this process, or in N processes (each loads the model: CPUs serve in parallel)."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from ..checkpoints.naming import default_model_name
from ..data.workers import available_cores
from .address import check_address
from .app import InferenceServer
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
    otlp_endpoint: str | None = None,
) -> None:
    """Serve `model` until SIGTERM or Ctrl-C, which stop accepting connections and let the requests under way
    finish (up to the request timeout) before the process exits (Ctrl-C: KeyboardInterrupt). The address is
    checked first: a port in use fails before a minute of model loading, not after. With `otlp_endpoint`, each
    process exports traces of its requests there (tracing.py)."""
    check_address(host, port)
    _log_access_to_stderr(log_level)
    # No limit on connections (uvicorn's limit_concurrency counts idle ones, and answered every request 503 while
    # a few hundred sockets sent nothing): they close when their headers are late, and the app bounds requests.
    options = dict(host=host, port=port, log_level=log_level, access_log=False, http=HeaderDeadlineProtocol,
                   ws="none", timeout_graceful_shutdown=int(limits.timeout_s) + 1)  # fmt: skip
    trust = trust_for(host, allowed_hosts, allowed_origins)
    settings = {"model": model, "device": device, "bf16": bf16, "name": name, "limits": dataclasses.asdict(limits),
                "trust": dataclasses.asdict(trust), "threads": max(1, available_cores() // processes),
                "otlp_endpoint": otlp_endpoint}  # fmt: skip
    with _exit_0_once_drained():
        if processes == 1:
            tracing = _tracing(settings)  # a missing SDK fails before the model loads
            server = InferenceServer(_repository(settings), trust, tracing)  # loads before listening
            uvicorn.Server(uvicorn.Config(server.app(), **options)).run()  # re-raises SIGINT: KeyboardInterrupt
            return
        os.environ[SETTINGS_ENV] = json.dumps(settings)
        # a process loading the model answers the supervisor's health pings late: 5 s (uvicorn's default) on a
        # busy machine had it killed and restarted in a loop
        health = {"timeout_worker_healthcheck": 120} if _supports(uvicorn.Config, "timeout_worker_healthcheck") else {}
        config = uvicorn.Config("bigtransfer.serve.runner:app_from_environment", factory=True, workers=processes,
                                **options, **health)  # fmt: skip
        supervisor = _Supervisor(config, sockets=[config.bind_socket()])  # as uvicorn.run does, telling SIGINT apart
        supervisor.run()
        if supervisor.interrupted:
            raise KeyboardInterrupt


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
    tracing = _tracing(settings)
    return InferenceServer(_repository(settings), trust, tracing).app()


def _repository(settings: dict[str, Any]) -> Repository:
    """The models to serve, read before the server listens."""
    model, device, bf16 = settings["model"], settings["device"], settings["bf16"]
    repository = Repository(Limits(**settings["limits"]), lambda source, name: ServedModel(source, device, bf16, name))
    name = settings["name"] or default_model_name(model)
    repository.add(name, {"1": model})
    repository.load_now(name)
    return repository


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
