# -*- test-case-name: tests.test_api -*-
"""
The WebSocket side: L{ConferenceProtocol} (Autobahn) does the handshake
(subprotocol, Origin, per-address limit), bounds what it buffers for a slow
reader, and hands every frame to its L{Session}.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from ahoyconference.interfaces import ClientInfo
from ahoyconference.logs import logger
from ahoyconference.session import Session

SUBPROTOCOL = "conference-protocol"

_log = logger(__name__)


@implementer(IPushProducer)
class _Backpressure:
    """
    Registered as the transport's producer: the transport pauses it when its
    buffer is full.  What is sent while paused is counted; past the limit
    the reader is too slow and is disconnected.
    """

    def __init__(self, protocol: ConferenceProtocol, limit: int):
        self.protocol = protocol
        self.limit = limit
        self.paused = False
        self.buffered = 0

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self.buffered = 0

    def stopProducing(self):
        self.paused = False

    def sent(self, size: int) -> bool:
        """Count a frame; C{False} when the reader is over its limit."""
        if not self.paused:
            return True
        self.buffered += size
        return self.buffered <= self.limit


class ConferenceProtocol(WebSocketServerProtocol):
    """
    One WebSocket connection.  Autobahn owns C{.log}, so ours is C{_log}.
    """

    session: Session | None = None
    _pressure: _Backpressure | None = None
    _ip: str | None = None

    def onConnect(self, request):
        """Check the subprotocol, the Origin and the per-address limit."""
        try:
            factory = self.factory
            if SUBPROTOCOL not in request.protocols:
                raise ConnectionDeny(400, f"the {SUBPROTOCOL} subprotocol is required")
            origin = request.headers.get("origin")
            allowed = factory.service.config.allowed_origins
            if allowed and origin not in allowed:
                _log.info("refused a connection from {ip}: Origin {origin!r} not allowed",
                          ip=self._peerIP(), origin=origin)
                raise ConnectionDeny(403, "Origin not allowed")
            ip = self._peerIP()
            if not factory.connectionOpened(ip):
                _log.info("refused a connection from {ip}: too many connections", ip=ip)
                raise ConnectionDeny(503, "too many connections from this address")
            self._ip = ip
            self._client = ClientInfo(ip=ip, origin=origin, headers=dict(request.headers))
            return SUBPROTOCOL
        except ConnectionDeny:
            raise
        except Exception:
            _log.failure("error in the WebSocket handshake")
            raise ConnectionDeny(500, "internal error")

    def _peerIP(self) -> str:
        peer = self.transport.getPeer()
        return getattr(peer, "host", str(peer))

    def onOpen(self):
        """Start the session and watch the transport's buffer."""
        try:
            service = self.factory.service
            self.session = Session(service, self._client, self)
            self._pressure = _Backpressure(self, service.config.limits.max_send_buffer_bytes)
            try:
                self.transport.unregisterProducer()  # twisted.web's, left behind at the upgrade
            except Exception:
                pass
            self.transport.registerProducer(self._pressure, True)
        except Exception:
            _log.failure("error opening a session")
            self.dropConnection(abort=True)

    def onMessage(self, payload, isBinary):
        """Hand one message to the session."""
        if self.session is not None:
            self.session.received(payload, isBinary)

    def onClose(self, wasClean, code, reason):
        """The connection is gone: the session leaves its conference."""
        if self._ip is not None:
            self.factory.connectionClosed(self._ip)
            self._ip = None
        session, self.session = self.session, None
        if session is not None:
            try:
                session.connectionLost()
            except Exception:
                _log.failure("error closing a session")

    # -- the session's transport -------------------------------------------

    def sendBytes(self, data: bytes) -> None:
        """Send one text frame; drop a reader that is too far behind."""
        if self.state != self.STATE_OPEN:
            return
        self.sendMessage(data, isBinary=False)
        if self._pressure is not None and not self._pressure.sent(len(data)):
            _log.info("disconnecting {ip}: it reads too slowly ({size} bytes buffered)",
                      ip=self._ip, size=self._pressure.buffered)
            self._pressure = None
            self.dropConnection(abort=True)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with a close frame (or drop if the handshake never finished)."""
        if self.state == self.STATE_OPEN:
            # sendCloseFrame, not sendClose: the latter refuses 1001 (going away).
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:120], isReply=False)
        elif self.state not in (self.STATE_CLOSED, self.STATE_CLOSING):
            self.dropConnection(abort=True)


class ConferenceFactory(WebSocketServerFactory):
    """
    Makes L{ConferenceProtocol}s; counts connections per address.
    """

    protocol = ConferenceProtocol

    def __init__(self, service):
        super().__init__(protocols=[SUBPROTOCOL])
        self.service = service
        self.connections: dict[str, int] = {}
        self.applyLimits(service.config.limits)

    def applyLimits(self, limits) -> None:
        """Take the message size limits (at start and on reload)."""
        self.setProtocolOptions(
            maxFramePayloadSize=limits.max_message_bytes,
            maxMessagePayloadSize=limits.max_message_bytes,
            autoPingInterval=20,
            autoPingTimeout=40,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=3,
        )

    def connectionOpened(self, ip: str) -> bool:
        """Count a connection; C{False} if the address has too many."""
        limit = self.service.config.limits.max_connections_per_ip
        if limit and self.connections.get(ip, 0) >= limit:
            return False
        self.connections[ip] = self.connections.get(ip, 0) + 1
        return True

    def connectionClosed(self, ip: str) -> None:
        """Uncount a connection."""
        left = self.connections.get(ip, 1) - 1
        if left > 0:
            self.connections[ip] = left
        else:
            self.connections.pop(ip, None)
