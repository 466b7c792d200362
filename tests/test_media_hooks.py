# -*- test-case-name: tests.test_media_hooks -*-
"""
Tests for L{ahoyconference.media.hooks}, one test class per hook and in the
module's order: every private aiortc/aioice/pylibsrtp/asyncio attribute the
engine relies on, exercised on live objects of a connected pair on loopback
(docs/architecture.md, "The private hooks").  When one of these fails after
an upgrade, the engine's packet path is broken: read the new sources before
changing the pins.

Run with C{trial --reactor=asyncio}.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib.metadata
import inspect
import os
import re
import socket
import struct

import aioice
import aioice.ice
import aiortc
import aiortc.rtcpeerconnection
import pylibsrtp
from aioice import stun
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import CODECS, HEADER_EXTENSIONS
from aiortc.rtcdtlstransport import RTCCertificate
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPacket, RtcpPsfbPacket
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from ahoyconference.config import IceSettings
from ahoyconference.media import hooks, ice
from ahoyconference.media.engine import AiortcMediaEngine, NeverTrack
from tests.mediaclients import Subscriber, waitFor
from tests.test_media_engine import RecordingListener, asyncioTest, loopbackOnly
from tests.test_rtp_input import CraftingPublisher


def later(close):
    """A cleanup that runs the coroutine function C{close} on asyncio."""
    return lambda: Deferred.fromFuture(asyncio.ensure_future(close()))


async def _connected(server, closers, what="pair") -> None:
    for _ in range(200):
        if server.connectionState == "connected":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the {what} did not connect")


class LivePairMixin:
    """Connected pairs on loopback: the server sends, or the server receives."""

    timeout = 60

    def setUp(self):
        loopbackOnly(self)
        self.closers = []

        async def closeAll():
            for close in reversed(self.closers):
                await close()

        self.addCleanup(later(closeAll))

    async def sendingPair(self):
        """C{(server, transceiver, subscriber)}: the server sends video."""
        server = RTCPeerConnection(ice.rtcConfiguration(IceSettings()))
        client = Subscriber()
        self.closers += [server.close, client.close]
        transceiver = server.addTransceiver(NeverTrack("video"), direction="sendonly")
        await server.setLocalDescription(await server.createOffer())
        answer = await client.answer(server.localDescription.sdp)
        await server.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await _connected(server, self.closers)
        return server, transceiver, client

    async def receivingPair(self):
        """C{(server, transceiver, publisher)}: a crafting publisher sends audio."""
        server = RTCPeerConnection(ice.rtcConfiguration(IceSettings()))
        client = CraftingPublisher()
        self.closers += [server.close, client.close]
        transceiver = server.addTransceiver("audio", direction="recvonly")
        server.addTransceiver("video", direction="recvonly")
        await server.setLocalDescription(await server.createOffer())
        answer = await client.answer(server.localDescription.sdp)
        await server.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await _connected(server, self.closers)
        await waitFor(lambda: client.pc.connectionState == "connected", what="client connected")
        return server, transceiver, client


class PinnedTests(TestCase):
    """L{hooks.PINNED}: the versions the hooks were read against."""

    def test_versions(self):
        """aiortc, aioice and pylibsrtp are the pinned versions (setup.cfg pins them)."""
        for name, version in hooks.PINNED.items():
            self.assertEqual(importlib.metadata.version(name), version, name)


class CodecHelperTests(TestCase):
    """L{hooks.isCodecCompatible} and L{hooks.isRtx}, aiortc's own helpers."""

    def test_isCodecCompatible(self):
        """Same codec, other payload type: compatible; VP8 and Opus: not."""
        opus, vp8 = CODECS["audio"][0], CODECS["video"][0]
        self.assertTrue(hooks.isCodecCompatible(opus, opus))
        self.assertFalse(hooks.isCodecCompatible(opus, vp8))

    def test_isRtx(self):
        """aiortc's fixed table: Opus 96, VP8 97 with RTX 98; the audio level extension."""
        self.assertEqual((CODECS["audio"][0].mimeType, CODECS["audio"][0].payloadType),
                         ("audio/opus", 96))
        self.assertEqual([(c.mimeType, c.payloadType) for c in CODECS["video"]][:2],
                         [("video/VP8", 97), ("video/rtx", 98)])
        self.assertTrue(hooks.isRtx(CODECS["video"][1]))
        self.assertFalse(hooks.isRtx(CODECS["video"][0]))
        self.assertIn("urn:ietf:params:rtp-hdrext:ssrc-audio-level",
                      [e.uri for e in HEADER_EXTENSIONS["audio"]])


