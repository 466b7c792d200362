# -*- test-case-name: tests.test_sip_transaction -*-
"""
SIP over UDP and TCP (RFC 3261 18): each message that arrives is parsed and
handed on with the L{Origin} to answer on; junk is counted and logged once
per kind.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

from ahoyconference.logs import logger
from ahoyconference.sip.message import MAX_MESSAGE, Message, SipParseError, StreamFramer, parse

_log = logger(__name__)


class Origin:
    """
    Where a message came from, and how to send back: C{transport} is
    C{"UDP"} or C{"TCP"}, C{addr} the C{(host, port)}; C{write(bytes)} sends
    to that address (UDP) or on that connection (TCP).
    """

    def __init__(self, transport: str, addr: tuple[str, int], write: Callable[[bytes], None],
                 local: tuple[str, int]):
        self.transport = transport
        self.addr = addr
        self.write = write
        self.local = local

    @property
    def reliable(self) -> bool:
        """TCP: no retransmissions (RFC 3261 17.1.1.2)."""
        return self.transport != "UDP"

    def __repr__(self) -> str:
        return f"<Origin {self.transport} {self.addr[0]}:{self.addr[1]}>"


class Receiver:
    """What the transports deliver to (the transaction layer)."""

    def __init__(self, deliver: Callable[[Message, Origin], None], counters,
                 allowed: Callable[[str], bool] = lambda host: True):
        self.deliver = deliver
        self.counters = counters
        self.allowed = allowed
        self._logged: set[str] = set()

    def junk(self, kind: str, origin: Origin, detail: str) -> None:
        """Count (and log once per kind) a message we could not use."""
        self.counters["dropped"][kind] += 1
        if kind not in self._logged:
            self._logged.add(kind)
            _log.info("SIP: dropped a {kind} message from {addr} ({detail}); further ones are "
                      "only counted", kind=kind, addr=origin.addr[0], detail=detail)

    def data(self, data: bytes, origin: Origin) -> None:
        """One whole message's bytes."""
        if not self.allowed(origin.addr[0]):
            self.junk("foreign", origin, "not an allowed peer")
            return
        try:
            message = parse(data)
        except SipParseError as e:
            self.junk("unparsable", origin, str(e))
            return
        try:
            self.deliver(message, origin)
        except Exception:
            self.counters["errors"]["internal"] += 1
            _log.failure("SIP: internal error handling {message!r}", message=message)


class SipDatagramProtocol(DatagramProtocol):
    """SIP over UDP: one message per datagram."""

    def __init__(self, receiver: Receiver):
        self.receiver = receiver

    def datagramReceived(self, data: bytes, addr) -> None:
        """One datagram."""
        host = self.transport.getHost()
        origin = Origin("UDP", (addr[0], addr[1]), lambda b: self.transport.write(b, addr),
                        (host.host, host.port))
        if data.strip(b"\r\n") == b"":
            return  # a keep-alive
        self.receiver.data(data, origin)


class SipStreamProtocol(Protocol):
    """SIP over one TCP connection."""

    def __init__(self, receiver: Receiver):
        self.receiver = receiver
        self.framer = StreamFramer(self._message)
        self.origin: Origin | None = None

    def connectionMade(self) -> None:
        """Remember the peer."""
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.origin = Origin("TCP", (peer.host, peer.port), self._write, (host.host, host.port))
        if not self.receiver.allowed(peer.host):
            self.receiver.junk("foreign", self.origin, "not an allowed peer")
            self.transport.loseConnection()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and self.transport.connected:
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        """Bytes of the stream."""
        try:
            self.framer.feed(data)
        except SipParseError as e:
            self.receiver.junk("unframable", self.origin, str(e))
            self.transport.loseConnection()

    def _message(self, data: bytes) -> None:
        self.receiver.data(data, self.origin)


class SipStreamFactory(Factory):
    """Makes a L{SipStreamProtocol} per TCP connection."""

    def __init__(self, receiver: Receiver):
        self.receiver = receiver

    def buildProtocol(self, addr):
        """One connection."""
        return SipStreamProtocol(self.receiver)


__all__ = ["MAX_MESSAGE", "Origin", "Receiver", "SipDatagramProtocol", "SipStreamFactory",
           "SipStreamProtocol"]
