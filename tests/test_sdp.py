# -*- test-case-name: tests.test_sdp -*-
"""
Tests for L{ahoyconference.media.sdp}: bandwidth lines, the public address,
and the checks of answers (488 for anything unusable).
"""

from __future__ import annotations

import re

from aiortc import RTCPeerConnection
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from twisted.trial.unittest import TestCase

from ahoyconference.config import IceSettings
from ahoyconference.interfaces import ProtocolError
from ahoyconference.media import sdp
from ahoyconference.media.ice import rtcConfiguration
from ahoyconference.media.peers import codecPreferences
from tests.mediaclients import Publisher, Subscriber
from tests.test_media_engine import asyncioTest, loopbackOnly

SAMPLE = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 192.168.1.5\r\na=mid:0\r\n"
    "a=candidate:1 1 udp 2130706431 192.168.1.5 40000 typ host\r\n"
    "a=candidate:2 1 udp 2130706431 127.0.0.1 40001 typ host\r\n"
    "a=candidate:3 1 udp 1694498815 203.0.113.9 40002 typ srflx raddr 192.168.1.5 rport 40000\r\n"
    "a=candidate:4 1 udp 2130706431 fd00::5 40003 typ host\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 97\r\nc=IN IP4 192.168.1.5\r\nb=AS:50\r\na=mid:1\r\n"
)


class BandwidthTests(TestCase):
    """L{sdp.addBandwidth}."""

    def test_videoOnly(self):
        """b=AS and b=TIAS follow the video section's c= line; audio is untouched."""
        out = sdp.addBandwidth(SAMPLE, "video", 300)
        video = out[out.index("m=video"):]
        audio = out[:out.index("m=video")]
        self.assertIn("c=IN IP4 192.168.1.5\r\nb=AS:300\r\nb=TIAS:300000\r\na=mid:1", video)
        self.assertNotIn("b=AS:50", out)
        self.assertNotIn("b=", audio)

    def test_noConnectionLine(self):
        """Without c= the lines come right after m=; so too at the end of the text."""
        text = "v=0\r\nm=video 9 X 97\r\na=mid:1\r\nm=video 9 X 97\r\n"
        out = sdp.addBandwidth(text, "video", 10)
        self.assertEqual(out.count("m=video 9 X 97\r\nb=AS:10\r\nb=TIAS:10000\r\n"), 2)


class AddressTests(TestCase):
    """L{sdp.advertiseAddress}."""

    def test_privateHostReplaced(self):
        """Private IPv4 host candidates and c= lines get the public address."""
        out = sdp.advertiseAddress(SAMPLE, "198.51.100.7")
        self.assertIn("a=candidate:1 1 udp 2130706431 198.51.100.7 40000 typ host", out)
        self.assertIn("127.0.0.1 40001 typ host", out)
        self.assertIn("203.0.113.9 40002 typ srflx raddr 192.168.1.5", out)
        self.assertIn("fd00::5 40003 typ host", out)
        self.assertEqual(out.count("c=IN IP4 198.51.100.7"), 2)

    def test_none(self):
        """Without a public address nothing changes."""
        self.assertEqual(sdp.advertiseAddress(SAMPLE, None), SAMPLE)


class CheckAnswerTests(TestCase):
    """L{sdp.checkAnswer} against real aiortc offers and answers."""

    timeout = 60

    def setUp(self):
        loopbackOnly(self)
        self.pcs = []
        self.addCleanup(self._close)

    @asyncioTest
    async def _close(self):
        for pc in self.pcs:
            await pc.close()

    async def publishPair(self):
        """An offer as the engine makes it for publishing, and a client's answer."""
        pc = RTCPeerConnection(rtcConfiguration(IceSettings()))
        self.pcs.append(pc)
        for kind in ("audio", "video"):
            pc.addTransceiver(kind, direction="recvonly").setCodecPreferences(codecPreferences(kind))
        await pc.setLocalDescription(await pc.createOffer())
        publisher = Publisher()
        self.pcs.append(publisher)
        return pc.localDescription.sdp, await publisher.answer(pc.localDescription.sdp)

    def assertRefused(self, offer, answer, side="publisher"):
        e = self.assertRaises(ProtocolError, sdp.checkAnswer, offer, answer, side)
        self.assertEqual(e.status, 488)
        return e

    @asyncioTest
    async def test_negotiated(self):
        """A good answer: codecs, RTX, extension ids and SSRCs per section."""
        offer, answer = await self.publishPair()
        audio, video = sdp.checkAnswer(offer, answer, "publisher")
        self.assertEqual((audio.kind, audio.mid, audio.direction), ("audio", "0", "sendonly"))
        self.assertEqual(audio.codecs, {96: ("audio/opus", 48000, "", "")})
        self.assertEqual(audio.extensions[sdp.AUDIO_LEVEL_URI], 2)
        self.assertEqual(audio.extensions[sdp.MID_URI], 1)
        self.assertEqual(video.codecs[97], ("video/vp8", 90000, "", ""))
        self.assertEqual(video.rtx[97], 98)
        self.assertIn(("video/h264", 90000, "1", "42e01f"), video.codecs.values())
        self.assertTrue(video.ssrcs)

    @asyncioTest
    async def test_refusals(self):
        """Every kind of unusable answer is a 488."""
        offer, answer = await self.publishPair()
        for bad in (None, 7, "", "hello", "v=0\r\nm=audio x\r\n",
                    answer.replace("a=mid:1", "a=mid:7"),
                    answer[:answer.index("m=video")],
                    re.sub(r"m=audio \d+ ", "m=audio 0 ", answer),
                    re.sub(r"a=ice-ufrag:.*\r\n", "", answer),
                    re.sub(r"a=fingerprint:.*\r\n", "", answer),
                    answer.replace("a=setup:active", "a=setup:actpass"),
                    answer.replace("a=rtcp-mux\r\n", ""),
                    answer.replace("a=sendonly", "a=recvonly"),
                    answer.replace("opus/48000", "foo/48000")):
            self.assertNotEqual(bad, answer)
            self.assertRefused(offer, bad)
        e = self.assertRefused(offer, answer.replace("opus/48000", "foo/48000"))
        self.assertIn("no codec in common", e.detail)

    @asyncioTest
    async def test_subscriberSide(self):
        """A subscriber answers recvonly; sendonly there does not fit."""
        pc = RTCPeerConnection(rtcConfiguration(IceSettings()))
        self.pcs.append(pc)
        pc.addTransceiver("video", direction="sendonly").setCodecPreferences(
            codecPreferences("video", {("video/vp8", 90000, "", "")}))
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        self.assertNotIn("H264", offer)
        subscriber = Subscriber()
        self.pcs.append(subscriber)
        answer = await subscriber.answer(offer)
        (video,) = sdp.checkAnswer(offer, answer, "subscriber")
        self.assertEqual(video.direction, "recvonly")
        self.assertRefused(offer, answer.replace("a=recvonly", "a=sendonly"), "subscriber")


class CodecKeyTests(TestCase):
    """L{sdp.codecKey} tells codecs apart by what matters, not by payload type."""

    def test_h264Profiles(self):
        """Two H264 profiles differ; case of the mime type does not matter."""
        a = RTCRtpCodecCapability("video/H264", 90000, parameters={
            "packetization-mode": "1", "profile-level-id": "42001f"})
        b = RTCRtpCodecCapability("video/h264", 90000, parameters={
            "packetization-mode": "1", "profile-level-id": "42E01F"})
        c = RTCRtpCodecCapability("video/H264", 90000, parameters={
            "packetization-mode": "1", "profile-level-id": "42e01f"})
        self.assertNotEqual(sdp.codecKey(a), sdp.codecKey(b))
        self.assertEqual(sdp.codecKey(b), sdp.codecKey(c))


class MdnsTests(TestCase):
    """Browsers' mDNS host candidates are dropped; the rest stays."""

    def test_dropMdnsCandidates(self):
        from ahoyconference.media.sdp import dropMdnsCandidates

        sdp = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
               "a=candidate:1 1 udp 2122260223 3f1c2a4e-1b2c-4d5e-8f90-123456789abc.local "
               "54321 typ host generation 0\r\n"
               "a=candidate:2 1 udp 2122260223 127.0.0.1 50000 typ host\r\n"
               "a=end-of-candidates\r\n")
        out = dropMdnsCandidates(sdp)
        self.assertNotIn(".local", out)
        self.assertIn("127.0.0.1 50000 typ host", out)
        self.assertNotIn("a=end-of-candidates", out)  # ICE waits for peer-reflexive pairs
        self.assertTrue(out.endswith("\r\n"))
        plain = sdp.replace("3f1c2a4e-1b2c-4d5e-8f90-123456789abc.local", "127.0.0.2")
        self.assertEqual(dropMdnsCandidates(plain), plain)


class UsableCandidatesTests(TestCase):
    """L{sdp.usableCandidates}."""

    def test_droppedMeansWaitForChecks(self):
        """
        When a candidate is dropped (here: outside the allowed networks), so
        is C{a=end-of-candidates}: ICE then waits for the client's own checks
        (peer-reflexive, e.g. through its NAT) instead of failing at once.
        """
        answer = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\n"
                  "a=candidate:1 1 udp 2130706431 192.0.2.10 40000 typ host\r\n"
                  "a=end-of-candidates\r\n")
        out, dropped = sdp.usableCandidates(answer, ("203.0.113.10",),
                                            allowed=lambda address: address != "192.0.2.10")
        self.assertEqual(dropped, 1)
        self.assertNotIn("a=candidate", out)
        self.assertNotIn("end-of-candidates", out)
        kept, dropped = sdp.usableCandidates(answer, ("203.0.113.10",),
                                             allowed=lambda address: True)
        self.assertEqual(dropped, 0)
        self.assertIn("a=end-of-candidates", kept)