class SrtpProtectInPlaceTests(TestCase):
    """L{hooks.srtpProtectInPlace}: libsrtp's C function through pylibsrtp's binding."""

    def test_protectInPlace(self):
        """It protects a packet in a session's own buffer as C{Session.protect} does."""
        from pylibsrtp import Policy, Session

        key = os.urandom(30)
        packet = struct.pack("!BBHII", 0x80, 96, 1, 2, 3) + b"payload"
        ours = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
        theirs = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
        srtp, cdata = ours._srtp[0], ours._cdata
        view, length = memoryview(hooks._ffi.buffer(cdata)), hooks._ffi.new("int *")
        view[:len(packet)] = packet
        length[0] = len(packet)
        self.assertEqual(hooks.srtpProtectInPlace(srtp, cdata, length), 0)
        self.assertEqual(bytes(view[:length[0]]), theirs.protect(packet))


class NewPeerConnectionTests(LivePairMixin, TestCase):
    """L{hooks.newPeerConnection}: one DTLS certificate for many peer connections."""

    @asyncioTest
    async def test_sharedCertificate(self):
        """
        Two peer connections made with one certificate offer its fingerprint;
        aiortc's own generation is back afterwards.
        """
        certificate = RTCCertificate.generateCertificate()
        fingerprint = certificate.getFingerprints()[0].value
        offers = []
        for _ in range(2):
            pc = hooks.newPeerConnection(ice.rtcConfiguration(IceSettings()), certificate)
            self.closers.append(pc.close)
            pc.addTransceiver("audio", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            offers.append(pc.localDescription.sdp)
        for offer in offers:
            self.assertIn(f"a=fingerprint:sha-256 {fingerprint}", offer)
        self.assertIs(aiortc.rtcpeerconnection.RTCCertificate, RTCCertificate)
        other = RTCPeerConnection()
        self.closers.append(other.close)
        other.addTransceiver("audio")
        await other.setLocalDescription(await other.createOffer())
        self.assertNotIn(fingerprint, other.localDescription.sdp)

    @asyncioTest
    async def test_connects(self):
        """A peer connection with the shared certificate completes DTLS with a client."""
        certificate = RTCCertificate.generateCertificate()
        server = hooks.newPeerConnection(ice.rtcConfiguration(IceSettings()), certificate)
        client = Subscriber()
        self.closers += [server.close, client.close]
        server.addTransceiver(NeverTrack("video"), direction="sendonly")
        await server.setLocalDescription(await server.createOffer())
        answer = await client.answer(server.localDescription.sdp)
        await server.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await _connected(server, self.closers)


class FreshCertificateTests(TestCase):
    """L{hooks.freshCertificate}: one certificate, renewed before it expires."""

    def test_renewal(self):
        """None or expiring within the margin: a new one; else the same."""
        now = datetime.datetime.now(datetime.UTC)
        first = hooks.freshCertificate(None, now)
        self.assertIsInstance(first, RTCCertificate)
        self.assertIs(hooks.freshCertificate(first, now), first)
        late = first.expires - datetime.timedelta(hours=1)
        renewed = hooks.freshCertificate(first, late)
        self.assertIsNot(renewed, first)


class SenderSsrcsTests(TestCase):
    """L{hooks.senderSsrcs}: what aiortc's sender announces."""

    @asyncioTest
    async def test_announced(self):
        """Both SSRCs appear in the offer's a=ssrc lines."""
        pc = RTCPeerConnection()
        self.addCleanup(later(pc.close))
        transceiver = pc.addTransceiver(NeverTrack("video"), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        ssrc, rtx = hooks.senderSsrcs(transceiver.sender)
        self.assertIn(f"a=ssrc:{ssrc} ", pc.localDescription.sdp)
        self.assertIn(f"a=ssrc-group:FID {ssrc} {rtx}", pc.localDescription.sdp)


class FillSenderReportsTests(LivePairMixin, TestCase):
    """L{hooks.fillSenderReports}: our values in aiortc's sender reports."""

    timeout = 60

    @asyncioTest
    async def test_filledAndSuppressed(self):
        """Suppressed while C{fill} says so; then the subscriber gets our values."""
        server, transceiver, client = await self.sendingPair()
        filling = []

        def fill(packet):
            filling.append(packet)
            if len(filling) < 2:
                return False
            packet.sender_info.rtp_timestamp = 123456
            return True

        hooks.fillSenderReports(transceiver.sender, fill)
        await waitFor(lambda: client.senderReports, timeout=20, what="a sender report")
        self.assertGreaterEqual(len(filling), 2)
        self.assertEqual(client.senderReports[0][2], 123456)


class NominatedPairTests(LivePairMixin, TestCase):
    """L{hooks.nominatedPair}."""

    @asyncioTest
    async def test_pair(self):
        """A socket's C{sendto} and the client's loopback address; C{None} before ICE."""
        fresh = RTCPeerConnection()
        self.closers.append(fresh.close)
        fresh.addTransceiver("audio")
        await fresh.setLocalDescription(await fresh.createOffer())
        self.assertIsNone(hooks.nominatedPair(fresh.getTransceivers()[0].receiver.transport))
        server, transceiver, client = await self.sendingPair()
        sendto, addr = hooks.nominatedPair(transceiver.receiver.transport)
        self.assertTrue(callable(sendto))
        self.assertEqual(addr[0], "127.0.0.1")
        self.assertIs(transceiver.receiver.transport, transceiver.sender.transport)


class SendRtcpTests(LivePairMixin, TestCase):
    """L{hooks.sendRtcp}."""

    @asyncioTest
    async def test_arrives(self):
        """A PLI sent synchronously arrives, decrypted, at the client's DTLS transport."""
        server, transceiver, client = await self.receivingPair()
        got = []
        dtls = client.dtls
        original = dtls._handle_rtcp_data

        async def record(data):
            got.extend(RtcpPacket.parse(data))
            await original(data)

        dtls._handle_rtcp_data = record
        pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=client.audioSsrc)
        self.assertTrue(hooks.sendRtcp(transceiver.receiver.transport, bytes(pli)))
        await waitFor(lambda: any(isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_PLI
                                  for p in got), what="the PLI")
        fresh = RTCPeerConnection()
        self.closers.append(fresh.close)
        fresh.addTransceiver("audio")
        self.assertFalse(hooks.sendRtcp(fresh.getTransceivers()[0].receiver.transport, b""))


class SrtpProtectTests(LivePairMixin, TestCase):
    """L{hooks.srtpProtect}."""

    @asyncioTest
    async def test_roundTrip(self):
        """What the server protects, the client's session unprotects."""
        server, transceiver, client = await self.sendingPair()
        protect = hooks.srtpProtect(transceiver.sender.transport)
        self.assertIsInstance(protect.__self__, pylibsrtp.Session)
        packet = struct.pack("!BBHII", 0x80, 97, 7, 8, hooks.senderSsrcs(transceiver.sender)[0])
        dtls = client.pc.getTransceivers()[0].receiver.transport
        self.assertEqual(dtls._rx_srtp.unprotect(protect(packet + b"x" * 20)), packet + b"x" * 20)


class SrtpReceiveTests(LivePairMixin, TestCase):
    """L{hooks.srtpReceive}."""

    @asyncioTest
    async def test_unprotectAndRemove(self):
        """The client's packets unprotect; a stream per SSRC can be removed once."""
        server, transceiver, client = await self.receivingPair()
        unprotect, removeStream = hooks.srtpReceive(transceiver.receiver.transport)
        packet = client.rtp(ssrc=0xABCDEF)
        self.assertEqual(unprotect(client.protect(packet)), packet)
        removeStream(0xABCDEF)
        self.assertRaises(pylibsrtp.Error, removeStream, 0xABCDEF)


class RouteDecryptedTests(LivePairMixin, TestCase):
    """L{hooks.routeDecrypted}."""

    @asyncioTest
    async def test_routed(self):
        """Packets aiortc decrypts reach our coroutines, not its receivers."""
        server, transceiver, client = await self.receivingPair()
        rtp, rtcp = [], []

        async def handleRtp(data, arrival_time_ms=0):
            rtp.append(data)

        async def handleRtcp(data):
            rtcp.append(data)

        hooks.routeDecrypted(transceiver.receiver.transport, handleRtp, handleRtcp)
        packet = client.rtp()
        client.raw(client.protect(packet))
        client.raw(client.protectRtcp(bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1,
                                                           media_ssrc=2))))
        await waitFor(lambda: rtp and rtcp, what="both routed")
        self.assertEqual(rtp, [packet])


