# -*- test-case-name: tests.test_rtp_input -*-
"""
Hostile RTP, RTCP and plain junk at the server's media ports, over the wire,
after ICE and DTLS are up (docs/architecture.md): through the real server, from a
joined member's real aiortc peer connection whose sender produces nothing,
so that every packet on its connection is crafted here and sent through its
own SRTP session (C{_tx_srtp.protect}/C{protect_rtcp}) and its nominated
ICE pair's socket, and from a subscriber's connection.

Empty datagrams, unauthenticated garbage, truncated and replayed SRTP,
foreign SSRCs, unknown payload types, a header extension that ends the
packet, and RTCP whose lengths lie are dropped and counted
(C{engine.stats()["dropped_packets"]}); nothing reaches asyncio's exception
handler or the log; every peer connection stays up and forwarding goes on:
another member's picture keeps arriving at its subscriber, and the crafted
publisher's own valid packets, interleaved with the hostile ones, reach its
subscriber.

Run with C{trial --reactor=asyncio}.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpRtpfbPacket
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.helpers import Server, asyncTest, createAndJoin, join
from tests.mediaclients import Publisher, Subscriber, offeredSsrcs, waitFor
from tests.reliability import ErrorCapture, guardDatagrams
from tests.test_media_engine import loopbackOnly

OPUS = 96
MID_ID = 1
LEVEL_ID = 2


class SilentTrack(MediaStreamTrack):
    """A track that never yields a frame: its sender sends no RTP of its own."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    async def recv(self):
        await asyncio.get_running_loop().create_future()


class CraftingPublisher:
    """
    A publisher whose every RTP packet is made by hand: a real aiortc peer
    connection (ICE, DTLS, SRTP keys, its own RTCP) whose tracks are silent.
    """

    def __init__(self):
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.seq = random.randrange(0, 0x8000)
        self.ts = random.randrange(0, 0x100000000)
        self.valid = 0

    async def answer(self, offer: str) -> str:
        """Apply the server's offer with silent tracks; return the answer."""
        for kind in ("audio", "video"):
            self.pc.addTrack(SilentTrack(kind))
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        sdp = self.pc.localDescription.sdp
        self.audioSsrc = next(s._ssrc for s in self.pc.getSenders() if s.track.kind == "audio")
        assert self.audioSsrc in offeredSsrcs(sdp)
        return sdp

    @property
    def dtls(self):
        return self.pc.getSenders()[0].transport

    def _pair(self):
        return self.dtls.transport._connection._nominated[1]

    def raw(self, data: bytes, addr=None) -> None:
        """Send a datagram from our nominated pair's socket (to the server's, by default)."""
        pair = self._pair()
        pair.protocol.transport.sendto(data, addr or pair.remote_addr)

    def protect(self, packet: bytes) -> bytes:
        return self.dtls._tx_srtp.protect(packet)

    def protectRtcp(self, packet: bytes) -> bytes:
        return self.dtls._tx_srtp.protect_rtcp(packet)

    def rtp(self, pt: int = OPUS, ssrc: int | None = None, extension: bytes | None = None,
            payload: bytes = b"\xf8\xff\xfe", marker: bool = False, padding: bool = False) -> bytes:
        """A plain RTP packet with our next sequence number."""
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + 960) & 0xFFFFFFFF
        if extension is None:  # mid "0" and an audio level, as aiortc's sender puts them
            extension = bytes([0xBE, 0xDE, 0, 1, (MID_ID << 4), ord("0"), (LEVEL_ID << 4), 0x80 | 30])
        b0 = 0x80 | (0x10 if extension else 0) | (0x20 if padding else 0)
        header = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, self.seq, self.ts,
                             self.audioSsrc if ssrc is None else ssrc)
        return header + extension + payload

    def sendValid(self) -> None:
        """One good audio packet."""
        self.raw(self.protect(self.rtp()))
        self.valid += 1

    async def close(self) -> None:
        await self.pc.close()


