# -*- test-case-name: tests.test_api -*-
"""
The WebSocket side: L{ConferenceProtocol} (Autobahn) does the handshake
(subprotocol, Origin, client address, per-address limit), bounds what it
buffers for a slow reader, pauses reading for its L{Session} when too much
is queued, and hands every frame to the session.
"""

from __future__ import annotations

from collections import Counter

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from ahoyconference.addresses import addressKey, clientAddress
from ahoyconference.interfaces import ClientInfo
from ahoyconference.logs import logger
from ahoyconference.origins import originAllowed
from ahoyconference.session import Session
from ahoyconference.writes import Coalescer, checkWriteThrough

SUBPROTOCOL = "conference-protocol"

#: WebSocket keep-alive (docs/operations.md, "A member whose network goes
#: away"): a ping this many seconds after the last pong (or any frame), and
#: the connection is dropped when nothing comes back within PING_TIMEOUT.  A
#: member whose cable is pulled (no FIN, no ICE goodbye) is therefore gone
#: within PING_INTERVAL + PING_TIMEOUT = 20 s, before ICE consent (RFC 7675,
#: aioice: six missed checks about 5 s apart, about 30 s) would notice.
PING_INTERVAL = 10
PING_TIMEOUT = 10

_log = logger(__name__)

#: Handshake headers never kept in L{ClientInfo}: credentials of the web
#: page's site, which must not reach a policy, a log or a traceback.
SECRET_HEADERS = frozenset({"cookie", "authorization", "proxy-authorization"})

