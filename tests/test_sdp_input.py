# -*- test-case-name: tests.test_sdp_input -*-
"""
Malformed, truncated and hostile SDP answers through the real server
(protocol.md 3.1, 3.2, 4.1): sent as C{MEDIA_RECEIVE_response} and
C{SDP_response} by joined members whose real aiortc peers already publish
and receive.  Every unusable answer gets C{ERROR_response} 488 (400 when
C{sdp} is not a string); nothing changes (the publisher's current
connection keeps forwarding, the pending offer stays answerable, the
others see nothing); the server still serves.

ICE candidates for addresses the server cannot or must not reach (other
networks than its host addresses, mDNS names, multicast, broken ports) are
dropped from an answer before aioice sees them, and so are candidates past
a small limit: every datagram of this process is checked to stay on
127.0.0.1 (L{tests.reliability.guardDatagrams}), docs/architecture.md, Tests.

Run with C{trial --reactor=asyncio}.
"""

from __future__ import annotations

import asyncio
import random
import re

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from ahoyconference.media import sdp as _sdp
from tests.helpers import Server, asyncTest, createAndJoin, join
from tests.mediaclients import Publisher, Subscriber, waitFor
from tests.reliability import ErrorCapture, guardDatagrams
from tests.test_hostile import snapshot
from tests.test_media_engine import loopbackOnly

FOREIGN = ("10.1.2.3", "203.0.113.9")


def _lines(sdp: str) -> list[str]:
    return [line for line in re.split(r"\r?\n", sdp) if line]


def _join(lines) -> str:
    return "\r\n".join(lines) + "\r\n"


def _without(sdp: str, prefix: str) -> str:
    return _join(line for line in _lines(sdp) if not line.startswith(prefix))


def _sub(sdp: str, pattern: str, replacement: str) -> str:
    out, count = re.subn(pattern, replacement, sdp, flags=re.M)
    assert count, f"{pattern!r} is not in the answer"
    return out


def _candidate(i: int, host: str, port: int, kind: str = "host") -> str:
    return f"a=candidate:x{i} 1 udp {2130706431 - i} {host} {port} typ {kind}"