def lyingRtcp(ssrc: int) -> list[bytes]:
    """RTCP packets whose lengths, counts or versions lie (aiortc refuses each)."""
    sr = struct.pack("!BBHI", 0x80, 200, 6, ssrc) + bytes(20)
    return [
        struct.pack("!BBHI", 0x80, 200, 50, ssrc) + bytes(20),        # longer than it is
        struct.pack("!BBHI", 0x80, 200, 1, ssrc) + bytes(20),         # too short for an SR
        struct.pack("!BBHI", 0x80 | 31, 201, 1, ssrc),                # 31 report blocks, none there
        struct.pack("!BBH", 0x80, 201, 0) + bytes(4),                 # length 0
        struct.pack("!BBHI", 0x81, 202, 2, ssrc) + b"\x01\x09abc",    # SDES item cut
        struct.pack("!BBHII", 0x81, 205, 3, ssrc, ssrc) + b"\x00\x01",  # NACK cut
        sr + b"\x01\x02\x03",                                         # trailing junk
        struct.pack("!BBHI", 0x40, 200, 6, ssrc) + bytes(20),         # version 1
    ]


class RtpInputTests(TestCase):
    """Hostile packets from a publisher, a subscriber and a stranger."""

    timeout = 110

    def setUp(self):
        loopbackOnly(self)
        self.refused = guardDatagrams(self)
        self.errors = ErrorCapture(self)

    def dropped(self) -> int:
        return self.engine.stats()["dropped_packets"]

    async def counted(self, packets: list[bytes], send, what: str) -> None:
        """Send packets; each must be dropped and counted."""
        before = self.dropped()
        for i, packet in enumerate(packets):
            send(packet)
            if i % 20 == 19:
                self.mallory.sendValid()
                await asyncio.sleep(0.02)
        await waitFor(lambda: self.dropped() - before >= len(packets), timeout=10,
                      what=f"{len(packets)} {what} counted as dropped "
                           f"(have {self.dropped() - before})")

    @asyncTest
    async def test_hostilePackets(self):
        server = await Server(engine="aiortc").start()
        self.engine = engine = server.service.engine
        peers = []
        clients = []

        async def cleanup():
            for peer in peers:
                await peer.close()
            for client in clients:
                await client.close()
            await server.stop()

        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(cleanup())))
        alice, joinedA = await createAndJoin(server.url, "room", "alice")
        mal, joinedM = await join(server.url, "room", "mallory")
        bob, joinedB = await join(server.url, "room", "bob")
        clients += [alice, mal, bob]
        aliceID, malloryID = joinedA["memberID"], joinedM["memberID"]

        # Alice publishes a real picture and tone; Bob decodes it.
        await alice.request("MEDIA_SHARE_request", audio=True, video=True)
        offer = await alice.expect("MEDIA_RECEIVE_request")
        publisher = Publisher(tag=3)
        peers.append(publisher)
        await alice.send({"messageType": "MEDIA_RECEIVE_response", "status": 200, "reason": "OK",
                          "transactionID": offer["transactionID"],
                          "sdp": await publisher.answer(offer["sdp"])})
        # Mallory publishes through a crafting peer.
        await mal.request("MEDIA_SHARE_request", audio=True, video=True)
        offer = await mal.expect("MEDIA_RECEIVE_request")
        self.mallory = mallory = CraftingPublisher()
        peers.append(mallory)
        await mal.send({"messageType": "MEDIA_RECEIVE_response", "status": 200, "reason": "OK",
                        "transactionID": offer["transactionID"],
                        "sdp": await mallory.answer(offer["sdp"])})
        await waitFor(lambda: mallory.pc.connectionState == "connected", what="Mallory connected")
        await waitFor(lambda: engine._publishers[malloryID].current is not None
                      and engine._publishers[malloryID].current.hooked, what="Mallory hooked")
        for _ in range(5):
            mallory.sendValid()
            await asyncio.sleep(0.02)
        await waitFor(lambda: engine._streams[(malloryID, "audio")].available,
                      what="Mallory's audio at the server")
        # watch the engine free libsrtp's state for SSRCs Mallory never announced
        conn = engine._publishers[malloryID].current
        forgotten = []
        removeStream = conn.removeStream

        def recordRemoval(ssrc):
            forgotten.append(ssrc)
            removeStream(ssrc)

        conn.removeStream = recordRemoval

        async def subscribe(publisherID, video=True) -> Subscriber:
            await bob.request("MEDIA_request", members=[
                {"memberID": publisherID, "audio": True, "video": video}])
            request = await bob.expect("SDP_request", transactionID=publisherID)
            subscriber = Subscriber()
            peers.append(subscriber)
            await bob.send({"messageType": "SDP_response", "status": 200, "reason": "OK",
                            "transactionID": publisherID,
                            "sdp": await subscriber.answer(request["sdp"])})
            return subscriber

        toAlice = await subscribe(aliceID)
        toMallory = await subscribe(malloryID, video=False)
        await waitFor(lambda: len({n for t, n, ok in toAlice.frames if t == 3}) >= 5,
                      what="Alice's pictures at Bob")

        async def malloryArrives(n: int) -> None:
            have = sum(toMallory.ssrcs.values())
            for _ in range(n):
                mallory.sendValid()
                await asyncio.sleep(0.02)
            await waitFor(lambda: sum(toMallory.ssrcs.values()) >= have + n * 0.9,
                          what="Mallory's packets at Bob")

        async def primed():  # Bob's subscription to Mallory is up when one arrives
            mallory.sendValid()
            await asyncio.sleep(0.05)
            return bool(toMallory.ssrcs)

        for _ in range(600):
            if await primed():
                break
        await malloryArrives(20)
        stream = engine._streams[(malloryID, "audio")]
        self.assertEqual(stream.ssrc, mallory.audioSsrc)
        connected = engine.stats()["peer_connections"]
        self.assertEqual(connected, {"connected": 4})
        validBefore, arrivedBefore = mallory.valid, sum(toMallory.ssrcs.values())
        aliceFrames = len({n for t, n, ok in toAlice.frames if t == 3})
        rng = random.Random(9)

        # -- at Mallory's publisher port --------------------------------------
        send = mallory.raw
        # (asyncio's transports do not send empty datagrams: a plain socket does)
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(stranger.close)
        stranger.bind(("127.0.0.1", 0))
        malloryPort = mallory._pair().remote_addr
        await self.counted([b""] * 20, lambda p: stranger.sendto(p, malloryPort),
                           "empty datagrams")
        # junk that is neither STUN, DTLS nor SRTP
        junk = [bytes([rng.choice([0, 1, 2, 3, 70, 100, 127, 192, 255])])
                + rng.randbytes(rng.randrange(0, 1400)) for _ in range(200)]
        await self.counted(junk, send, "junk datagrams")
        # unauthenticated "SRTP": RTP-shaped, random keys
        forged = [bytes([0x80, OPUS]) + rng.randbytes(rng.randrange(20, 1200)) for _ in range(200)]
        await self.counted(forged, send, "forged SRTP packets")
        # truncated SRTP, each sent whole afterwards (so it is not a replay)
        wholes = [mallory.protect(mallory.rtp()) for _ in range(40)]
        await self.counted([w[:rng.randrange(13, len(w) - 1)] for w in wholes], send,
                           "truncated SRTP packets")
        for whole in wholes:
            send(whole)
            mallory.valid += 1
        # replays of packets already accepted
        await self.counted(wholes[:40], send, "replayed SRTP packets")
        # authenticated, but with SSRCs the answer never announced (also with
        # payload types never negotiated): dropped, and libsrtp's state freed
        foreign = [rng.getrandbits(32) for _ in range(60)]
        await self.counted([mallory.protect(mallory.rtp(ssrc=ssrc, pt=OPUS if i % 2 else 50))
                            for i, ssrc in enumerate(foreign)], send, "packets of foreign SSRCs")
        self.assertEqual(sorted(forgotten), sorted(foreign))
        # authenticated, our SSRC, payload types never negotiated
        await self.counted([mallory.protect(mallory.rtp(pt=pt)) for pt in (0, 8, 50, 111, 127) * 8],
                           send, "packets of unknown payload types")
        # authenticated RTCP whose lengths lie
        await self.counted([mallory.protectRtcp(p) for p in lyingRtcp(mallory.audioSsrc) * 10],
                           send, "lying RTCP packets")
        # authenticated packets that are odd but well-formed: forwarded, no harm
        for _ in range(20):
            send(mallory.protect(mallory.rtp(extension=bytes([0xBE, 0xDE, 0, 1, 0, 0, 0,
                                                              MID_ID << 4]), payload=b"")))
            send(mallory.protect(mallory.rtp(payload=b"")))
            send(mallory.protect(mallory.rtp(padding=True, payload=b"\x01\x02\xff")))
            send(mallory.protect(mallory.rtp(extension=b"")))
            mallory.valid += 4
            mallory.sendValid()
            await asyncio.sleep(0.02)
        # unauthenticated SRTCP and DTLS-looking junk: aiortc drops them (uncounted)
        for _ in range(50):
            send(bytes([0x80, 200]) + rng.randbytes(rng.randrange(2, 200)))
            send(bytes([rng.randrange(20, 64)]) + rng.randbytes(rng.randrange(0, 300)))
        # -- at the server's port of Bob's subscription to Alice, from Mallory's socket
        serverPort = toAlice.pc.getTransceivers()[0].receiver.transport.transport \
            ._connection._nominated[1].remote_addr
        await self.counted([b""] * 10, lambda p: stranger.sendto(p, serverPort),
                           "empty datagrams from a stranger")
        await self.counted(junk[:50], lambda p: send(p, serverPort), "junk from a stranger")
        # -- from Bob's own subscriber connection: RTP (he only receives) and lying RTCP
        bobDtls = toMallory.pc.getTransceivers()[0].receiver.transport
        bobPair = bobDtls.transport._connection._nominated[1]

        def fromBob(packet):
            bobPair.protocol.transport.sendto(packet, bobPair.remote_addr)

        await self.counted([bobDtls._tx_srtp.protect(mallory.rtp(ssrc=5))]
                           + [bobDtls._tx_srtp.protect_rtcp(p) for p in lyingRtcp(5) * 5],
                           fromBob, "packets from a subscriber")

        # -- a NACK for two thousand packets is answered for a few only
        video = engine._subscriptions[(joinedB["memberID"], aliceID)].outs["video"]
        latest = next(seq for ssrc, seq, ts in reversed(toAlice.seqs) if ssrc == video.ssrc)
        nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=video.ssrc,
                               # oldest first, never across 65535 -> 0 (aiortc's packing
                               # cannot cross it): fewer than 2,000 just after a wrap
                               lost=list(range(max(latest - 1999, 0), latest + 1)))
        aliceDtls = toAlice.pc.getTransceivers()[0].receiver.transport
        alicePair = aliceDtls.transport._connection._nominated[1]
        counters = dict(engine.counters)
        alicePair.protocol.transport.sendto(aliceDtls._tx_srtp.protect_rtcp(bytes(nack)),
                                            alicePair.remote_addr)
        await waitFor(lambda: engine.counters["nacks_received"] > counters.get("nacks_received", 0),
                      what="the NACK at the server")
        resent = engine.counters["retransmitted_packets"] - counters.get("retransmitted_packets", 0)
        self.assertTrue(0 < resent <= 64, resent)

        # -- forwarding went on ---------------------------------------------------
        await malloryArrives(20)
        sent = mallory.valid - validBefore
        arrived = sum(toMallory.ssrcs.values()) - arrivedBefore
        self.assertGreaterEqual(arrived, sent * 0.9, (arrived, sent))
        self.assertLessEqual(arrived, sent)
        self.assertTrue(set(toMallory.ssrcs) <= toMallory.offered)
        self.assertEqual(stream.ssrc, mallory.audioSsrc)
        await waitFor(lambda: len({n for t, n, ok in toAlice.frames if t == 3}) >= aliceFrames + 10,
                      what="Alice's pictures go on")
        self.assertEqual(engine.stats()["peer_connections"], connected)
        self.assertEqual(engine.stats()["send_errors"], 0)
        self.assertEqual(self.errors.errors, [])
        self.assertEqual(self.refused, [])
        # and the server still serves
        chat = await bob.request("CHAT_MESSAGE_request", message={"text": "still here"})
        self.assertEqual(chat["status"], 200)