class TakeDatagramsTests(LivePairMixin, TestCase):
    """L{hooks.takeDatagrams}."""

    @asyncioTest
    async def test_takenAndReleased(self):
        """
        SRTP reaches our function synchronously, before aioice; after
        release it goes through aiortc again; the connection stays up.
        """
        server, transceiver, client = await self.receivingPair()
        dtls = transceiver.receiver.transport
        taken, routed = [], []

        async def handleRtp(data, arrival_time_ms=0):
            routed.append(data)

        async def handleRtcp(data):
            pass

        hooks.routeDecrypted(dtls, handleRtp, handleRtcp)
        release = hooks.takeDatagrams(dtls, taken.append)
        protected = client.protect(client.rtp())
        client.raw(protected)
        await waitFor(lambda: taken, what="the datagram taken")
        self.assertEqual(taken, [protected])
        client.raw(client.protectRtcp(bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1,
                                                           media_ssrc=2))))
        release()
        for protocol in dtls.transport._connection._protocols:
            self.assertNotIn("datagram_received", protocol.__dict__)
        packet = client.rtp()
        client.raw(client.protect(packet))
        await waitFor(lambda: routed, what="routed through aiortc again")
        self.assertEqual(routed, [packet])
        self.assertEqual(len(taken), 1)
        self.assertEqual(server.connectionState, "connected")


