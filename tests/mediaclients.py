# -*- test-case-name: tests.test_media_engine -*-
"""
Real aiortc peers for the media tests: a publisher that sends a synthetic
moving picture and a tone (aiortc's sender adds the RFC 6464 audio level to
every audio packet), and a subscriber that decodes what arrives and checks it
against the picture's pattern.

The picture (yuv420p, 320x240) carries its own frame number in 16 black or
white blocks, the publisher's tag in 4 more, and a bright bar whose position
follows the frame number; L{readPattern} reads all three back from a decoded
frame, so a test can tell that the picture changes over time, that it is the
picture that was sent, and whose it is.

L{Publisher.publishVia} and L{Subscriber.subscribeVia} do the offer/answer
through the package's protocol client (L{ahoyconference.client}).

Everything stays on loopback: callers patch C{aioice.ice.get_host_addresses}
to return C{["127.0.0.1"]}; peer connections use C{RTCConfiguration(iceServers=[])}.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import re
import time
from array import array
from collections import Counter

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)
from av import AudioFrame, VideoFrame

WIDTH = 320
HEIGHT = 240
COUNTER_BITS = 16
TAG_BITS = 4
BAR_STEP = 8
BAR_WIDTH = 16
LOW, HIGH, GRAY = 16, 235, 110


def _blocks(value: int, bits: int, width: int) -> bytes:
    block = width // bits
    row = bytearray([GRAY]) * width
    for i in range(bits):
        bit = (value >> (bits - 1 - i)) & 1
        row[i * block:(i + 1) * block] = bytes([HIGH if bit else LOW]) * block
    return bytes(row)


def drawPattern(tag: int, n: int, width: int = WIDTH, height: int = HEIGHT) -> VideoFrame:
    """Picture number C{n} of publisher C{tag} (yuv420p)."""
    gray = bytes([GRAY]) * width
    counter = _blocks(n, COUNTER_BITS, width)
    tagRow = _blocks(tag, TAG_BITS, width)
    x = barPosition(n, width)
    bar = bytes([LOW]) * x + bytes([HIGH]) * BAR_WIDTH + bytes([LOW]) * (width - x - BAR_WIDTH)
    rows = [counter] * 56 + [gray] * 8 + [tagRow] * 48 + [gray] * 16 + [bar] * (height - 128)
    frame = VideoFrame(width, height, "yuv420p")
    luma = frame.planes[0]
    if luma.line_size == width:
        luma.update(b"".join(rows))
    else:
        pad = bytes(luma.line_size - width)
        luma.update(b"".join(row + pad for row in rows))
    for plane in frame.planes[1:]:
        plane.update(bytes([128]) * plane.buffer_size)
    return frame


def barPosition(n: int, width: int = WIDTH) -> int:
    """Where the bar of picture C{n} starts."""
    return (n * BAR_STEP) % (width - BAR_WIDTH)


def _mean(luma: bytes, stride: int, y0: int, y1: int, x0: int, x1: int) -> float:
    total = 0
    for y in range(y0, y1, 2):
        total += sum(luma[y * stride + x0:y * stride + x1])
    return total / (len(range(y0, y1, 2)) * (x1 - x0))


def readPattern(frame: VideoFrame) -> tuple[int, int, bool]:
    """
    Read C{(tag, n, barMatches)} back from a decoded picture: C{barMatches}
    says the bright bar is where picture C{n} has it.
    """
    plane = frame.planes[0]
    luma = bytes(plane)
    stride = plane.line_size
    width = frame.width
    block = width // COUNTER_BITS
    n = 0
    for i in range(COUNTER_BITS):
        bright = _mean(luma, stride, 18, 38, i * block + 5, (i + 1) * block - 5) > 128
        n = (n << 1) | int(bright)
    block = width // TAG_BITS
    tag = 0
    for i in range(TAG_BITS):
        bright = _mean(luma, stride, 76, 100, i * block + 10, (i + 1) * block - 10) > 128
        tag = (tag << 1) | int(bright)
    columns = [0] * width
    for y in (160, 180, 200):
        row = luma[y * stride:y * stride + width]
        for x in range(width):
            columns[x] += row[x]
    window = sum(columns[:BAR_WIDTH])
    best, found = window, 0
    for x in range(1, width - BAR_WIDTH + 1):
        window += columns[x + BAR_WIDTH - 1] - columns[x - 1]
        if window > best:
            best, found = window, x
    return tag, n, abs(found - barPosition(n, width)) <= 2


class PatternVideoTrack(MediaStreamTrack):
    """The moving picture, C{fps} frames a second; C{sent} lists the numbers sent."""

    kind = "video"

    def __init__(self, tag: int, fps: int = 15, first: int = 0):
        super().__init__()
        self.tag = tag
        self.fps = fps
        self.n = first
        self._first = first
        self.sent: list[int] = []
        self._start: float | None = None

    async def recv(self) -> VideoFrame:
        """The next picture, paced in real time."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + (self.n - self._first) / self.fps - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = drawPattern(self.tag, self.n)
        frame.pts = (self.n - self._first) * (90000 // self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self.sent.append(self.n)
        self.n += 1
        return frame


def _toneTable(frequency: float, amplitude: float, _cache=None) -> bytes:
    """One second of the tone at 48 kHz, twice over (s16 native order)."""
    if _cache is None:
        _cache = {}
    key = (frequency, amplitude)
    if key not in _cache:
        samples = array("h", (int(amplitude * 32767 * math.sin(2 * math.pi * frequency * i / 48000))
                              for i in range(48000)))
        _cache[key] = samples.tobytes() * 2
    return _cache[key]


class ToneAudioTrack(MediaStreamTrack):
    """A sine tone in 20 ms mono frames; set C{amplitude} to 0 for silence."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.5):
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self.samples = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        """The next 20 ms, paced in real time."""
        if self.readyState != "live":
            raise MediaStreamError
        rate = 48000
        count = 960
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self.samples / rate - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        start = self.samples % rate
        if self.amplitude:
            table = _toneTable(self.frequency, self.amplitude)
            pcm = table[2 * start:2 * (start + count)]
        else:
            pcm = bytes(2 * count)
        frame = AudioFrame(format="s16", layout="mono", samples=count)
        frame.planes[0].update(pcm)
        frame.sample_rate = rate
        frame.pts = self.samples
        frame.time_base = fractions.Fraction(1, rate)
        self.samples += count
        return frame


def offeredSsrcs(sdp: str) -> set[int]:
    """The SSRCs an SDP announces (C{a=ssrc:} lines)."""
    return {int(m) for m in re.findall(r"^a=ssrc:(\d+) ", sdp, re.M)}


def toneFrequency(samples: array, rate: int = 48000) -> tuple[float, float]:
    """C{(frequency from zero crossings, RMS)} of mono s16 samples."""
    if len(samples) < 2048:
        return 0.0, 0.0
    rms = math.sqrt(sum(x * x for x in samples) / len(samples))
    crossings = sum(1 for a, b in zip(samples, samples[1:], strict=False) if (a < 0) != (b < 0))
    return crossings * rate / (2 * len(samples)), rms


async def waitFor(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = ""):
    """Poll C{predicate} until true; fail (AssertionError) after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(interval)


def _config() -> RTCConfiguration:
    return RTCConfiguration(iceServers=[])


class Publisher:
    """
    A client that shares a moving picture and a tone.

    @ivar keyframeRequests: PLI/FIR that reached the video sender.
    @ivar rembs: REMB bitrates that reached the video sender.
    """

    def __init__(self, tag: int = 1, audio: bool = True, video: bool = True, fps: int = 15,
                 first: int = 0, videoCodec: str | None = None):
        self.pc = RTCPeerConnection(_config())
        self.videoCodec = videoCodec
        self.video = PatternVideoTrack(tag, fps, first) if video else None
        self.audio = ToneAudioTrack() if audio else None
        self.keyframeRequests = 0
        self.rembs: list[int] = []
        self.receiverReports = 0

    async def answer(self, offer: str) -> str:
        """Apply the server's offer; return our answer (ICE gathering done)."""
        for track in (self.audio, self.video):
            if track is not None:
                self.pc.addTrack(track)
        if self.videoCodec is not None:
            for transceiver in self.pc.getTransceivers():
                if transceiver.kind == "video":
                    transceiver.setCodecPreferences([
                        c for c in RTCRtpSender.getCapabilities("video").codecs
                        if c.mimeType.lower() == self.videoCodec.lower()][:1])
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        for transceiver in self.pc.getTransceivers():
            self._instrument(transceiver.sender)
        return self.pc.localDescription.sdp

    async def publishVia(self, client, maxVideoBitrate: int | None = None):
        """
        Share our tracks as C{client}'s member (L{ProtocolClient.publish}
        with our instrumented answer); return the L{Publication}.
        """
        return await client.publish(answer=self.answer, maxVideoBitrate=maxVideoBitrate,
                                    audio=self.audio is not None, video=self.video is not None)

    def _instrument(self, sender) -> None:
        original = sender._handle_rtcp_packet

        async def handle(packet):
            if isinstance(packet, RtcpPsfbPacket):
                if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                    self.keyframeRequests += 1
                elif packet.fmt == RTCP_PSFB_APP:
                    self.rembs.append(unpack_remb_fci(packet.fci)[0])
            elif hasattr(packet, "reports") and any(r.ssrc == sender._ssrc
                                                   for r in packet.reports):
                self.receiverReports += 1
            await original(packet)

        sender._handle_rtcp_packet = handle

    def videoSender(self):
        """The RTCRtpSender of the picture."""
        return next(s for s in self.pc.getSenders() if s.track is self.video)

    async def close(self) -> None:
        """Hang up (DTLS close_notify, then ICE close)."""
        await self.pc.close()


class Subscriber:
    """
    A client that receives one publisher's media and decodes it.

    @ivar frames: C{(tag, n, barMatches)} of every decoded picture.
    @ivar audio: decoded audio, mono s16 chunks.
    @ivar ssrcs: RTP packets received per SSRC (before decoding).
    @ivar seqs: C{(ssrc, seq, timestamp)} of every RTP packet, in arrival order.
    @ivar senderReports: C{(arrival time, ntp, rtp, ssrc, latest RTP timestamp
        received on that SSRC)} of sender reports.
    """

    def __init__(self):
        self.pc = RTCPeerConnection(_config())
        self.frames: list[tuple[int, int, bool]] = []
        self.audio: list[array] = []
        self.ssrcs: Counter = Counter()
        self.seqs: list[tuple[int, int, int]] = []
        self.senderReports: list[tuple[float, int, int]] = []
        self.offered: set[int] = set()
        self.tracks: dict[str, MediaStreamTrack] = {}
        self._tasks: list[asyncio.Task] = []

    async def answer(self, offer: str) -> str:
        """Apply the server's offer; return our answer."""
        self.offered = offeredSsrcs(offer)

        @self.pc.on("track")
        def onTrack(track):
            self.tracks[track.kind] = track
            self._tasks.append(asyncio.ensure_future(self._consume(track)))

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        dtls = self.pc.getTransceivers()[0].receiver.transport
        originalRtp = dtls._handle_rtp_data
        originalRtcp = dtls._handle_rtcp_data

        async def rtp(data, arrival_time_ms):
            ssrc = int.from_bytes(data[8:12], "big")
            self.ssrcs[ssrc] += 1
            self.seqs.append((ssrc, int.from_bytes(data[2:4], "big"),
                              int.from_bytes(data[4:8], "big")))
            await originalRtp(data, arrival_time_ms)

        async def rtcp(data):
            try:
                for packet in RtcpPacket.parse(data):
                    if isinstance(packet, RtcpSrPacket):
                        info = packet.sender_info
                        last = next((ts for ssrc, seq, ts in reversed(self.seqs)
                                     if ssrc == packet.ssrc), None)
                        self.senderReports.append((time.time(), info.ntp_timestamp,
                                                   info.rtp_timestamp, packet.ssrc, last))
            except ValueError:
                pass
            await originalRtcp(data)

        dtls._handle_rtp_data = rtp
        dtls._handle_rtcp_data = rtcp
        return self.pc.localDescription.sdp

    async def subscribeVia(self, client, memberID: str, audio: bool = True,
                           video: bool = True):
        """
        Receive C{memberID}'s media as C{client}'s member
        (L{ProtocolClient.subscribe} with our instrumented answer).
        """
        return await client.subscribe(memberID, audio, video, answer=self.answer)

    async def _consume(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except (MediaStreamError, asyncio.CancelledError):
                return
            if track.kind == "video":
                self.frames.append(readPattern(frame))
            else:
                pcm = array("h", bytes(frame.planes[0])[:2 * frame.samples * len(frame.layout.channels)])
                self.audio.append(pcm[::len(frame.layout.channels)])

    def tone(self, seconds: float = 0.5) -> tuple[float, float]:
        """C{(frequency, rms)} of the last C{seconds} of decoded audio."""
        if not self.audio:
            return 0.0, 0.0
        samples = array("h")
        for chunk in self.audio[-int(seconds * 50):]:
            samples.extend(chunk)
        return toneFrequency(samples)

    def receiver(self, kind: str):
        """Our RTCRtpReceiver of C{kind}."""
        return next(t.receiver for t in self.pc.getTransceivers() if t.kind == kind)

    async def sendPli(self) -> None:
        """Ask for a keyframe of the video we receive."""
        receiver = self.receiver("video")
        ssrc = next(iter(self.offeredVideoSsrcs()))
        await receiver._send_rtcp_pli(ssrc)

    def offeredVideoSsrcs(self) -> list[int]:
        """The primary SSRC(s) the offer announced for video."""
        description = self.pc.remoteDescription.sdp
        section = description[description.index("m=video"):]
        return [int(s) for s in re.findall(r"^a=ssrc:(\d+) cname", section, re.M)][:1]

    async def close(self) -> None:
        """Hang up."""
        for task in self._tasks:
            task.cancel()
        await self.pc.close()