def hostileAnswers(answer: str) -> dict[str, str]:
    """
    Unusable variants of a valid answer, each of which must be refused
    with 488 without anything changing.
    """
    rng = random.Random(488)
    video = answer.index("m=video")
    variants = {}
    for percent in (5, 20, 40, 60, 80, 95):
        variants[f"truncated to {percent}%"] = answer[: len(answer) * percent // 100]
    variants["last line cut"] = answer[:-5]
    variants.update({
        "empty": "",
        "whitespace": " \r\n\t ",
        "v=0 only": "v=0\r\n",
        "session part only": _join(_lines(answer)[:6]),
        "prose": "hello, this is not an SDP at all",
        "random characters": "".join(chr(rng.randrange(1, 0x2FF)) for _ in range(2000)),
        "v=0 then garbage": "v=0\r\n" + "".join(chr(rng.randrange(32, 127)) for _ in range(3000)),
        "NUL bytes": answer.replace("a=mid:0", "a=mid:0\x00\x00"),
        "no fingerprint": _without(answer, "a=fingerprint:"),
        "fingerprint not hex": _sub(answer, r"^a=fingerprint:.*$",
                                    "a=fingerprint:sha-256 not-a-fingerprint"),
        "fingerprint of unknown hash": _sub(answer, r"^a=fingerprint:\S+ ", "a=fingerprint:md4 "),
        "fingerprint too short": _sub(answer, r"^a=fingerprint:(\S+) (..:..:..).*$",
                                      r"a=fingerprint:\1 \2"),
        "no setup": _without(answer, "a=setup:"),
        "setup actpass": _sub(answer, r"^a=setup:.*$", "a=setup:actpass"),
        "no ice-ufrag": _without(answer, "a=ice-ufrag:"),
        "no ice-pwd": _without(answer, "a=ice-pwd:"),
        "no rtcp-mux": _without(answer, "a=rtcp-mux"),
        "wrong codecs": _sub(_sub(answer, r"opus/48000/2", "PCMU/8000"),
                             r"VP8/90000|H264/90000", "H265/90000"),
        "codec garbage": _sub(answer, r"^a=rtpmap:(\d+) .*$", "a=rtpmap:\\1 \x01\x02/abc"),
        "rtpmap without clock rate": _sub(answer, r"^a=rtpmap:(\d+) (\w+)/.*$",
                                          r"a=rtpmap:\1 \2"),
        "payload type 300": _sub(answer, r"^(m=audio \d+ \S+) 96", r"\1 300"),
        "rejected section": _sub(answer, r"^m=video \d+", "m=video 0"),
        "only audio": answer[:video],
        "mids swapped": _sub(_sub(_sub(answer, r"^a=mid:0", "a=mid:X"), r"^a=mid:1", "a=mid:0"),
                             r"^a=mid:X", "a=mid:1"),
        "extra section": answer + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n",
        "sections twice": answer + answer[video:],
        "broken candidate": _sub(answer, r"^a=candidate:.*$",
                                 "a=candidate:1 1 udp notanumber 127.0.0.1 x typ host"),
        "10,000 attribute lines": answer[:video] + "".join(
            f"a=x-junk-{i}:{'z' * 40}\r\n" for i in range(10000)) + answer[video:],
        "10,000 candidates": answer[:video] + "".join(
            _candidate(i, f"10.{i // 250 % 250}.{i % 250}.3", 10000 + i) + "\r\n"
            for i in range(10000)) + answer[video:],
    })
    return variants


NOT_STRINGS = [5, None, [], {"v": 0}, True, 1.5]


def foreignCandidates(answer: str, keepLoopback: bool) -> str:
    """
    The answer with candidates the server must not use added to every
    section: other networks, an mDNS name, multicast, broadcast, the
    unspecified address, bad ports, a host name, IPv6; and without its
    own 127.0.0.1 candidates unless C{keepLoopback}.
    """
    extra = [
        _candidate(1, FOREIGN[0], 40000), _candidate(2, FOREIGN[1], 40001, "srflx"),
        _candidate(3, "3f1c2a4e-1b2c-4d5e-8f90-123456789abc.local", 40002),
        _candidate(4, "224.0.0.251", 5353), _candidate(5, "255.255.255.255", 40003),
        _candidate(6, "0.0.0.0", 40004), _candidate(7, "fd00::5", 40005),
        _candidate(8, "127.0.0.1", 0), _candidate(9, "127.0.0.1", 99999),
        _candidate(10, "evil.example.com", 40006), _candidate(11, "169.254.1.1", 40007),
    ]
    out = []
    for line in _lines(answer):
        if line.startswith("a=candidate:") and not keepLoopback:
            continue
        if line == "a=end-of-candidates":
            out.extend(extra)
        out.append(line)
    return _join(out)


def remoteAddresses(pc) -> set:
    """The addresses aioice holds as remote candidates of a peer connection."""
    connection = pc.getTransceivers()[0].receiver.transport.transport._connection
    return {c.host for c in connection.remote_candidates}


def nominatedAddress(pc):
    """The remote address of the nominated ICE pair of a peer connection."""
    connection = pc.getTransceivers()[0].receiver.transport.transport._connection
    return connection._nominated[1].remote_addr[0]


class SdpInputTests(TestCase):
    """Hostile answers from joined members with real peers on the line."""

    timeout = 110

    def setUp(self):
        loopbackOnly(self)
        self.refused = guardDatagrams(self)
        self.errors = ErrorCapture(self)

    async def room(self):
        """
        Alice publishes a real picture and tone, Bob decodes it, Carol is
        joined; every connection and peer is closed at the end.
        """
        server = await Server(engine="aiortc").start()
        self.server = server
        self.engine = server.service.engine
        self.peers = []
        self.clients = []

        async def cleanup():
            for peer in self.peers:
                await peer.close()
            for client in self.clients:
                await client.close()
            await server.stop()

        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(cleanup())))
        alice, joined = await createAndJoin(server.url, "room", "alice")
        bob, _ = await join(server.url, "room", "bob")
        carol, _ = await join(server.url, "room", "carol")
        self.clients += [alice, bob, carol]
        self.aliceID = joined["memberID"]
        publisher = await self.publish(alice, tag=3)
        await waitFor(lambda: self.arrived(self.aliceID), what="Alice's media at the server")
        subscriber = await self.subscribe(bob, self.aliceID)
        await waitFor(lambda: len({n for t, n, ok in subscriber.frames if t == 3}) >= 5,
                      what="Alice's pictures at Bob")
        for client in (alice, bob, carol):
            await client.quiet(0.1)
        return alice, bob, carol, publisher, subscriber

    def arrived(self, memberID: str) -> bool:
        """Has the member's video reached the server?"""
        stream = self.engine._streams.get((memberID, "video"))
        return stream is not None and stream.available

    async def publish(self, client, tag: int, answer=None) -> Publisher:
        """Share; answer the offer with a real publisher (or C{answer(sdp)}'s text)."""
        response = await client.request("MEDIA_SHARE_request", audio=True, video=True)
        self.assertEqual(response["status"], 200)
        offer = await client.expect("MEDIA_RECEIVE_request")
        publisher = Publisher(tag=tag)
        self.peers.append(publisher)
        sdp = await publisher.answer(offer["sdp"])
        await client.send({"messageType": "MEDIA_RECEIVE_response", "status": 200,
                           "reason": "OK", "transactionID": offer["transactionID"],
                           "sdp": answer(sdp) if answer else sdp})
        return publisher

    async def subscribe(self, client, publisherID, answer=None) -> Subscriber:
        """Ask for a member's media; answer with a real subscriber (or C{answer(sdp)})."""
        response = await client.request("MEDIA_request", members=[
            {"memberID": publisherID, "audio": True, "video": True}])
        self.assertEqual(response["status"], 200)
        request = await client.expect("SDP_request", transactionID=publisherID)
        subscriber = Subscriber()
        self.peers.append(subscriber)
        sdp = await subscriber.answer(request["sdp"])
        await client.send({"messageType": "SDP_response", "status": 200, "reason": "OK",
                           "transactionID": publisherID, "sdp": answer(sdp) if answer else sdp})
        return subscriber

    async def refuseAll(self, client, messageType: str, tid: str, answer: str) -> int:
        """Send every hostile variant and every non-string; check each is refused."""
        sent = 0
        for name, sdp in hostileAnswers(answer).items():
            await client.send({"messageType": messageType, "status": 200, "reason": "OK",
                               "transactionID": tid, "sdp": sdp})
            error = await client.expect("ERROR_response", transactionID=tid, timeout=30)
            self.assertEqual(error["status"], 488, name)
            self.assertEqual(error["reason"], "not acceptable here", name)
            sent += 1
        for value in NOT_STRINGS:
            await client.send({"messageType": messageType, "status": 200, "reason": "OK",
                               "transactionID": tid, "sdp": value})
            error = await client.expect("ERROR_response", transactionID=tid)
            self.assertEqual(error["status"], 400, repr(value))
            sent += 1
        return sent

    def engineState(self) -> dict:
        """What the engine holds, by identity: publishers' connections, subscriptions."""
        engine = self.engine
        return {
            "publishers": {mid: (p.current, p.pending, p.kinds)
                           for mid, p in engine._publishers.items()},
            "subscriptions": dict(engine._subscriptions),
            "closed": sorted(peer.describe() for peer in engine._peers if peer.closed),
        }

    async def stillForwarding(self, subscriber: Subscriber, tag: int, more: int = 10) -> None:
        """The subscriber decodes C{more} new pictures of C{tag}."""
        seen = len({n for t, n, ok in subscriber.frames if t == tag})
        await waitFor(lambda: len({n for t, n, ok in subscriber.frames if t == tag}) >= seen + more,
                      what=f"{more} more pictures of {tag}")

    def assertOthersSawNothing(self, messages: list[dict]) -> None:
        """Nothing but (unchanged) media state of Alice reached the others."""
        for m in messages:
            self.assertEqual(m["messageType"], "MEDIA_indication", m)
            self.assertTrue(m["audio"]["available"] and m["video"]["available"], m)

    @asyncTest
    async def test_publishAnswers(self):
        """
        Alice shares again (renegotiation) and answers the new offer with
        dozens of unusable SDPs: each is refused with 488 (400 for a
        non-string), her current connection keeps forwarding to Bob, the
        pending offer stays as it was and her real answer is then accepted,
        after which Bob sees her new picture.
        """
        alice, bob, carol, publisher, subscriber = await self.room()
        response = await alice.request("MEDIA_SHARE_request", audio=True, video=True)
        self.assertEqual(response["status"], 200)
        offer = await alice.expect("MEDIA_RECEIVE_request")
        tid = offer["transactionID"]
        renewed = Publisher(tag=4)
        self.peers.append(renewed)
        answer = await renewed.answer(offer["sdp"])
        before = self.engineState()
        self.assertIsNotNone(before["publishers"][self.aliceID][1], "no pending offer")
        conferences = snapshot(self.server.service)
        forwarded = self.engine.stats()["forwarded_packets"]

        sent = await self.refuseAll(alice, "MEDIA_RECEIVE_response", tid, answer)
        self.assertGreaterEqual(sent, 40)

        self.assertEqual(self.engineState(), before)
        self.assertEqual(snapshot(self.server.service), conferences)
        await self.stillForwarding(subscriber, 3)
        self.assertGreater(self.engine.stats()["forwarded_packets"], forwarded)
        self.assertOthersSawNothing(await bob.quiet(0.1) + await carol.quiet(0.1))
        chat = await carol.request("CHAT_MESSAGE_request", message={"text": "still here"})
        self.assertEqual(chat["status"], 200)

        # the real answer to the same offer is still accepted
        await alice.send({"messageType": "MEDIA_RECEIVE_response", "status": 200,
                          "reason": "OK", "transactionID": tid, "sdp": answer})
        await self.stillForwarding(subscriber, 4)
        self.assertEqual([m for m in await alice.quiet(0.2) if m["messageType"] == "ERROR_response"],
                         [])
        self.assertEqual(self.refused, [])
        self.assertEqual(self.errors.errors, [])

    @asyncTest
    async def test_subscribeAnswers(self):
        """
        Carol asks for Alice's media and answers the offer with the same
        unusable SDPs: each is refused, Bob's subscription goes on, and
        Carol's real answer is then accepted and decoded.
        """
        alice, bob, carol, publisher, subscriber = await self.room()
        response = await carol.request("MEDIA_request", members=[
            {"memberID": self.aliceID, "audio": True, "video": True}])
        self.assertEqual(response["status"], 200)
        request = await carol.expect("SDP_request", transactionID=self.aliceID)
        viewer = Subscriber()
        self.peers.append(viewer)
        answer = await viewer.answer(request["sdp"])
        before = self.engineState()
        conferences = snapshot(self.server.service)

        await self.refuseAll(carol, "SDP_response", self.aliceID, answer)

        self.assertEqual(self.engineState(), before)
        self.assertEqual(snapshot(self.server.service), conferences)
        await self.stillForwarding(subscriber, 3)
        self.assertOthersSawNothing(await bob.quiet(0.1) + await alice.quiet(0.1))

        await carol.send({"messageType": "SDP_response", "status": 200, "reason": "OK",
                          "transactionID": self.aliceID, "sdp": answer})
        await waitFor(lambda: len({n for t, n, ok in viewer.frames if t == 3}) >= 5,
                      what="Alice's pictures at Carol")
        await self.stillForwarding(subscriber, 3)
        self.assertEqual(self.refused, [])
        self.assertEqual(self.errors.errors, [])

    @asyncTest
    async def test_foreignCandidates(self):
        """
        Answers whose candidates point elsewhere (10.1.2.3, 203.0.113.9, an
        mDNS name, multicast, broadcast, bad ports...): the server keeps
        only 127.0.0.1 candidates, never sends a datagram anywhere else,
        and connects on 127.0.0.1 (learning the address from the client's
        checks when no usable candidate is left).  Candidates past the
        limit are dropped too.
        """
        # the guard works: a datagram for elsewhere is recorded, not sent
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        transport.sendto(b"probe", (FOREIGN[0], 9))
        transport.close()
        self.assertEqual(self.refused, [(FOREIGN[0], 9, 5)])
        self.refused.clear()

        alice, bob, carol, publisher, subscriber = await self.room()
        # Carol publishes with her own candidates hidden among foreign ones
        # and Dave with only foreign ones; Bob subscribes to Carol with only
        # foreign ones.
        dave, joined = await join(self.server.url, "room", "dave")
        self.clients.append(dave)
        await self.publish(carol, tag=5, answer=lambda sdp: foreignCandidates(sdp, True))
        await self.publish(dave, tag=6, answer=lambda sdp: foreignCandidates(sdp, False))
        # the answers were accepted, and whatever was dropped was counted
        for client in (carol, dave):
            self.assertEqual([m for m in await client.quiet(0.3)
                              if m["messageType"] == "ERROR_response"], [])
        members = {m.name: m.memberID for m in
                   self.server.service.conferences["room"].members.values()}
        for name in ("carol", "dave"):
            await waitFor(lambda n=name: self.arrived(members[n]), what=f"{name}'s media")
        watcher = await self.subscribe(bob, members["carol"],
                                       answer=lambda sdp: foreignCandidates(sdp, False))
        await waitFor(lambda: len({n for t, n, ok in watcher.frames if t == 5}) >= 5,
                      what="Carol's pictures at Bob")
        peers = [self.engine._publishers[members["carol"]].current,
                 self.engine._publishers[members["dave"]].current,
                 self.engine._subscriptions[(members["bob"], members["carol"])]]
        for peer in peers:
            self.assertEqual(remoteAddresses(peer.pc) - {"127.0.0.1"}, set(), peer.describe())
            self.assertEqual(nominatedAddress(peer.pc), "127.0.0.1", peer.describe())
        self.assertGreaterEqual(self.engine.stats().get("dropped_candidates", 0), 3 * 10)

        # and past the limit: 400 loopback candidates per section (on a port
        # nobody listens on) beside the real one, of which few are kept
        erin, _ = await join(self.server.url, "room", "erin")
        self.clients.append(erin)

        def many(sdp):
            extra = [_candidate(100 + i, "127.0.0.1", 9) for i in range(400)]
            return sdp.replace("a=end-of-candidates\r\n",
                               "\r\n".join(extra) + "\r\na=end-of-candidates\r\n")

        await self.publish(erin, tag=7, answer=many)
        self.assertEqual([m for m in await erin.quiet(0.3) if m["messageType"] == "ERROR_response"],
                         [])
        erinID = next(m.memberID for m in self.server.service.conferences["room"].members.values()
                      if m.name == "erin")
        pending = self.engine._publishers[erinID]
        peer = pending.current or pending.pending
        connection = peer.pc.getTransceivers()[0].receiver.transport.transport._connection
        self.assertLessEqual(len(connection.remote_candidates), _sdp.MAX_REMOTE_CANDIDATES)
        await self.stillForwarding(subscriber, 3)
        self.assertEqual(self.refused, [])
        self.assertEqual(self.errors.errors, [])