class GuardDatagramsTests(LivePairMixin, TestCase):
    """L{hooks.guardDatagrams}."""

    @asyncioTest
    async def test_emptyDropped(self):
        """Empty and junk datagrams are counted and dropped; the connection stays up."""
        server, transceiver, client = await self.sendingPair()
        dropped = []
        hooks.guardDatagrams(transceiver.receiver.transport, lambda: dropped.append(1))
        _, addr = hooks.nominatedPair(client.pc.getTransceivers()[0].receiver.transport)
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(stranger.close)
        for data in (b"", b"\x00junk", b"\xffjunk"):
            stranger.sendto(data, addr)
        await waitFor(lambda: len(dropped) == 3, what="three drops")
        await asyncio.sleep(0.2)
        self.assertEqual(server.connectionState, "connected")


class RecordingProtocol:
    """Stands where aioice's StunProtocol stands; records what is sent."""

    def __init__(self):
        self.sent = []

    def send_stun(self, message, addr):
        self.sent.append((message, addr))


class GuardChecksTests(TestCase):
    """L{hooks.guardChecks}."""

    @asyncioTest
    async def test_refused(self):
        """Checks from refused addresses get no answer and are reported; others are answered."""
        pc = RTCPeerConnection()
        self.addCleanup(later(pc.close))
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        refused = []
        self.assertEqual(hooks.guardChecks(pc, lambda a: a == "127.0.0.1", refused.append), 1)
        self.assertEqual(hooks.guardChecks(pc, lambda a: True, refused.append), 0)
        connection = pc.getTransceivers()[0].receiver.transport.transport._connection
        protocol = RecordingProtocol()
        request = stun.Message(message_method=stun.Method.ALLOCATE,
                               message_class=stun.Class.REQUEST)
        connection.request_received(request, ("192.0.2.2", 40000), protocol)
        self.assertEqual((protocol.sent, refused), ([], ["192.0.2.2"]))
        connection.request_received(request, ("127.0.0.1", 40000), protocol)
        self.assertEqual([addr for _, addr in protocol.sent], [("127.0.0.1", 40000)])


