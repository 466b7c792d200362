# -*- test-case-name: tests.test_udpmux -*-
"""
All media on one UDP port (C{[ice] udp_port}; docs/architecture.md, "One
UDP port").

aioice binds a socket per peer connection on a port the kernel picks.  With
C{udp_port} set, L{OnePort} binds one socket per host address, all on that
port, and every server-side ICE connection gets its host candidate there:
a L{MuxTransport} per connection and socket stands in for the asyncio
datagram transport under aioice's C{StunProtocol}
(L{ahoyconference.media.hooks.gatherOnShared}).

Datagrams are demultiplexed by their source address.  An address is learnt
only from evidence that the member holds its ICE credentials:

 - a STUN binding request from an unknown address goes to the connection
   whose local ufrag is the first half of its C{USERNAME}; aioice checks
   it (username, C{MESSAGE-INTEGRITY}, C{[ice] allowed_remote_networks})
   and answers, and only its success response maps the address;
 - a STUN response from an unknown address goes to the connection that
   sent the request of that transaction ID to that very address, and maps
   it when it is a success.

An address may change (NAT rebinding, a new nominated pair): a member's
next consent check from the new address maps it too, and aioice's
triggered check moves the nominated pair there.  Anything else from an
unknown address (DTLS, SRTP, junk, STUN for an unknown ufrag or
transaction) is dropped and counted, so no packet from an unknown address
ever reaches a member's DTLS or SRTP state.  A connection's ufrag and
addresses are forgotten when aioice closes its transport.

Over 400 lines on purpose: the demultiplexer and its address book are one
state (which address belongs to which connection), checked in one place.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import string
from collections.abc import Callable

from aioice import stun

from ahoyconference.logs import logger
from ahoyconference.media import mmsg

_log = logger(__name__)

MAX_ADDRESSES = 8
"""Remote addresses one connection may hold at once (the oldest goes first)."""

MAX_PENDING = 4096
"""Outstanding STUN transactions remembered (the oldest are forgotten first)."""

READ_BUDGET = 256
"""Datagrams read in one wake-up at most, so that the loop stays fair."""

BUFFER_BYTES = 4 * 1024 * 1024
"""The socket's receive and send buffers (the kernel caps them at its rmem_max/wmem_max)."""

UFRAG_LENGTH = 8
"""Characters of the local ufrags we hand out (RFC 8445 wants 24 bits at least)."""

_UFRAG_CHARS = string.ascii_letters + string.digits

_COOKIE = b"\x21\x12\xa4\x42"

#: Why a datagram was dropped (C{ahoy_dropped_packets_by_reason_total}).
UNKNOWN_ADDRESS = "mux_unknown_address"
UNKNOWN_UFRAG = "mux_unknown_ufrag"
UNMATCHED_STUN = "mux_unmatched_stun"
MUX_ERROR = "mux_error"

_EXPLAIN = {
    UNKNOWN_ADDRESS: "a datagram that is not STUN from an address no member has "
                     "authenticated",
    UNKNOWN_UFRAG: "a STUN request for a ufrag no connection has",
    UNMATCHED_STUN: "a STUN response or indication we were not waiting for",
    MUX_ERROR: "a socket error",
}


def isStun(data: bytes) -> bool:
    """The first two bits zero and the magic cookie (RFC 8489 6)."""
    return len(data) >= 20 and data[0] < 4 and data[4:8] == _COOKIE


class MuxTransport:
    """
    What one aioice C{StunProtocol} sees as its datagram transport: sends on
    the shared socket, is closed by aioice when the connection closes.

    @ivar protocol: the C{StunProtocol} it carries.
    @ivar ufrag: the connection's local ufrag.
    @ivar addresses: the remote addresses mapped to it, oldest first.
    """

    def __init__(self, mux: UdpMux, protocol, ufrag: str):
        self._mux = mux
        self.protocol = protocol
        self.ufrag = ufrag
        self.addresses: list[tuple] = []
        self._closing = False
        self._sock = mux.socket  # hooks.zeroCopySender sends on it directly,
        self.batch = mux.batch  # or queues for sendmmsg here (None: no sendmmsg)

    def sendto(self, data, addr) -> None:
        """Send a datagram from the shared socket (STUN is looked at first)."""
        if self._closing:
            return
        self._mux.send(self, data, addr)

    def get_extra_info(self, name: str, default=None):
        """C{sockname}: the shared socket's address; C{socket}: C{None} (not ours)."""
        if name == "sockname":
            return self._mux.address
        return default

    def is_closing(self) -> bool:
        """Has aioice closed it?"""
        return self._closing

    def close(self) -> None:
        """Forget this connection's ufrag and addresses; tell the protocol, later."""
        if self._closing:
            return
        self._closing = True
        self._mux.forget(self)
        self._mux.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        """The same as L{close}."""
        self.close()