#: Close code for a connection that queued more than its bound (RFC 6455
#: 1008, policy violation).
CLOSE_OVERLOADED = 1008

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
            config = factory.service.config
            headers = {k: v for k, v in request.headers.items() if k not in SECRET_HEADERS}
            ip = clientAddress(self._peerIP(), headers, config.trusted_proxies,
                               config.proxy_header)
            origin = headers.get("origin")
            if not originAllowed(origin, headers.get("host"), config.allowed_origins,
                                 anyPort=config.cluster is not None):
                factory.refusedConnection("origin", ip, "Origin {origin!r} not allowed",
                                          origin=origin)
                raise ConnectionDeny(403, "Origin not allowed")
            if not factory.connectionOpened(ip):
                factory.refusedConnection("per_address", ip, "too many connections")
                raise ConnectionDeny(503, "too many connections from this address")
            self._ip = ip
            self._client = ClientInfo(ip=ip, origin=origin, headers=headers)
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
        if not wasClean and "ping timeout" in (self.wasNotCleanReason or ""):
            # A vanished network (docs/operations.md): counted in /metrics.
            counters = self.factory.service.counters.setdefault("dropped", Counter())
            counters["ping_timeout"] += 1
            _log.info("no answer to a WebSocket ping from {ip} within {timeout} s: "
                      "connection dropped", ip=self._ip or self._peerIP(), timeout=PING_TIMEOUT)
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

    def _reader(self):
        """The transport that reads the socket (under TLS, the TCP one below it)."""
        transport = self.transport
        while transport is not None and not hasattr(transport, "pauseProducing"):
            transport = getattr(transport, "transport", None)
        return transport

    def pauseReading(self) -> None:
        """Stop reading frames (the session has too many queued)."""
        reader = self._reader()
        if reader is not None:
            reader.pauseProducing()

    def resumeReading(self) -> None:
        """Read frames again."""
        reader = self._reader()
        if reader is not None and self.state != self.STATE_CLOSED:
            reader.resumeProducing()

    def overloaded(self, reason: str) -> None:
        """
        Drop a client that queued more than its hard bound: a close frame
        with L{CLOSE_OVERLOADED}.  Reading goes on (the session runs none of
        what arrives) so that the client's close frame is read, and the
        close handshake timeout drops a client that never sends it; closing
        with unread bytes would reset the connection before the client read
        our close frame.
        """
        if self.state == self.STATE_OPEN:
            self.factory.coalescer.flushOne(self.transport)
            self.sendCloseFrame(code=CLOSE_OVERLOADED, reasonUtf8=reason.encode("utf-8")[:120],
                                isReply=False)
            self.resumeReading()
        else:
            self.dropConnection(abort=True)

    def sendBytes(self, data: bytes) -> None:
        """
        Send one text frame; drop a reader that is too far behind.

        Server frames are not masked, so the frame of one message is the same
        bytes on every connection: a fan-out (the same C{data} object to many
        members, L{ahoyconference.conference.Conference.broadcast}) frames it
        once (L{ConferenceFactory.framed}) and writes those bytes to each
        transport: gathered for one reactor turn and then written straight
        to the socket when nothing is buffered there
        (L{ahoyconference.writes.Coalescer}).
        """
        if self.state != self.STATE_OPEN:
            return
        prepared = self.factory.framed(data)
        if self._perMessageCompress is None and not self.send_queue:
            self.factory.coalescer.write(self.transport, prepared.payloadHybi)
        else:
            self.sendPreparedMessage(prepared)
        if self._pressure is not None and not self._pressure.sent(len(data)):
            _log.info("disconnecting {ip}: it reads too slowly ({size} bytes buffered)",
                      ip=self._ip, size=self._pressure.buffered)
            self._pressure = None
            self.dropConnection(abort=True)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with a close frame (or drop if the handshake never finished)."""
        if self.state == self.STATE_OPEN:
            # sendCloseFrame, not sendClose: the latter refuses 1001 (going away).
            self.factory.coalescer.flushOne(self.transport)
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:120], isReply=False)
        elif self.state not in (self.STATE_CLOSED, self.STATE_CLOSING):
            self.dropConnection(abort=True)


class ConferenceFactory(WebSocketServerFactory):
    """
    Makes L{ConferenceProtocol}s; counts connections per address.
    """

    protocol = ConferenceProtocol

    def __init__(self, service, reactor=None):
        super().__init__(protocols=[SUBPROTOCOL])
        if reactor is None:
            from twisted.internet import reactor
        self.coalescer = Coalescer(reactor.callLater, self._writeFailed)
        self.service = service
        self.connections: dict[str, int] = {}
        self._refusing: set[tuple[str, str]] = set()
        self._lastPayload: bytes | None = None
        self._lastPrepared = None
        checkWriteThrough()
        self.applyLimits(service.config.limits)

    def _writeFailed(self) -> None:
        self.service.counters.setdefault("write_errors", Counter())["coalesced"] += 1

    def framed(self, data: bytes):
        """
        The WebSocket frame of a text message, made once for the same
        C{data} object sent to many connections in a row (a fan-out).
        """
        if data is not self._lastPayload:
            self._lastPrepared = self.prepareMessage(data, isBinary=False)
            self._lastPayload = data
        return self._lastPrepared

    def applyLimits(self, limits) -> None:
        """Take the message size limits (at start and on reload)."""
        self.setProtocolOptions(
            maxFramePayloadSize=limits.max_message_bytes,
            maxMessagePayloadSize=limits.max_message_bytes,
            autoPingInterval=PING_INTERVAL,
            autoPingTimeout=PING_TIMEOUT,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=3,
        )

    def connectionOpened(self, ip: str) -> bool:
        """
        Count a connection; C{False} if the address has too many (an IPv6
        address counts with its /64: L{addressKey}).
        """
        key = addressKey(ip)
        limit = self.service.config.limits.max_connections_per_ip
        if limit and self.connections.get(key, 0) >= limit:
            return False
        self.connections[key] = self.connections.get(key, 0) + 1
        self._refusing.discard(("origin", key))  # let in: log its next refusal again
        self._refusing.discard(("per_address", key))
        return True

    def connectionClosed(self, ip: str) -> None:
        """Uncount a connection."""
        key = addressKey(ip)
        left = self.connections.get(key, 1) - 1
        if left > 0:
            self.connections[key] = left
        else:
            self.connections.pop(key, None)

    def refusedConnection(self, reason: str, ip: str, message: str, **fields) -> None:
        """
        Count a refused handshake in /metrics (C{ahoy_refused_connections});
        log it once per address and reason until that address is let in again.
        """
        self.service.counters["refused_connections"][reason] += 1
        key = (reason, addressKey(ip))
        if key in self._refusing:
            return
        if len(self._refusing) > 10_000:
            self._refusing.clear()
        self._refusing.add(key)
        _log.info("refused a connection from {ip}: " + message + " (logged once until "
                  "it is let in again; ahoy_refused_connections counts them)", ip=ip, **fields)