class GatherOnSharedTests(TestCase):
    """L{hooks.gatherOnShared}."""

    timeout = 30

    @asyncioTest
    async def test_sharedHostCandidate(self):
        """
        The agent's ufrag is ours and its one host candidate is the shared
        socket's, carried by aioice's own C{StunProtocol} on a
        L{MuxTransport}; it is changed once; closing the connection empties
        the mux.
        """
        from ahoyconference.media.udpmux import MuxTransport, OnePort

        ports = OnePort(("127.0.0.1",), 0, lambda reason: None, lambda where, e: None)
        ports.start()
        self.addCleanup(ports.stop)
        pc = RTCPeerConnection(ice.rtcConfiguration(IceSettings()))  # max-bundle, no STUN
        self.addCleanup(later(pc.close))
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        self.assertEqual(hooks.gatherOnShared(pc, lambda: "sharedUF", ports.muxes), 1)
        self.assertEqual(hooks.gatherOnShared(pc, lambda: "other123", ports.muxes), 0)
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        self.assertIn("a=ice-ufrag:sharedUF", sdp)
        port = ports.muxes[0].address[1]
        self.assertEqual({int(p) for p in re.findall(r"a=candidate:\S+ \d udp \d+ 127\.0\.0\.1 (\d+)", sdp)},
                         {port})
        connection = pc.getTransceivers()[0].receiver.transport.transport._connection
        self.assertEqual(connection.local_username, "sharedUF")
        [protocol] = connection._protocols
        self.assertIsInstance(protocol, aioice.ice.StunProtocol)
        self.assertIsInstance(protocol.transport, MuxTransport)
        self.assertEqual(ports.sizes()["ufrags"], 1)
        await pc.close()
        self.assertEqual(ports.sizes(), {"ufrags": 0, "addresses": 0, "transactions": 0})

    def test_checked(self):
        """C{checkHooks} refuses a C{get_component_candidates} with other parameters."""
        self.patch(hooks, "_checked", [])

        async def get_component_candidates(self, component, addresses):
            return []

        self.patch(aioice.ice.Connection, "get_component_candidates", get_component_candidates)
        e = self.assertRaises(hooks.HookMismatch, hooks.checkHooks)
        self.assertIn("get_component_candidates", str(e))


class InstallHostAddressesTests(TestCase):
    """L{hooks.installHostAddresses}."""

    timeout = 30

    @asyncioTest
    async def test_loopbackGathered(self):
        """
        aioice skips 127.0.0.1 by itself; with the wrapper it gathers exactly
        the configured address, and uninstalling restores aioice.
        """
        original = aioice.ice.get_host_addresses
        uninstall = hooks.installHostAddresses(("127.0.0.1", "::1"))
        try:
            self.assertEqual(aioice.ice.get_host_addresses(True, False), ["127.0.0.1"])
            connection = aioice.Connection(ice_controlling=True, use_ipv6=False)
            await connection.gather_candidates()
            self.assertEqual([c.host for c in connection.local_candidates], ["127.0.0.1"])
            await connection.close()
            nested = hooks.installHostAddresses(("::1",))
            self.assertEqual(aioice.ice.get_host_addresses(True, True), ["::1"])
            nested()
            self.assertEqual(aioice.ice.get_host_addresses(True, True), ["127.0.0.1", "::1"])
        finally:
            uninstall()
        self.assertIs(aioice.ice.get_host_addresses, original)
        self.assertNotIn("127.0.0.1", aioice.ice.get_host_addresses(True, False))

    def test_emptyChangesNothing(self):
        """No addresses configured: aioice's own function stays."""
        original = aioice.ice.get_host_addresses
        hooks.installHostAddresses(())()
        self.assertIs(aioice.ice.get_host_addresses, original)

    def test_badAddress(self):
        """A typo is a ValueError at start-up."""
        self.assertRaises(ValueError, hooks.installHostAddresses, ("127.0.0.300",))


class InstallConsentTimingTests(TestCase):
    """L{hooks.installConsentTiming}."""

    def test_consentTiming(self):
        """
        aioice's consent checks read the module globals we set, on every
        round, and expire after that many failures in a row, each waiting
        for its answer without retransmissions: within RFC 7675's 30 s.
        """
        text = inspect.getsource(aioice.ice.Connection.query_consent)
        self.assertIn("await asyncio.sleep(CONSENT_INTERVAL *", text)
        self.assertIn("if failures >= CONSENT_FAILURES:", text)
        self.assertIn("retransmissions=0", text)
        self.assertIn("return await self.close()", text)
        hooks.installConsentTiming()
        self.assertEqual((aioice.ice.CONSENT_INTERVAL, aioice.ice.CONSENT_FAILURES), (4.0, 5))
        self.assertLessEqual(hooks.CONSENT_FAILURES * (hooks.CONSENT_INTERVAL * 1.2 + 0.5), 30)


class ZeroCopySenderTests(LivePairMixin, TestCase):
    """L{hooks.zeroCopySender}."""

    @asyncioTest
    async def test_parts(self):
        """
        On a connected pair: libsrtp's session, its C buffer of at least 1500
        bytes and the socket's own C{sendto}; C{None} for anything else.
        """
        server, transceiver, client = await self.sendingPair()
        dtls = transceiver.sender.transport
        sendto, addr = hooks.nominatedPair(dtls)
        zero = hooks.zeroCopySender(hooks.srtpProtect(dtls), sendto)
        self.assertIsNotNone(zero, "the zero-copy path no longer fits pylibsrtp/asyncio")
        srtp, cdata, view, length, send = zero
        self.assertGreaterEqual(len(view), hooks.SRTP_BUFFER)
        self.assertTrue(callable(send))
        self.assertIsNone(hooks.zeroCopySender(bytes, sendto))
        self.assertIsNone(hooks.zeroCopySender(hooks.srtpProtect(dtls), print))


class CheckHooksTests(TestCase):
    """L{hooks.checkHooks}: the start-up check."""

    def setUp(self):
        self.patch(hooks, "_checked", [])

    def test_fits(self):
        """The pinned versions fit."""
        hooks.checkHooks()
        self.assertEqual(hooks._checked, [True])

    def test_callSiteMoved(self):
        """A call site that moved is named in one line."""
        async def _run_rtcp(self):
            pass

        self.patch(RTCRtpSender, "_run_rtcp", _run_rtcp)
        e = self.assertRaises(hooks.HookMismatch, hooks.checkHooks)
        self.assertIn("_run_rtcp", str(e))
        self.assertNotIn("\n", str(e))
        self.assertEqual(hooks._checked, [])

    def test_signatureChanged(self):
        """A wrapped function whose parameters changed is refused."""
        self.patch(aioice.ice, "get_host_addresses", lambda ipv4, ipv6: [])
        e = self.assertRaises(hooks.HookMismatch, hooks.checkHooks)
        self.assertIn("get_host_addresses", str(e))

    def test_engineRefusesToStart(self):
        """An engine is not made on libraries that do not fit."""
        from twisted.internet.task import Clock

        self.patch(aioice.ice, "get_host_addresses", lambda ipv4, ipv6: [])
        self.assertRaises(hooks.HookMismatch, AiortcMediaEngine, RecordingListener(),
                          IceSettings(), Clock())

    def test_tapRefusesToStart(self):
        """C{twistd ahoyconference} stops with one line naming the hook."""
        from twisted.internet import reactor

        from ahoyconference.config import Config
        from ahoyconference.media import engine
        from ahoyconference.tap import buildService

        self.patch(engine, "installAsyncioExceptionHandler", lambda loop=None: None)
        self.patch(aioice.ice, "get_host_addresses", lambda ipv4, ipv6: [])

        e = self.assertRaises(SystemExit, buildService, Config(ports=("tcp:0",)), reactor)
        self.assertIn("get_host_addresses", str(e))
        self.assertNotIn("\n", str(e))
