"""The address a server listens on, checked before the model loads: a bad port or host fails in a moment with
the fix, instead of after the model has loaded (or as a traceback from deep inside asyncio)."""

from __future__ import annotations

import errno
import socket

LOWEST_PORT, HIGHEST_PORT = 1, 65535


def check_port(port: int) -> int:
    """`port`, or ValueError when no TCP socket can have it."""
    if not LOWEST_PORT <= port <= HIGHEST_PORT:
        raise ValueError(f"port {port} is out of range: ports run from {LOWEST_PORT} to {HIGHEST_PORT}")
    return port


def check_address(host: str, port: int, option: str = "--port") -> None:
    """Raise, naming host:port and the fix (`option`: the one that gave the port), where a server could not
    listen: a port out of range (ValueError), a host that does not resolve, a port in use or not ours to take
    (OSError).

    Each address `host` resolves to is bound and let go at once, with SO_REUSEADDR as uvicorn and asyncio bind
    (so a port left in TIME_WAIT by the last run passes, as it would for them); another program may still take
    the port before the server does, and then uvicorn's own error stands."""
    check_port(port)
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise OSError(
            f"host {host!r} does not resolve ({error.strerror}): give an IP address, or a name this machine "
            "resolves, with --host"
        ) from None
    bound = False
    for family, kind, protocol, _, address in addresses:
        try:
            _bind_and_release(family, kind, protocol, address)
            bound = True
        except OSError as error:
            if error.errno != errno.EADDRNOTAVAIL:  # as asyncio does: that address family is not enabled here
                raise OSError(_refusal(host, port, error, option)) from None
    if not bound:
        raise OSError(
            f"{host} is not an address of this machine, so nothing can listen on {host}:{port}: give one of its "
            "addresses with --host (127.0.0.1: this machine only; 0.0.0.0: all)"
        )


def _bind_and_release(family: int, kind: int, protocol: int, address: tuple) -> None:
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # asyncio listens on IPv6 alone: an IPv4 listener on the port is no clash
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind(address)


def _refusal(host: str, port: int, error: OSError, option: str) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use: stop what holds it or pick another with {option}"
    if error.errno == errno.EACCES:
        return (
            f"port {port} on {host} needs privileges this user lacks (ports below 1024 do): pick another with {option}"
        )
    return f"cannot listen on {host}:{port} ({error.strerror}): check --host and {option}"
