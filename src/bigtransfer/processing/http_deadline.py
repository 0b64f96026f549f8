"""HTTP(S) requests that end by one deadline, however slowly the server answers.

urllib's `timeout` bounds each socket operation, not the exchange: a server that sends its headers one byte a
second holds a call for as long as it likes. Here every connection a request opens (redirects and proxies too)
is recorded, and when the deadline passes a timer shuts them all down, which ends the connect, TLS handshake,
status line, headers or body read under way. Name resolution is the system resolver's, with its own timeout.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any


class _Deadline:
    """One request's deadline and the sockets it opened, all shut down when the deadline passes."""

    def __init__(self, seconds: float):
        self.seconds, self.at, self.passed = seconds, time.monotonic() + seconds, False
        self._handles: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def error(self) -> TimeoutError:
        return TimeoutError(f"the download took longer than {self.seconds:g} s")

    def connect(self, address: tuple[str, int], timeout: Any = None, source_address: Any = None) -> socket.socket:
        """http.client's `_create_connection`, within what is left of the deadline."""
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise self.error()
        sock = socket.create_connection(address, remaining, source_address)
        with self._lock:
            # shutting a duplicate down ends the connection itself, whatever later wraps `sock` (TLS)
            self._handles.append(sock.dup())
            if self.passed:
                self._handles[-1].shutdown(socket.SHUT_RDWR)
        return sock

    def _cut(self) -> None:
        with self._lock:
            self.passed = True
            for handle in self._handles:
                with contextlib.suppress(OSError):
                    handle.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            for handle in self._handles:
                handle.close()


class _ConnectsWithin:
    """A urllib handler whose connections open their sockets through `deadline.connect`."""

    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class: Any, req: urllib.request.Request, **kwargs: Any) -> http.client.HTTPResponse:
        def connection(*args: Any, **options: Any) -> http.client.HTTPConnection:
            made = http_class(*args, **options)
            made._create_connection = self.deadline.connect  # how http.client opens its socket
            return made

        return super().do_open(connection, req, **kwargs)


class _HTTPWithin(_ConnectsWithin, urllib.request.HTTPHandler):
    pass


class _HTTPSWithin(_ConnectsWithin, urllib.request.HTTPSHandler):
    pass


@contextlib.contextmanager
def urlopen_within(request: urllib.request.Request, seconds: float) -> Iterator[http.client.HTTPResponse]:
    """`urllib.request.urlopen` whose whole exchange, from connecting to the last byte of the body read inside
    the `with` block, ends within `seconds`: past them, TimeoutError (a body cut short is never handed on)."""
    deadline = _Deadline(seconds)
    try:
        opener = urllib.request.build_opener(_HTTPWithin(deadline), _HTTPSWithin(deadline))
        with opener.open(request, timeout=seconds) as response:
            yield response
    except Exception as error:
        # once the deadline passed, whatever failed read a connection shut down (headers cut short look complete);
        # a socket's own timeout (connecting: urllib wraps it in URLError) is the deadline too
        if deadline.passed or isinstance(getattr(error, "reason", error), TimeoutError):
            raise deadline.error() from None
        raise
    finally:
        deadline.close()
    if deadline.passed:  # a connection shut down at the deadline can read as a normal end of the body
        raise deadline.error()
