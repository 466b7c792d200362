# -*- test-case-name: tests.test_media_hooks -*-
"""
The private aiortc/aioice/pylibsrtp attributes the media engine relies on
(design.md 9).  When one of these tests fails after an upgrade, the engine's
packet path is broken: read the new aiortc source before changing the pins.
"""

from __future__ import annotations

import asyncio
import inspect

import aioice
import aioice.ice
import aiortc
import pylibsrtp
from aiortc import RTCPeerConnection
from aiortc.codecs import CODECS, HEADER_EXTENSIONS
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from ahoyconference.config import IceSettings
from ahoyconference.media import ice
from ahoyconference.media.engine import NeverTrack, installAsyncioExceptionHandler
from tests.mediaclients import Subscriber
from tests.test_media_engine import asyncioTest, loopbackOnly

PINNED = {"aiortc": "1.16.0", "aioice": "0.13.0", "pylibsrtp": "1.0.0"}


def source(obj) -> str:
    """The source text of a function or class."""
    return inspect.getsource(obj)


class VersionTests(TestCase):
    """The versions the hooks were read against (setup.cfg pins them)."""

    def test_versions(self):
        """aiortc, aioice and pylibsrtp are the pinned versions."""
        import importlib.metadata

        for name, version in PINNED.items():
            self.assertEqual(importlib.metadata.version(name), version, name)


class SourceHookTests(TestCase):
    """The call sites the engine replaces per instance still exist."""

    def test_dtlsReceivePath(self):
        """
        C{_recv_next} unprotects with C{_rx_srtp} and hands plain packets to
        C{self._handle_rtp_data} / C{self._handle_rtcp_data} (replaced per
        instance); C{_setup_srtp} makes C{_rx_srtp} and C{_tx_srtp}.
        """
        text = source(RTCDtlsTransport._recv_next)
        self.assertIn("self._rx_srtp.unprotect(data)", text)
        self.assertIn("await self._handle_rtp_data(data", text)
        self.assertIn("await self._handle_rtcp_data(data)", text)
        self.assertIn("self.transport._recv()", text)
        setup = source(RTCDtlsTransport._setup_srtp)
        self.assertIn("self._rx_srtp = Session(", setup)
        self.assertIn("self._tx_srtp = Session(", setup)
        self.assertIn("self.transport._send(data)", source(RTCDtlsTransport._send_rtp))

    def test_aioiceReceivePath(self):
        """
        aioice hands non-STUN datagrams from C{StunProtocol.datagram_received}
        to the connection (we wrap C{datagram_received} per socket), and
        gathers host candidates through the module's C{get_host_addresses}.
        """
        text = source(aioice.ice.StunProtocol.datagram_received)
        self.assertIn("self.receiver.data_received(data", text)
        self.assertIn("get_host_addresses(", source(aioice.ice.Connection.gather_candidates))
        self.assertEqual(list(inspect.signature(aioice.ice.get_host_addresses).parameters),
                         ["use_ipv4", "use_ipv6"])
        self.assertIn("self._queue.put_nowait((data, component))",
                      source(aioice.ice.Connection.data_received))

    def test_consentTiming(self):
        """
        aioice's consent checks read the module globals that
        L{ahoyconference.media.ice.installConsentTiming} sets, on every
        round, and expire after that many failures in a row, each waiting
        for its answer without retransmissions.
        """
        from ahoyconference.media import ice

        text = source(aioice.ice.Connection.query_consent)
        self.assertIn("await asyncio.sleep(CONSENT_INTERVAL *", text)
        self.assertIn("if failures >= CONSENT_FAILURES:", text)
        self.assertIn("retransmissions=0", text)
        self.assertIn("return await self.close()", text)
        ice.installConsentTiming()
        self.assertEqual((aioice.ice.CONSENT_INTERVAL, aioice.ice.CONSENT_FAILURES), (4.0, 5))
        self.assertLessEqual(ice.CONSENT_FAILURES * (ice.CONSENT_INTERVAL * 1.2 + 0.5), 30)

    def test_senderReports(self):
        """
        A sender's RTCP loop builds an C{RtcpSrPacket} first and sends through
        C{self._send_rtcp(packets)} (we fill the report in there).
        """
        text = source(RTCRtpSender._run_rtcp)
        self.assertIn("RtcpSrPacket(", text)
        self.assertIn("await self._send_rtcp(packets)", text)
        self.assertIn("self.__track.recv()", source(RTCRtpSender._next_encoded_frame))

    def test_receiverHelpers(self):
        """The test peers use the receiver's PLI helper and its stream table."""
        self.assertIn("_send_rtcp_pli", dir(RTCRtpReceiver))
        self.assertIn("self.__remote_streams", source(RTCRtpReceiver._handle_rtp_packet))

    def test_codecTables(self):
        """
        aiortc's fixed payload types and extension ids, which make publisher
        and subscriber offers agree (the engine maps codecs by name anyway).
        """
        self.assertEqual([(c.mimeType, c.payloadType) for c in CODECS["audio"]][0],
                         ("audio/opus", 96))
        self.assertEqual([(c.mimeType, c.payloadType) for c in CODECS["video"]][:2],
                         [("video/VP8", 97), ("video/rtx", 98)])
        self.assertIn("urn:ietf:params:rtp-hdrext:ssrc-audio-level",
                      [e.uri for e in HEADER_EXTENSIONS["audio"]])
        from aiortc.rtcpeerconnection import is_codec_compatible

        self.assertTrue(callable(is_codec_compatible))

    def test_srtpSession(self):
        """pylibsrtp sessions protect and unprotect RTP and RTCP."""
        for name in ("protect", "unprotect", "protect_rtcp", "unprotect_rtcp"):
            self.assertTrue(hasattr(pylibsrtp.Session, name), name)


