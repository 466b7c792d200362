# -*- test-case-name: tests.test_deploy -*-
"""
Which web pages may open a WebSocket to this server (docs/operations.md,
"Origins"): the server's own origin, the configured ones, and clients that
are no web page (no C{Origin} header).
"""

from __future__ import annotations

from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": "80", "ws": "80", "https": "443", "wss": "443"}


def originAllowed(origin: str | None, host: str | None, allowed: tuple[str, ...],
                  anyPort: bool = False) -> bool:
    """
    May a page of this Origin open a WebSocket (docs/operations.md, "Origins")?

    A client that sends no Origin is no browser page: allowed.  C{"*"} in
    the list allows every Origin (unsafe: any web site a user visits can
    then use the server as that user).  Otherwise the Origin must be in the
    list or be the server's own: an http/https/ws/wss Origin whose host
    (and port) is the request's C{Host}.

    @param anyPort: in a cluster (docs/cluster.md) the nodes of one machine
        differ by port, and a page of one node follows a 302 to another:
        the Origin's host name alone must be the C{Host}'s.
    """
    if origin is None or "*" in allowed or origin in allowed:
        return True
    if not host:
        return False
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return False
    default = _DEFAULT_PORTS[scheme]
    mine = parts.netloc.lower().rsplit("@", 1)[-1]
    if port is not None and str(port) == default:
        mine = mine.rsplit(":", 1)[0]
    host = host.strip().lower()
    if host.endswith(":" + default) and not host.endswith("]"):
        host = host[: -len(default) - 1]
    if anyPort:
        return _hostname(mine) == _hostname(host)
    return mine == host


def _hostname(netloc: str) -> str:
    """C{host:port} or C{[v6]:port} without the port."""
    if netloc.startswith("["):
        return netloc.split("]", 1)[0] + "]"
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc
