"""
The SIP gateway over real UDP sockets on 127.0.0.1, with a hand-written SIP
peer: OPTIONS, refusals (locked 480, full 486, no SDP 488, too short a
session 422), the PIN by SIP INFO, re-INVITE to hold, UPDATE refreshes,
the session timer's BYE (on a fake clock), and the /metrics counters.
"""

from __future__ import annotations

import asyncio
import random
import secrets

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from ahoyconference.config import SipSettings
from ahoyconference.policy import PasswordPolicy
from ahoyconference.sip.gateway import SipGateway
from ahoyconference.sip.message import Message, NameAddr, parse
from tests.helpers import Server, asyncTest, createAndJoin
from tests.test_metrics import _httpGet

SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na={direction}\r\n")


class SipPeer(asyncio.DatagramProtocol):
    """A minimal UAC: sends what it is told, queues what arrives."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.queue.put_nowait(parse(data))

    async def expect(self, timeout: float = 5.0, status: int | None = None,
                     method: str | None = None) -> Message:
        """The next message (skipping provisional responses unless asked for)."""
        while True:
            msg = await asyncio.wait_for(self.queue.get(), timeout)
            if method is not None and msg.method == method:
                return msg
            if status is not None and msg.status == status:
                return msg
            if method is None and status is None and (msg.isRequest or msg.status >= 200):
                return msg


class Call:
    """One call of the L{SipPeer}."""

    def __init__(self, peer: SipPeer, server: tuple[str, int], conference: str):
        self.peer = peer
        self.server = server
        self.callID = secrets.token_hex(8)
        self.fromTag = secrets.token_hex(4)
        self.toTag = ""
        self.cseq = 0
        self.uri = f"sip:{conference}@{server[0]}:{server[1]}"
        self.local = peer.transport.get_extra_info("sockname")

    def send(self, method: str, body: str = "", extra=(), cseq: int | None = None,
             branch: str | None = None) -> bytes:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        to = f"<{self.uri}>" + (f";tag={self.toTag}" if self.toTag else "")
        headers = [
            ["Via", f"SIP/2.0/UDP {self.local[0]}:{self.local[1]};branch="
                    f"{branch or 'z9hG4bK' + secrets.token_hex(6)};rport"],
            ["Max-Forwards", "70"], ["From", f'"Carol" <sip:carol@127.0.0.1>;tag={self.fromTag}'],
            ["To", to], ["Call-ID", self.callID], ["CSeq", f"{cseq} {method}"],
            ["Contact", f"<sip:carol@{self.local[0]}:{self.local[1]}>"],
        ] + [list(h) for h in extra]
        if body:
            headers.append(["Content-Type", "application/sdp"])
        data = Message(method=method, uri=self.uri, headers=headers, body=body.encode()).toBytes()
        self.peer.transport.sendto(data, self.server)
        return data

    async def invite(self, direction="sendrecv", extra=(), expect=200) -> Message:
        body = SDP.format(port=random.randrange(50000, 59000, 2), direction=direction)
        self.send("INVITE", body, extra)
        response = await self.peer.expect(status=expect)
        if response.status < 300:
            self.toTag = NameAddr.parse(response.get("To")).params.get("tag", "")
            self.send("ACK", cseq=self.cseq)
        return response


class GatewayTests(TestCase):
    """The gateway as a SIP peer sees it."""

    timeout = 60

    async def _setUp(self, policy=None, **settings):
        self.server = await Server(engine="aiortc", policy=policy).start()
        self.clock = task.Clock()
        base = random.randrange(40000, 49000, 2)
        self.settings = SipSettings(listen=("udp:127.0.0.1:0",), peers=("127.0.0.1/32",),
                                    rtp_ports=(base, base + 20), **settings)
        self.gateway = SipGateway(self.server.service, self.settings, self.server.reactor,
                                  clock=self.clock)
        self.server.service.sip = self.gateway
        self.gateway.startService()
        _, address, port = self.gateway.addresses()[0]
        self.address = (address, port)
        loop = asyncio.get_event_loop()
        transport, self.peer = await loop.create_datagram_endpoint(
            SipPeer, local_addr=("127.0.0.1", 0))

        async def cleanup():
            transport.close()
            await defer.Deferred.asFuture(defer.maybeDeferred(self.gateway.stopService), loop)
            await self.server.stop()

        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(cleanup())))

    def call(self, conference: str) -> Call:
        return Call(self.peer, self.address, conference)

    @asyncTest
    async def test_options(self):
        """OPTIONS: 200 with what we allow."""
        await self._setUp()
        call = self.call("room")
        call.send("OPTIONS")
        response = await self.peer.expect()
        self.assertEqual(response.status, 200)
        self.assertIn("INVITE", response.get("Allow"))
        self.assertIn("timer", response.get("Supported"))

    @asyncTest
    async def test_refusals(self):
        """Locked 480, full 486, no SDP 488, a session interval below Min-SE 422, junk 501."""
        await self._setUp()
        alice, _ = await createAndJoin(self.server.url, "room", "alice", maxMember=1)
        call = self.call("room")
        await call.invite(expect=486)
        await alice.request("CONFERENCE_LOCK_request", locked=True)
        self.server.service.conferences["room"].maxMembers = 10
        await self.call("room").invite(expect=480)
        await alice.request("CONFERENCE_LOCK_request", locked=False)
        self.call("room").send("INVITE")
        self.assertEqual((await self.peer.expect()).status, 488)
        response = await self.call("room").invite(extra=[["Session-Expires", "30"],
                                                         ["Supported", "timer"]], expect=422)
        self.assertEqual(response.get("Min-SE"), "90")
        self.call("room").send("SUBSCRIBE")
        self.assertEqual((await self.peer.expect()).status, 501)
        for status in (486, 480, 488, 422, 501):
            self.assertEqual(self.gateway.counters["refused"][status], 1, status)
        body = (await _httpGet(self.server.http, "/metrics")).decode()
        self.assertIn('ahoy_sip_refused_total{status="486"} 1.0', body)
        self.assertFalse(self.gateway.calls)
        await alice.close()

    @asyncTest
    async def test_pinByInfoHoldRefreshExpire(self):
        """
        The PIN by SIP INFO; a re-INVITE to hold is answered recvonly; an
        UPDATE refreshes the session; without refreshes the session timer
        ends the call with a BYE.
        """
        await self._setUp()
        alice, _ = await createAndJoin(self.server.url, "room", "alice", joinPassword="77",
                                       password="77")
        call = self.call("room")
        ok = await call.invite(extra=[["Session-Expires", "120;refresher=uac"],
                                      ["Supported", "timer"]])
        self.assertEqual(ok.get("Session-Expires"), "120;refresher=uac")
        self.assertIn("a=sendrecv", ok.body.decode())
        call.send("INFO", extra=[["Content-Type", "application/x-unknown"]])
        self.assertEqual((await self.peer.expect()).status, 415)
        for key in "77#":
            self._info(call, key)
            self.assertEqual((await self.peer.expect()).status, 200)
        joined = await alice.expect("CONFERENCE_JOIN_indication")
        self.assertEqual(joined["member"]["name"], "Carol")
        self.assertFalse(joined["member"]["webrtc"])

        call.send("INVITE", SDP.format(port=50000, direction="sendonly"))
        held = await self.peer.expect()
        self.assertEqual(held.status, 200)
        self.assertIn("a=recvonly", held.body.decode())
        gatewayCall = next(iter(self.gateway.calls.values()))
        self.assertFalse(gatewayCall.rtp.sending)
        call.send("ACK", cseq=call.cseq)
        await asyncio.sleep(0.3)  # the ACK arrives before the fake clock moves

        self.clock.advance(100)
        call.send("UPDATE", extra=[["Session-Expires", "120"], ["Supported", "timer"]])
        self.assertEqual((await self.peer.expect()).status, 200)
        self.clock.advance(50)
        self.assertTrue(self.gateway.calls)  # refreshed: 150 s after the INVITE, still up
        self.clock.advance(60)
        bye = await self.peer.expect(method="BYE")
        self.assertEqual(NameAddr.parse(bye.get("From")).params["tag"], call.toTag)
        await alice.expect("CONFERENCE_LEAVE_indication")
        self.assertEqual(self.gateway.counters["timeouts"]["session"], 1)
        await alice.close()

    def _info(self, call: Call, key: str) -> None:
        body = f"Signal={key}\r\nDuration=160\r\n"
        call.cseq += 1
        to = f"<{call.uri}>;tag={call.toTag}"
        headers = [
            ["Via", f"SIP/2.0/UDP {call.local[0]}:{call.local[1]};branch=z9hG4bK"
                    f"{secrets.token_hex(6)}"],
            ["From", f'"Carol" <sip:carol@127.0.0.1>;tag={call.fromTag}'], ["To", to],
            ["Call-ID", call.callID], ["CSeq", f"{call.cseq} INFO"],
            ["Content-Type", "application/dtmf-relay"]]
        data = Message(method="INFO", uri=call.uri, headers=headers, body=body.encode())
        call.peer.transport.sendto(data.toBytes(), call.server)

    @asyncTest
    async def test_byeForNoCall(self):
        """A BYE outside any call: 481."""
        await self._setUp()
        call = self.call("room")
        call.toTag = "nothing"
        call.send("BYE")
        self.assertEqual((await self.peer.expect()).status, 481)

    @asyncTest
    async def test_pinTimeout(self):
        """A caller who never gets the PIN right is hung up after a minute."""
        await self._setUp()
        alice, _ = await createAndJoin(self.server.url, "room", "alice", joinPassword="77",
                                       password="77")
        call = self.call("room")
        await call.invite()
        await asyncio.sleep(0.3)  # the ACK arrives before the fake clock moves
        self.clock.advance(61)
        await self.peer.expect(method="BYE")
        self.assertEqual(self.gateway.counters["timeouts"]["pin"], 1)
        self.assertFalse(self.gateway.calls)
        self.assertEqual(len(self.server.service.members), 1)
        await alice.close()

    @asyncTest
    async def test_cancel(self):
        """
        CANCEL while the policy is still deciding: 200 to the CANCEL, 487 to
        the INVITE, and no member when the policy answers afterwards.
        """
        answers = []

        class SlowPolicy(PasswordPolicy):
            slow = False

            def roleFor(self, client, settings, name, password):
                role = super().roleFor(client, settings, name, password)
                if not self.slow:
                    return role
                d = defer.Deferred()
                answers.append((d, role))
                return d

        policy = SlowPolicy()
        await self._setUp(policy=policy)
        alice, _ = await createAndJoin(self.server.url, "room", "alice")
        policy.slow = True
        call = self.call("room")
        invite = call.send("INVITE", SDP.format(port=50000, direction="sendrecv"))
        await self.peer.expect(status=100)
        branch = parse(invite).topVia()["params"]["branch"]
        call.send("CANCEL", cseq=call.cseq, branch=branch)
        statuses = {(await self.peer.expect()).status for _ in range(2)}
        self.assertEqual(statuses, {200, 487})
        deferred, role = answers.pop()
        deferred.callback(role)
        await asyncio.sleep(0.1)
        self.assertEqual(len(self.server.service.members), 1)
        self.assertFalse(self.gateway.calls)
        self.assertEqual(self.gateway.counters["calls"]["cancelled"], 1)
        await alice.close()

    @asyncTest
    async def test_weRefresh(self):
        """
        The caller asks us to refresh (refresher=uas): a re-INVITE with our
        SDP at half the interval, ACKed when answered; the call stays up.
        """
        await self._setUp()
        alice, _ = await createAndJoin(self.server.url, "room", "alice")
        call = self.call("room")
        ok = await call.invite(extra=[["Session-Expires", "100;refresher=uas"],
                                      ["Supported", "timer"]])
        self.assertEqual(ok.get("Session-Expires"), "100;refresher=uas")
        await asyncio.sleep(0.3)
        self.clock.advance(50)
        reinvite = await self.peer.expect(method="INVITE")
        self.assertEqual(reinvite.body, ok.body)
        self.assertEqual(reinvite.uri, f"sip:carol@{call.local[0]}:{call.local[1]}")
        answer = Message(status=200, reason="OK", headers=[
            [n, v] for n, v in reinvite.headers if n in ("Via", "From", "To", "Call-ID", "CSeq")])
        self.peer.transport.sendto(answer.toBytes(), self.address)
        ack = await self.peer.expect(method="ACK")
        self.assertEqual(ack.cseq(), (reinvite.cseq()[0], "ACK"))
        self.assertTrue(ack.topVia()["params"]["branch"].startswith("z9hG4bK"))
        self.clock.advance(90)
        self.assertTrue(self.gateway.calls)
        await alice.close()