class LiveHookTests(TestCase):
    """The attributes exist on live objects of a connected pair."""

    timeout = 60

    def setUp(self):
        loopbackOnly(self)

    @asyncioTest
    async def test_connectedPair(self):
        """
        On a connected sendonly/recvonly pair: the sender's SSRCs, the bundled
        DTLS transport's SRTP sessions, the ICE connection's protocols and
        nominated pair with its socket transport and remote address.
        """
        server = RTCPeerConnection(ice.rtcConfiguration(IceSettings()))
        client = Subscriber()
        try:
            transceiver = server.addTransceiver(NeverTrack("video"), direction="sendonly")
            sender = transceiver.sender
            self.assertIsInstance(sender._ssrc, int)
            self.assertIsInstance(sender._rtx_ssrc, int)
            self.assertTrue(callable(sender._send_rtcp))
            await server.setLocalDescription(await server.createOffer())
            answer = await client.answer(server.localDescription.sdp)
            await server.setRemoteDescription(
                aiortc.RTCSessionDescription(sdp=answer, type="answer"))
            for _ in range(200):
                if server.connectionState == "connected":
                    break
                await asyncio.sleep(0.05)
            self.assertEqual(server.connectionState, "connected")
            dtls = transceiver.receiver.transport
            self.assertIs(dtls, sender.transport)
            self.assertEqual(dtls.state, "connected")
            self.assertIsInstance(dtls._rx_srtp, pylibsrtp.Session)
            self.assertIsInstance(dtls._tx_srtp, pylibsrtp.Session)
            connection = dtls.transport._connection
            self.assertIsInstance(connection, aioice.Connection)
            self.assertTrue(connection._protocols)
            for protocol in connection._protocols:
                self.assertTrue(callable(protocol.datagram_received))
            pair = connection._nominated[1]
            self.assertEqual(pair.remote_addr[0], "127.0.0.1")
            self.assertTrue(callable(pair.protocol.transport.sendto))
            # The zero-copy send path (forward.zeroCopySender): the session's C
            # buffer and srtp_t, and the datagram transport's socket.
            from ahoyconference.media.forward import zeroCopySender

            zero = zeroCopySender(dtls._tx_srtp.protect, pair.protocol.transport.sendto)
            self.assertIsNotNone(zero, "the zero-copy path no longer fits pylibsrtp/asyncio")
            srtp, cdata, view, length, send = zero
            self.assertGreaterEqual(len(view), 1500)
            self.assertTrue(callable(send))
            self.assertEqual(transceiver.mid, "0")
            self.assertTrue(transceiver._codecs)
            self.assertIn("sendonly", transceiver.currentDirection)
        finally:
            await client.close()
            await server.close()


class HostAddressTests(TestCase):
    """C{[ice] host_addresses} through the wrapped C{get_host_addresses}."""

    timeout = 30

    @asyncioTest
    async def test_loopbackGathered(self):
        """
        aioice skips 127.0.0.1 by itself; with the wrapper it gathers exactly
        the configured address, and uninstalling restores aioice.
        """
        original = aioice.ice.get_host_addresses
        uninstall = ice.installHostAddresses(("127.0.0.1", "::1"))
        try:
            self.assertEqual(aioice.ice.get_host_addresses(True, False), ["127.0.0.1"])
            connection = aioice.Connection(ice_controlling=True, use_ipv6=False)
            await connection.gather_candidates()
            self.assertEqual([c.host for c in connection.local_candidates], ["127.0.0.1"])
            await connection.close()
            nested = ice.installHostAddresses(("::1",))
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
        ice.installHostAddresses(())()
        self.assertIs(aioice.ice.get_host_addresses, original)

    def test_badAddress(self):
        """A typo is a ValueError at start-up."""
        self.assertRaises(ValueError, ice.installHostAddresses, ("127.0.0.300",))

    def test_servers(self):
        """Configured servers become RTCIceServers; none by default (no Google STUN)."""
        self.assertEqual(ice.rtcConfiguration(IceSettings()).iceServers, [])
        servers = ice.iceServers(IceSettings(servers=(
            {"urls": "turn:turn.example:3478", "username": "u", "credential": "c"},)))
        self.assertEqual((servers[0].urls, servers[0].username, servers[0].credential),
                         ("turn:turn.example:3478", "u", "c"))


class ExceptionHandlerTests(TestCase):
    """L{installAsyncioExceptionHandler} logs asyncio errors through twisted.logger."""

    def test_logged(self):
        """An exception in a context is logged with its traceback; a message alone too."""
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        installAsyncioExceptionHandler(loop)
        try:
            raise RuntimeError("boom")
        except RuntimeError as e:
            error = e
        loop.call_exception_handler({"message": "Task exception", "exception": error})
        loop.call_exception_handler({"message": "just a message"})
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertIs(failures[0]["log_failure"].value, error)
        self.assertTrue(any(e.get("asyncio_message") == "just a message" for e in events), events)
        self.flushLoggedErrors(RuntimeError)

