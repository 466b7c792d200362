# -*- test-case-name: tests.test_sip_transaction -*-
"""
SIP transactions (RFC 3261 17): matching requests to server transactions,
answering retransmitted requests with the last response, retransmitting
final responses to INVITE and our own requests over UDP (timers on an
injected clock), and timing them out.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer

from ahoyconference.logs import logger
from ahoyconference.sip.message import Message, newBranch, response, stampVia
from ahoyconference.sip.transport import Origin

_log = logger(__name__)

T1 = 0.5
"""RTT estimate (RFC 3261 17.1.1.1), seconds."""
T2 = 4.0
"""Cap of the retransmission interval of non-INVITE requests and INVITE responses."""
T4 = 5.0
"""How long a message may stay in the network."""


class Retransmitter:
    """
    Sends one message now, and again over UDP after T1, 2·T1, … (capped at
    L{T2}) until L{stop}; after 64·T1 it stops and calls C{onTimeout}.
    """

    def __init__(self, clock, data: bytes, origin: Origin, onTimeout: Callable[[], None],
                 cap: float = T2):
        self._clock = clock
        self._data = data
        self._origin = origin
        self._onTimeout = onTimeout
        self._cap = cap
        self._interval = T1
        self._timer = None
        self._deadline = None
        self.sent = 0
        self._send()
        if not origin.reliable:
            self._timer = clock.callLater(T1, self._again)
        self._deadline = clock.callLater(64 * T1, self._timeout)

    def _send(self) -> None:
        self.sent += 1
        self._origin.write(self._data)

    def _again(self) -> None:
        self._send()
        self._interval = min(self._interval * 2, self._cap)
        self._timer = self._clock.callLater(self._interval, self._again)

    def _timeout(self) -> None:
        self._deadline = None
        self.stop()
        self._onTimeout()

    def stop(self) -> None:
        """No more sending, no timeout."""
        for call in (self._timer, self._deadline):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._deadline = None

    @property
    def running(self) -> bool:
        """Still sending or waiting?"""
        return self._deadline is not None


class ServerTransaction:
    """
    One request we received, and our answers to it.

    @ivar request: the request.
    @ivar origin: where it came from, where answers go.
    @ivar final: the final response, once sent.
    """

    def __init__(self, layer: Transactions, key, request: Message, origin: Origin):
        self._layer = layer
        self.key = key
        self.request = request
        self.origin = origin
        self.last: bytes | None = None
        self.final: Message | None = None
        self._retransmit: Retransmitter | None = None
        self._expiry = None

    def respond(self, msg: Message) -> None:
        """Send a response; a final one ends the transaction after its timers."""
        if self.final is not None:
            return
        data = msg.toBytes()
        self.last = data
        clock = self._layer.clock
        if msg.status < 200:
            self.origin.write(data)
            return
        self.final = msg
        self._layer.counters["responses"][msg.status] += 1
        if self.request.method == "INVITE":
            # Sent until ACKed (RFC 3261 17.2.1 for non-2xx, 13.3.1.4 for 2xx).
            self._retransmit = Retransmitter(clock, data, self.origin, self._noAck)
        else:
            self.origin.write(data)
        # Timer J / H: keep answering retransmissions for 64·T1 (none on TCP).
        linger = 0 if self.origin.reliable and self.request.method != "INVITE" else 64 * T1
        self._expiry = clock.callLater(linger, self._layer.forget, self)

    def reply(self, status: int, reason: str | None = None, toTag: str | None = None,
              body: bytes = b"", extra=()) -> Message:
        """Make and send a response."""
        msg = response(self.request, status, reason, toTag, body, extra)
        self.respond(msg)
        return msg

    def acked(self) -> None:
        """The ACK came: stop retransmitting the final response."""
        if self._retransmit is not None:
            self._retransmit.stop()
            self._retransmit = None

    def _noAck(self) -> None:
        self._layer.counters["timeouts"]["ack"] += 1
        _log.info("SIP: no ACK for {status} to the INVITE of call {call_id}",
                  status=self.final.status if self.final else "?",
                  call_id=self.request.get("Call-ID", "")[:16])
        self._layer.noAck(self)

    def retransmitted(self) -> None:
        """The request came again: answer with the last response."""
        self._layer.counters["retransmissions"]["request"] += 1
        if self.last is not None and (self._retransmit is None or not self._retransmit.running):
            self.origin.write(self.last)

    def close(self) -> None:
        """Cancel every timer."""
        self.acked()
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()


class ClientTransaction:
    """
    One request we send: retransmitted over UDP until a response, a
    Deferred for the final response; 408 is made up on timeout (Timer B/F).
    """

    def __init__(self, layer: Transactions, request: Message, origin: Origin):
        self._layer = layer
        self.request = request
        self.branch = request.topVia()["params"]["branch"]
        self.deferred: defer.Deferred = defer.Deferred()
        cap = 64 * T1 if request.method == "INVITE" else T2
        self._retransmit = Retransmitter(layer.clock, request.toBytes(), origin, self._timeout,
                                         cap=cap)

    def responded(self, msg: Message) -> None:
        """A response to our request."""
        self._retransmit.stop()
        if msg.status >= 200 and not self.deferred.called:
            self._layer.clientDone(self)
            self.deferred.callback(msg)

    def _timeout(self) -> None:
        self._layer.counters["timeouts"][self.request.method] += 1
        self._layer.clientDone(self)
        if not self.deferred.called:
            self.deferred.callback(response(self.request, 408))

    def close(self) -> None:
        """Give up."""
        self._retransmit.stop()


class Transactions:
    """
    The transaction layer: matches what arrives, hands new requests and
    ACKs for 2xx to the transaction user (C{tu.request(txn)},
    C{tu.ack(message, origin)}, C{tu.noAck(txn)}).

    @param counters: a dict of L{collections.Counter}s for /metrics.
    """

    def __init__(self, clock, tu, counters):
        self.clock = clock
        self.tu = tu
        self.counters = counters
        self._server: dict[tuple, ServerTransaction] = {}
        self._client: dict[str, ClientTransaction] = {}

    @staticmethod
    def _key(msg: Message) -> tuple:
        via = msg.topVia()
        method = msg.cseq()[1]
        if method == "ACK":
            method = "INVITE"
        return (via["params"].get("branch", ""), via["host"], via["port"], method)

    def received(self, msg: Message, origin: Origin) -> None:
        """A parsed message from a transport."""
        if not msg.isRequest:
            branch = msg.topVia()["params"].get("branch", "")
            txn = self._client.get(branch)
            if txn is None:
                self.counters["dropped"]["stray-response"] += 1
                return
            txn.responded(msg)
            return
        key = self._key(msg)
        stampVia(msg, origin.addr[0], origin.addr[1])
        txn = self._server.get(key)
        if msg.method == "ACK":
            if txn is not None and txn.final is not None and txn.final.status >= 300:
                txn.acked()  # ACK of a non-2xx: part of the INVITE transaction
                return
            self.tu.ack(msg, origin)
            return
        if txn is not None:
            txn.retransmitted()
            return
        if msg.method == "CANCEL":
            self._cancel(msg, origin)
            return
        txn = ServerTransaction(self, key, msg, origin)
        self._server[key] = txn
        self.counters["requests"][msg.method] += 1
        self.tu.request(txn)

    def _cancel(self, msg: Message, origin: Origin) -> None:
        """CANCEL (RFC 3261 9.2): 200 to it; the INVITE, if still open, gets 487."""
        key = self._key(msg)
        target = self._server.get((key[0], key[1], key[2], "INVITE"))
        txn = ServerTransaction(self, key, msg, origin)
        self._server[key] = txn
        self.counters["requests"]["CANCEL"] += 1
        if target is None:
            txn.reply(481)
            return
        txn.reply(200)
        if target.final is None:
            self.tu.cancelled(target)

    def forget(self, txn: ServerTransaction) -> None:
        """A server transaction's time is over."""
        if self._server.get(txn.key) is txn:
            del self._server[txn.key]

    def noAck(self, txn: ServerTransaction) -> None:
        """An INVITE's final response was never ACKed."""
        self.tu.noAck(txn)

    def send(self, request: Message, origin: Origin) -> defer.Deferred:
        """
        Send a request we make (a Via with a new branch is put on top).

        @return: a Deferred firing with the final response (408 made up on timeout).
        """
        host, port = origin.local
        branch = newBranch()
        request.add("Via", f"SIP/2.0/{origin.transport} {host}:{port};branch={branch};rport",
                    first=True)
        if request.method == "ACK":  # the ACK of a 2xx is no transaction (RFC 3261 17.1.1.3)
            origin.write(request.toBytes())
            return defer.succeed(None)
        txn = ClientTransaction(self, request, origin)
        self._client[txn.branch] = txn
        return txn.deferred

    def clientDone(self, txn: ClientTransaction) -> None:
        """A client transaction ended."""
        self._client.pop(txn.branch, None)

    def close(self) -> None:
        """Stop every timer (the service stops)."""
        for txn in list(self._server.values()):
            txn.close()
        for ctx in list(self._client.values()):
            ctx.close()
        self._server.clear()
        self._client.clear()
