"""
SIP transactions and dialogs on a fake clock (L{task.Clock}) and a fake
transport: retransmissions over UDP, none over TCP, timeouts, CANCEL, ACK.
"""

from __future__ import annotations

from collections import Counter

from twisted.internet import task
from twisted.trial.unittest import TestCase

from ahoyconference.sip.dialog import Dialog
from ahoyconference.sip.message import Message, NameAddr, parse
from ahoyconference.sip.transaction import T1, T2, Transactions
from ahoyconference.sip.transport import Origin, Receiver
from tests.test_sip_message import INVITE


class FakeTU:
    """A transaction user that records."""

    def __init__(self):
        self.requests, self.acks, self.noAcks, self.cancels = [], [], [], []

    def request(self, txn):
        self.requests.append(txn)

    def ack(self, msg, origin):
        self.acks.append(msg)

    def noAck(self, txn):
        self.noAcks.append(txn)

    def cancelled(self, txn):
        self.cancels.append(txn)


def counters():
    return {n: Counter() for n in ("requests", "responses", "dropped", "timeouts",
                                   "retransmissions", "errors")}


class TransactionTests(TestCase):
    """L{Transactions}."""

    def setUp(self):
        self.clock = task.Clock()
        self.tu = FakeTU()
        self.counters = counters()
        self.layer = Transactions(self.clock, self.tu, self.counters)
        self.sent: list[bytes] = []
        self.udp = Origin("UDP", ("10.0.0.1", 5062), self.sent.append, ("127.0.0.1", 5060))
        self.tcp = Origin("TCP", ("10.0.0.1", 5062), self.sent.append, ("127.0.0.1", 5060))

    def statuses(self):
        return [parse(d).status for d in self.sent]

    def test_inviteFinalRetransmittedUntilAck(self):
        """
        A final response to INVITE goes out at 0, T1, 3·T1, … (doubling, at
        most T2 apart) until the ACK; a retransmitted INVITE gets nothing new
        meanwhile; a non-2xx's ACK is absorbed by the transaction.
        """
        self.layer.received(parse(INVITE), self.udp)
        self.assertEqual(len(self.tu.requests), 1)
        txn = self.tu.requests[0]
        txn.reply(100)
        txn.reply(486, toTag="t")
        self.assertEqual(self.statuses(), [100, 486])
        self.clock.advance(T1)
        self.assertEqual(self.statuses(), [100, 486, 486])
        self.clock.advance(2 * T1)
        self.assertEqual(len(self.sent), 4)
        self.layer.received(parse(INVITE), self.udp)  # the INVITE again
        self.assertEqual(len(self.tu.requests), 1)
        self.assertEqual(self.counters["retransmissions"]["request"], 1)
        ack = INVITE.replace(b"INVITE sip", b"ACK sip").replace(b"1 INVITE", b"1 ACK")
        self.layer.received(parse(ack), self.udp)
        self.assertEqual(self.tu.acks, [])
        self.clock.advance(T2 * 10)
        self.assertEqual(len(self.sent), 4)
        self.assertEqual(self.tu.noAcks, [])

    def test_noAck(self):
        """A 2xx never ACKed: retransmitted at intervals capped by T2, given up after 64·T1."""
        self.layer.received(parse(INVITE), self.udp)
        txn = self.tu.requests[0]
        txn.reply(200, toTag="t")
        times = []
        for _ in range(int(64 * T1 / 0.25) + 1):
            before = len(self.sent)
            self.clock.advance(0.25)
            if len(self.sent) > before:
                times.append(self.clock.seconds())
        self.assertEqual(times[:4], [0.5, 1.5, 3.5, 7.5])
        self.assertTrue(all(b - a <= T2 + 0.01 for a, b in zip(times, times[1:], strict=False)))
        self.assertEqual(self.tu.noAcks, [txn])
        self.assertEqual(self.counters["timeouts"]["ack"], 1)

    def test_tcpNoRetransmission(self):
        """Over TCP the final response goes once."""
        self.layer.received(parse(INVITE), self.tcp)
        self.tu.requests[0].reply(200, toTag="t")
        self.clock.advance(10)
        self.assertEqual(self.statuses(), [200])

    def test_nonInviteAnsweredAgain(self):
        """A retransmitted OPTIONS is answered with the same response; after 64·T1 it is new."""
        options = INVITE.replace(b"INVITE sip", b"OPTIONS sip").replace(b"1 INVITE", b"1 OPTIONS")
        self.layer.received(parse(options), self.udp)
        self.tu.requests[0].reply(200)
        self.layer.received(parse(options), self.udp)
        self.assertEqual(self.statuses(), [200, 200])
        self.assertEqual(len(self.tu.requests), 1)
        self.clock.advance(64 * T1)
        self.layer.received(parse(options), self.udp)
        self.assertEqual(len(self.tu.requests), 2)

    def test_cancel(self):
        """CANCEL: 200 to it, the transaction user told; for no INVITE, 481."""
        self.layer.received(parse(INVITE), self.udp)
        cancel = INVITE.replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL")
        self.layer.received(parse(cancel), self.udp)
        self.assertEqual(self.statuses(), [200])
        self.assertEqual(self.tu.cancels, [self.tu.requests[0]])
        other = cancel.replace(b"branch=z9hG4bK1", b"branch=z9hG4bK2")
        self.layer.received(parse(other), self.udp)
        self.assertEqual(self.statuses(), [200, 481])

    def test_clientRetransmitsAndTimesOut(self):
        """Our BYE over UDP: resent at T1, 2·T1, 4·T1, T2, …; 408 after 64·T1."""
        self.layer.received(parse(INVITE), self.udp)
        dialog = Dialog(parse(INVITE), self.udp)
        results = []
        self.layer.send(dialog.request("BYE"), self.udp).addCallback(results.append)
        self.assertEqual(len(self.sent), 1)
        bye = parse(self.sent[0])
        self.assertEqual(bye.method, "BYE")
        self.assertEqual(bye.uri, "sip:bob@10.0.0.1:5062")
        self.assertEqual(bye.getAll("Route"), ["<sip:pbx1;lr>", "<sip:pbx2;lr>"])
        self.assertEqual(NameAddr.parse(bye.get("From")).params["tag"], dialog.localTag)
        self.assertEqual(bye.cseq(), (2, "BYE"))
        self.clock.advance(T1)
        self.clock.advance(2 * T1)
        self.assertEqual(len(self.sent), 3)
        self.clock.advance(64 * T1)
        self.assertEqual(results[0].status, 408)
        self.assertEqual(self.counters["timeouts"]["BYE"], 1)

    def test_clientAnswered(self):
        """A response stops the retransmissions and fires the Deferred."""
        dialog = Dialog(parse(INVITE), self.udp)
        results = []
        self.layer.send(dialog.request("BYE"), self.udp).addCallback(results.append)
        bye = parse(self.sent[0])
        ok = Message(status=200, reason="OK", headers=[[n, v] for n, v in bye.headers
                                                       if n in ("Via", "From", "To", "Call-ID",
                                                                "CSeq")])
        self.layer.received(parse(ok.toBytes()), self.udp)
        self.assertEqual(results[0].status, 200)
        self.clock.advance(10)
        self.assertEqual(len(self.sent), 1)
        stray = ok.toBytes().replace(b"branch=z9hG4bK", b"branch=z9hG4bKx")
        self.layer.received(parse(stray), self.udp)
        self.assertEqual(self.counters["dropped"]["stray-response"], 1)


class ReceiverTests(TestCase):
    """L{Receiver}: junk and foreign peers are counted, not handled."""

    def test_junk(self):
        got = []
        c = counters()
        receiver = Receiver(lambda m, o: got.append(m), c, allowed=lambda h: h == "10.0.0.1")
        origin = Origin("UDP", ("10.0.0.1", 1), lambda b: None, ("127.0.0.1", 5060))
        receiver.data(b"junk", origin)
        receiver.data(INVITE, Origin("UDP", ("10.0.0.2", 1), lambda b: None, ("127.0.0.1", 5060)))
        receiver.data(INVITE, origin)
        self.assertEqual(len(got), 1)
        self.assertEqual(c["dropped"]["unparsable"], 1)
        self.assertEqual(c["dropped"]["foreign"], 1)