class UdpMux:
    """
    One UDP socket on C{(host, port)} shared by every ICE connection.

    @param onDropped: called with the reason of every dropped datagram.
    @param onError: called with C{(where, exception)} for unexpected errors.
    @param batching: read with C{recvmmsg} and send forwarded copies with
        C{sendmmsg} (L{ahoyconference.media.mmsg}) where they are available.
    @ivar batch: the L{mmsg.SendBatch} forwarded copies are queued in, or C{None}.
    """

    def __init__(self, host: str, port: int, onDropped: Callable[[str], None],
                 onError: Callable[[str, Exception], None], batching: bool = False):
        self._batching = batching and mmsg.available()
        self._receiver = None
        self.batch = None
        self._host = host
        self._port = port
        self._onDropped = onDropped
        self._onError = onError
        self.socket: socket.socket | None = None
        self.address: tuple | None = None
        self.loop = asyncio.get_event_loop()
        self._byAddress: dict[tuple, MuxTransport] = {}
        self._byUfrag: dict[str, MuxTransport] = {}
        self._pending: dict[bytes, tuple[MuxTransport, tuple]] = {}
        self._logged: set[str] = set()

    # -- life ---------------------------------------------------------------

    def start(self) -> None:
        """
        Bind the socket and start reading.

        @raise OSError: the port is taken or the address is not ours.
        """
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            raise
        self.socket = sock
        self.address = sock.getsockname()[:2]
        if self._batching:
            self._receiver = mmsg.Receiver(sock)
            self.batch = mmsg.SendBatch(sock, loop=self.loop, onRefused=self._refused)
        self.loop.add_reader(sock.fileno(), self._readable)

    def stop(self) -> None:
        """Stop reading and close the socket."""
        if self.socket is None:
            return
        self.loop.remove_reader(self.socket.fileno())
        self.socket.close()
        self.socket = None

    def describe(self) -> str:
        """C{host:port}, for messages."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._port}"

    # -- connections ----------------------------------------------------------

    def hasUfrag(self, ufrag: str) -> bool:
        """Is this ufrag taken?"""
        return ufrag in self._byUfrag

    def attach(self, protocol, ufrag: str) -> MuxTransport:
        """A transport for C{protocol}, whose connection's local ufrag is C{ufrag}."""
        transport = MuxTransport(self, protocol, ufrag)
        self._byUfrag[ufrag] = transport
        return transport

    def forget(self, transport: MuxTransport) -> None:
        """A connection closed: its ufrag, its addresses and its transactions go."""
        if self._byUfrag.get(transport.ufrag) is transport:
            del self._byUfrag[transport.ufrag]
        for addr in transport.addresses:
            if self._byAddress.get(addr) is transport:
                del self._byAddress[addr]
        transport.addresses.clear()
        for txid in [t for t, (owner, _) in self._pending.items() if owner is transport]:
            del self._pending[txid]

    def sizes(self) -> dict[str, int]:
        """How many ufrags, addresses and transactions are remembered (for leak checks)."""
        return {"ufrags": len(self._byUfrag), "addresses": len(self._byAddress),
                "transactions": len(self._pending)}

    def _map(self, addr: tuple, transport: MuxTransport) -> None:
        old = self._byAddress.get(addr)
        if old is transport:
            return
        if old is not None:
            old.addresses.remove(addr)
        self._byAddress[addr] = transport
        transport.addresses.append(addr)
        if len(transport.addresses) > MAX_ADDRESSES:
            oldest = transport.addresses.pop(0)
            del self._byAddress[oldest]
        if len(transport.addresses) > 1:
            _log.debug("ICE ufrag {ufrag}: now also at {addr}", ufrag=transport.ufrag,
                       addr=addr[0])

    # -- sending ------------------------------------------------------------

    def send(self, transport: MuxTransport, data, addr) -> None:
        """
        Send for a connection: a binding request of ours is remembered (its
        response may come from an address not mapped yet), our success
        response to a check maps the checking address.
        """
        addr = (addr[0], addr[1])
        if isStun(data):
            kind = bytes(data[0:2])
            if kind == b"\x00\x01":  # binding request
                if len(self._pending) >= MAX_PENDING:
                    self._pending.pop(next(iter(self._pending)))
                self._pending[bytes(data[8:20])] = (transport, addr)
            elif kind == b"\x01\x01":  # binding success response: aioice checked the request
                self._map(addr, transport)
        try:
            self.socket.sendto(data, addr)
        except OSError as e:  # a full buffer, an unreachable network
            self._drop(MUX_ERROR, e)

    # -- receiving ------------------------------------------------------------

    def _refused(self, count: int, error: OSError) -> None:
        """The kernel refused C{count} batched copies (a full buffer): counted as send errors."""
        self._onError("send", error)

    def _readable(self) -> None:
        sock = self.socket
        if sock is None:
            return
        if self._receiver is not None:
            self._readBatches()
            return
        for _ in range(READ_BUDGET):
            try:
                data, addr = sock.recvfrom(2048)
            except BlockingIOError:
                return
            except OSError as e:
                self._drop(MUX_ERROR, e)
                return
            self.datagram(data, addr)

    def _readBatches(self) -> None:
        """C{recvmmsg} until nothing waits (or the budget is spent); then C{sendmmsg}."""
        batch = self.batch
        batch.holding = True
        try:
            read = 0
            while read < READ_BUDGET:
                try:
                    datagrams = self._receiver.receive()
                except OSError as e:
                    self._drop(MUX_ERROR, e)
                    break
                for data, addr in datagrams:
                    self.datagram(data, addr)
                read += len(datagrams)
                if len(datagrams) < self._receiver.size:
                    break
        finally:
            batch.holding = False
            if len(batch):
                batch.flush()

    def datagram(self, data: bytes, addr: tuple) -> None:
        """One datagram from C{addr}: to its connection, or dropped and counted."""
        addr = (addr[0], addr[1])
        transport = self._byAddress.get(addr)
        try:
            if transport is not None:
                if data and data[0] == 1 and isStun(data):  # a response from a known address
                    self._pending.pop(bytes(data[8:20]), None)
            else:
                transport = self._learn(data, addr)
                if transport is None:
                    return
            transport.protocol.datagram_received(data, addr)
        except Exception as e:  # a bug: count and log it, never raise into the loop
            self._onError("mux", e)

    def _learn(self, data: bytes, addr: tuple) -> MuxTransport | None:
        """The connection a datagram from an unknown address is for, or C{None} (dropped)."""
        if not isStun(data):
            self._drop(UNKNOWN_ADDRESS, addr=addr)
            return None
        kind = data[0] & 0x01, data[1] & 0x10  # the class bits (RFC 8489 5)
        if kind == (0, 0):  # a request: find the connection by the ufrag
            try:
                message = stun.parse_message(data)
            except ValueError:
                self._drop(UNKNOWN_UFRAG, addr=addr)
                return None
            username = message.attributes.get("USERNAME")
            transport = None
            if isinstance(username, str):
                transport = self._byUfrag.get(username.partition(":")[0])
            if transport is None:
                self._drop(UNKNOWN_UFRAG, addr=addr)
            return transport
        if data[0] & 0x01:  # a response: whoever asked that address
            txid = bytes(data[8:20])
            entry = self._pending.get(txid)
            if entry is not None and entry[1] == addr:
                del self._pending[txid]
                transport = entry[0]
                if data[0:2] == b"\x01\x01":
                    self._map(addr, transport)
                return transport
        self._drop(UNMATCHED_STUN, addr=addr)
        return None

    def _drop(self, reason: str, error: Exception | None = None, addr=None) -> None:
        self._onDropped(reason)
        if reason not in self._logged:
            self._logged.add(reason)
            _log.info("UDP port {port}: dropped {what}{source}{error} (later ones are only "
                      "counted: ahoy_dropped_packets_by_reason_total{{reason=\"{reason}\"}})",
                      port=self._port, what=_EXPLAIN[reason],
                      source=f" from {addr[0]}:{addr[1]}" if addr is not None else "",
                      error=f" ({error})" if error is not None else "", reason=reason)


