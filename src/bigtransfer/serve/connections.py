"""Connections that do not send a request are closed: uvicorn waits for a request's headers without a deadline
(its keep-alive timer stops at the first byte, and a new connection has none), so sockets that send nothing, or
trickle their headers, would stay open for as long as a client likes."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from .._util.limits import EnvLimit

HEADER_TIMEOUT_ENV = "BIGTRANSFER_SERVE_HEADER_TIMEOUT"
# seconds from a connection's opening (or its last answer) to the end of its next request's headers; a client
# sends them in one go, so 10 s is ample on a slow network (nginx waits 60 s, Apache's mod_reqtimeout 20 s)
HEADER_TIMEOUT_S = EnvLimit(HEADER_TIMEOUT_ENV, 10, whole=False)


class HeaderDeadlineProtocol(AutoHTTPProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools when installed, else h11), closing a connection whose next
    request's headers have not all arrived within HEADER_TIMEOUT_S. Once they have, the request's own time is
    the app's to bound (--timeout)."""

    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._await_headers()

    def on_response_complete(self) -> None:
        self._await_headers()  # before uvicorn starts a pipelined request, which the deadline then spares
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        self._header_deadline = self.loop.call_later(HEADER_TIMEOUT_S(), self._headers_overdue, self.cycle)

    def _headers_overdue(self, last: Any) -> None:
        """Close the connection unless a request came after `last` (the latest request then, or None) or `last`
        is still being answered."""
        idle = self.cycle is last and (last is None or last.response_complete)
        if idle and not self.transport.is_closing():
            self.transport.close()
