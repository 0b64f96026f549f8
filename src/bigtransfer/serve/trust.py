"""Which Host names a server answers to, and which other sites' pages may POST to it: a web page must not be able
to use a server on this machine or network through its visitor's browser.

- DNS rebinding: a page at evil.example re-points its name to 127.0.0.1 and then reads /info and runs inference
  as if it were the server's own page. Its requests carry `Host: evil.example`, so a server listening on loopback
  answers only to IP addresses (a page cannot rebind those), `localhost`, the name it was started with and
  --allowed-hosts. Listening on every address (0.0.0.0) it answers any name unless --allowed-hosts is given, as
  Jupyter does (its allow_remote_access is on by default unless it listens on loopback); Triton and KServe
  check no Host at all. The health routes answer any Host: they tell nothing, and probes use the pod's address.
- Drive-by requests: a page may POST text/plain, multipart or form bodies to any address without asking first
  (no CORS preflight); its browser then sends `Origin`. A POST whose Origin is not the server's own (the scheme
  and Host it was reached by) is refused unless that origin is in --allowed-origins, which also answers those
  pages' CORS requests so that they can read the answers.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import urllib.parse
from collections.abc import Mapping

ANY = "*"
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")
OPEN_ROUTES = ("live", "ready")  # health: probes reach a pod by its address, and the answers tell nothing


@dataclasses.dataclass(frozen=True)
class Trust:
    """`hosts`: the names answered besides IP addresses (ANY: every name; "*.example.com": its subdomains);
    `origins`: other sites whose pages may POST (ANY: every site). The default answers any Host and refuses
    POSTs from other sites' pages."""

    hosts: tuple[str, ...] = (ANY,)
    origins: tuple[str, ...] = ()

    def refusal(self, method: str, headers: Mapping[str, str], route: str) -> str | None:
        """Why a request is refused (HTTP 403), or None."""
        host = headers.get("host", "")
        if route not in OPEN_ROUTES and not self._answers(host_name(host)):
            return (
                f"This server does not answer to the Host {host!r} (a guard against DNS rebinding): reach it by its "
                f"address, or start it with --allowed-hosts {host_name(host) or 'NAME'}."
            )
        origin = headers.get("origin")
        if method not in ("GET", "HEAD") and origin is not None and not self._same_origin(origin, host):
            return (
                f"A page from {origin} may not {method} to this server (a guard against other sites using it through "
                f"their visitors' browsers): start it with --allowed-origins {origin} to let that site."
            )
        return None

    def _answers(self, name: str) -> bool:
        if ANY in self.hosts or _is_address(name):
            return True
        return any(name == host or (host.startswith("*.") and name.endswith(host[1:])) for host in self.hosts)

    def _same_origin(self, origin: str, host: str) -> bool:
        if ANY in self.origins or origin in self.origins:
            return True
        return origin != "null" and urllib.parse.urlsplit(origin).netloc.lower() == host.lower()


def trust_for(host: str, allowed_hosts: tuple[str, ...] = (), allowed_origins: tuple[str, ...] = ()) -> Trust:
    """The Trust of a server listening on `host` (as --host gives it), with --allowed-hosts and --allowed-origins."""
    names = tuple(name.lower().rstrip(".") for name in allowed_hosts)
    origins = tuple(origin.rstrip("/") for origin in allowed_origins)
    if host in WILDCARD_ADDRESSES:  # this machine's own names (loopback is among the addresses) and the names given
        return Trust(("localhost", *names) if names else (ANY,), origins)
    own = (host.lower(), "localhost") if _is_loopback(host) else (host.lower(),)
    return Trust(own + names, origins)


def host_name(host: str) -> str:
    """The name in a Host header: without its port, an IPv6 address without brackets, lower case."""
    if host.startswith("["):
        return host[1:].partition("]")[0].lower()
    return host.rpartition(":")[0].lower().rstrip(".") if host.count(":") == 1 else host.lower().rstrip(".")


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    """Whether every address `host` resolves to is this machine's loopback."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except socket.gaierror:  # check_address has already refused a host that does not resolve
        return False
    return bool(addresses) and all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)