class PortUnavailable(Exception):
    """C{[ice] udp_port} cannot be bound (taken, or the address is not this machine's)."""


class OnePort:
    """
    The shared sockets of an engine: one L{UdpMux} per host address, all on
    C{port}, and the local ufrags, unique among them.
    """

    def __init__(self, hosts: tuple[str, ...], port: int, onDropped: Callable[[str], None],
                 onError: Callable[[str, Exception], None], batching: bool = False):
        self.muxes = [UdpMux(host, port, onDropped, onError, batching) for host in hosts]

    def start(self) -> None:
        """
        Bind every socket (all or none).

        @raise PortUnavailable: with one line naming the address and the error.
        """
        for mux in self.muxes:
            try:
                mux.start()
            except OSError as e:
                self.stop()
                raise PortUnavailable(f"[ice] udp_port: cannot bind UDP {mux.describe()}: "
                                      f"{e.strerror or e}") from None

    def stop(self) -> None:
        """Close every socket."""
        for mux in self.muxes:
            mux.stop()

    def newUfrag(self) -> str:
        """A local ufrag no live connection has."""
        while True:
            ufrag = "".join(secrets.choice(_UFRAG_CHARS) for _ in range(UFRAG_LENGTH))
            if not any(mux.hasUfrag(ufrag) for mux in self.muxes):
                return ufrag

    def refused(self) -> tuple[int, int]:
        """C{(copies, bytes)} the kernel refused in batches (not forwarded after all)."""
        batches = [mux.batch for mux in self.muxes if mux.batch is not None]
        return sum(b.failed for b in batches), sum(b.failedBytes for b in batches)

    def sizes(self) -> dict[str, int]:
        """L{UdpMux.sizes}, summed."""
        total = {"ufrags": 0, "addresses": 0, "transactions": 0}
        for mux in self.muxes:
            for key, value in mux.sizes().items():
                total[key] += value
        return total