class SimulcastSdpTests(TestCase):
    """L{sdp.addSimulcast} and the rids L{sdp.checkAnswer} accepts (docs/architecture.md, "Simulcast")."""

    timeout = 60

    def setUp(self):
        loopbackOnly(self)
        self.pcs = []
        self.addCleanup(self._close)

    @asyncioTest
    async def _close(self):
        for pc in self.pcs:
            await pc.close()

    async def publishPair(self):
        """A simulcast publish offer as the engine makes it, and aiortc's answer."""
        pc = RTCPeerConnection(rtcConfiguration(IceSettings()))
        self.pcs.append(pc)
        for kind in ("audio", "video"):
            pc.addTransceiver(kind, direction="recvonly").setCodecPreferences(codecPreferences(kind))
        await pc.setLocalDescription(await pc.createOffer())
        offer = sdp.addSimulcast(pc.localDescription.sdp)
        publisher = Publisher()
        self.pcs.append(publisher)
        return offer, await publisher.answer(offer)

    @staticmethod
    def browserAnswer(answer, rids="l;m;h", declared=("l", "m", "h"), extensions=True):
        """C{answer} with what Chromium adds when it accepts simulcast."""
        extra = ""
        if extensions:
            extra += ("a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n"
                      "a=extmap:5 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n")
        extra += "".join(f"a=rid:{rid} send\r\n" for rid in declared)
        if rids is not None:
            extra += f"a=simulcast:send {rids}\r\n"
        return answer.rstrip("\r\n") + "\r\n" + extra

    def test_offerText(self):
        """The video section gains rids, a=simulcast and the extensions; audio does not; twice is once."""
        offer = sdp.addSimulcast(SAMPLE.replace("a=mid:0", "a=mid:0\r\na=extmap:1 "
                                                + sdp.MID_URI + "\r\na=extmap:2 x-audio"))
        audio, video = offer.split("m=video")
        self.assertNotIn("rid", audio)
        self.assertIn("a=rid:l recv\r\na=rid:m recv\r\na=rid:h recv\r\na=simulcast:recv l;m;h\r\n", video)
        # the mid id is the audio section's (one id per URI in a bundle); new ids are unused ones
        self.assertIn(f"a=extmap:1 {sdp.MID_URI}\r\n", video)
        self.assertIn(f"a=extmap:3 {sdp.RID_URI}\r\n", video)
        self.assertIn(f"a=extmap:4 {sdp.RRID_URI}\r\n", video)
        self.assertEqual(sdp.addSimulcast(offer), offer)

    @asyncioTest
    async def test_aiortcAnswersOneStream(self):
        """aiortc parses the offer and answers without simulcast: one stream, no rids."""
        offer, answer = await self.publishPair()
        self.assertIn("a=simulcast:recv l;m;h", offer)
        self.assertNotIn("a=simulcast", answer)
        audio, video = sdp.checkAnswer(offer, answer, "publisher")
        self.assertEqual((audio.rids, video.rids), ([], []))

    @asyncioTest
    async def test_browserAnswer(self):
        """The layers a browser accepts, lowest first; paused ones (~) left out."""
        offer, answer = await self.publishPair()
        _, video = sdp.checkAnswer(offer, self.browserAnswer(answer), "publisher")
        self.assertEqual(video.rids, ["l", "m", "h"])
        self.assertEqual(video.extensions[sdp.RID_URI], 4)
        self.assertEqual(video.extensions[sdp.RRID_URI], 5)
        _, video = sdp.checkAnswer(offer, self.browserAnswer(answer, "h;l,m;~m"), "publisher")
        self.assertEqual(video.rids, ["l", "h"])
        # one layer, or no RID extension to tell layers apart: one stream
        for text in (self.browserAnswer(answer, "m", ("m",)),
                     self.browserAnswer(answer, extensions=False)):
            _, video = sdp.checkAnswer(offer, text, "publisher")
            self.assertEqual(video.rids, [])

    @asyncioTest
    async def test_badRids(self):
        """A rid we did not offer, a malformed one, or a=simulcast:recv: 488."""
        offer, answer = await self.publishPair()
        for bad in (self.browserAnswer(answer, "l;m;x", ("l", "m", "x")),
                    self.browserAnswer(answer, "l;m;h", ("l", "m", "h", "q")),
                    self.browserAnswer(answer, "l;m;h", ("l", "m", "h b")),
                    self.browserAnswer(answer, "l;m;h", ("l m",)),
                    self.browserAnswer(answer, "l;;h"),
                    self.browserAnswer(answer, None) + "a=simulcast:recv l;m\r\n"):
            e = self.assertRaises(ProtocolError, sdp.checkAnswer, offer, bad, "publisher")
            self.assertEqual(e.status, 488)
