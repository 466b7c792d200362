# -*- test-case-name: tests.test_turn -*-
"""
Short-lived TURN credentials for clients (docs/protocol.md 4.11,
docs/operations.md "TURN for members behind firewalls").

The server never relays media itself; it tells each member where a TURN
server is and hands it a credential that the TURN server can check without
talking to us: coturn's "TURN REST API" form (coturn's C{use-auth-secret}
with C{static-auth-secret}).  The user name is C{EXPIRY:MEMBERID} (EXPIRY
in Unix seconds) and the password is base64(HMAC-SHA1(secret, user name)).
The secret itself never leaves the server: it is not in the C{repr} of the
settings, in a log line or in a frame.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TurnSettings:
    """
    The C{[ice.turn]} table.

    @ivar urls: the TURN URLs given to clients, e.g.
        C{"turn:turn.example.org:3478?transport=udp"}.
    @ivar secret: coturn's C{static-auth-secret} (never shown in C{repr}).
    @ivar ttl: seconds a credential stays valid.
    """

    urls: tuple[str, ...]
    secret: bytes = field(repr=False)
    ttl: int = 86400


def credentials(settings: TurnSettings, memberID: str, now: float) -> tuple[str, str]:
    """
    The user name and password of one member's TURN credential.

    @param now: the current time in Unix seconds (the injected clock's).
    @return: C{(username, credential)}: C{EXPIRY:MEMBERID} and
        base64(HMAC-SHA1(secret, username)).
    """
    username = f"{int(now) + settings.ttl}:{memberID}"
    digest = hmac.new(settings.secret, username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def iceServers(settings: TurnSettings | None, memberID: str, now: float) -> list[dict]:
    """
    The RTCPeerConnection C{iceServers} list for a member's join response:
    one entry with every TURN URL and that member's credential, or nothing
    when no TURN server is configured.
    """
    if settings is None or not settings.urls:
        return []
    username, credential = credentials(settings, memberID, now)
    return [{"urls": list(settings.urls), "username": username, "credential": credential}]
