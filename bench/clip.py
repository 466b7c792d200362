"""The load's media: encode a synthetic clip once (VP8 640x480 + Opus, cached
on disk) and replay its packets in real time (L{ReplayTrack}), so publishing
costs no encoder CPU."""
from __future__ import annotations

import asyncio
import fractions
import logging
import os
import pickle
import random
import time

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

LOG = logging.getLogger("load")


VIDEO_CLOCK = 90000
AUDIO_CLOCK = 48000


def _frames_numpy(np, n: int, width: int, height: int):
    """janus-bench's picture: a moving XOR texture and a moving noise block."""
    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(n):
        y = ((xx + 4 * i) ^ (yy + 2 * i)) & 0xFF                     # moving pattern
        bx, by = (16 * i) % (width - 160), (8 * i) % (height - 120)
        y[by:by + 120, bx:bx + 160] = rng.integers(0, 256, (120, 160))  # noisy moving block
        u = np.full((height // 2, width // 2), (i * 3) % 256)
        v = np.full((height // 2, width // 2), (255 - i * 2) % 256)
        yield av.VideoFrame.from_ndarray(
            np.concatenate([y, u.reshape(-1, width), v.reshape(-1, width)]).astype(np.uint8),
            format="yuv420p")


def _frames_plain(n: int, width: int, height: int):
    """Without numpy: a moving diagonal ramp and the same moving noise block."""
    rnd = random.Random(1234)
    ramp = bytes(range(256)) * ((width + height) // 256 + 3)
    for i in range(n):
        bx, by = (16 * i) % (width - 160), (8 * i) % (height - 120)
        rows = []
        for r in range(height):
            off = (4 * i + 2 * r) % 256
            row = ramp[off:off + width]
            if by <= r < by + 120:
                row = row[:bx] + rnd.randbytes(160) + row[bx + 160:]
            rows.append(row)
        frame = av.VideoFrame(width, height, "yuv420p")
        chroma = (width // 2) * (height // 2)
        for plane, data in zip(frame.planes, (b"".join(rows), bytes([(i * 3) % 256]) * chroma,
                                              bytes([(255 - i * 2) % 256]) * chroma), strict=True):
            plane.update(data)
        yield frame


def _tone_numpy(np, count: int, spf: int):
    rng = np.random.default_rng(1234)
    for i in range(count):
        ts = (np.arange(spf) + i * spf) / AUDIO_CLOCK
        sig = 0.3 * np.sin(2 * np.pi * (300 + 200 * np.sin(ts)) * ts) + 0.05 * rng.standard_normal(spf)
        s16 = (sig * 32767).astype(np.int16)
        yield av.AudioFrame.from_ndarray(np.repeat(s16, 2).reshape(1, -1), format="s16", layout="stereo")


def _tone_plain(count: int, spf: int):
    import math
    import struct
    rnd = random.Random(1234)
    for i in range(count):
        samples = []
        for k in range(spf):
            t = (k + i * spf) / AUDIO_CLOCK
            x = 0.3 * math.sin(2 * math.pi * (300 + 200 * math.sin(t)) * t) + 0.05 * rnd.gauss(0, 1)
            s = max(-32768, min(32767, int(x * 32767)))
            samples += (s, s)
        af = av.AudioFrame(format="s16", layout="stereo", samples=spf, align=1)
        af.planes[0].update(struct.pack(f"<{2 * spf}h", *samples))
        yield af


def build_media(path: str, seconds: int, width: int, height: int, fps: int,
                video_bps: int, audio_bps: int) -> dict:
    """Encode `seconds` of synthetic 640x480 VP8 + Opus once; cache to `path`."""
    key = dict(seconds=seconds, width=width, height=height, fps=fps,
               video_bps=video_bps, audio_bps=audio_bps, v=2)
    try:
        import numpy as np
    except ImportError:   # numpy is only in bench/requirements.txt; tests may lack it
        np = None
        LOG.warning("numpy missing: synthesising a simpler picture and tone without it "
                    "(install bench/requirements.txt for janus-bench's exact media)")
    if np is None:
        key["synth"] = "plain"
    if os.path.exists(path):
        with open(path, "rb") as f:
            cached = pickle.load(f)
        if cached.get("key") == key:
            return cached
    t0 = time.time()
    # ---- VP8
    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = fractions.Fraction(1, fps)
    enc.framerate = fractions.Fraction(fps, 1)
    enc.bit_rate = video_bps
    enc.gop_size = 3 * fps
    enc.options = {"deadline": "realtime", "cpu-used": "4", "lag-in-frames": "0",
                   "minrate": str(video_bps), "maxrate": str(video_bps),
                   "bufsize": str(video_bps), "undershoot-pct": "95"}
    video = []
    n = seconds * fps
    frames = _frames_numpy(np, n, width, height) if np is not None else _frames_plain(n, width, height)
    for i, frame in enumerate(frames):
        frame.pts = i
        for pkt in enc.encode(frame):
            video.append((bytes(pkt), int(pkt.pts) * VIDEO_CLOCK // fps, bool(pkt.is_keyframe)))
    for pkt in enc.encode(None):
        video.append((bytes(pkt), int(pkt.pts) * VIDEO_CLOCK // fps, bool(pkt.is_keyframe)))
    # ---- Opus, 20 ms frames, 48 kHz stereo
    aenc = av.CodecContext.create("libopus", "w")
    aenc.sample_rate, aenc.layout, aenc.format = AUDIO_CLOCK, "stereo", "s16"
    aenc.bit_rate = audio_bps
    aenc.time_base = fractions.Fraction(1, AUDIO_CLOCK)
    audio = []
    spf = 960
    tone = _tone_numpy(np, seconds * 50, spf) if np is not None else _tone_plain(seconds * 50, spf)
    for i, af in enumerate(tone):
        af.sample_rate = AUDIO_CLOCK
        af.pts = i * spf
        for pkt in aenc.encode(af):
            audio.append((bytes(pkt), int(pkt.pts)))
    for pkt in aenc.encode(None):
        audio.append((bytes(pkt), int(pkt.pts)))
    audio = [(d, j * spf) for j, (d, _) in enumerate(audio)]   # regular 20 ms grid
    media = dict(key=key, video=video, audio=audio, fps=fps,
                 video_period=n * VIDEO_CLOCK // fps, audio_period=len(audio) * spf)
    vbits = sum(len(d) for d, _, _ in video) * 8 / seconds
    abits = sum(len(d) for d, _ in audio) * 8 / seconds
    LOG.info("encoded %d video pkts (%.0f kbit/s, %d keyframes) + %d audio pkts (%.0f kbit/s) in %.1fs",
             len(video), vbits / 1e3, sum(k for *_, k in video), len(audio), abits / 1e3, time.time() - t0)
    with open(path + ".tmp", "wb") as f:
        pickle.dump(media, f)
    os.replace(path + ".tmp", path)
    return media


LATE = {"resets": 0}          # times a track fell > MAX_LATE_S behind schedule
MAX_LATE_S = 0.25


class ReplayTrack(MediaStreamTrack):
    """Yields pre-encoded av.Packet objects, paced in real time, looping forever.

    aiortc's RTCRtpSender only packetizes an av.Packet (encoder.pack), it does
    not encode it (see RTCRtpSender._next_encoded_frame).

    Like a live source, it never bursts to catch up: if it is more than
    MAX_LATE_S behind schedule (event loop stalled), the schedule is moved to
    "now" and LATE["resets"] is incremented; it always yields to the loop."""

    def __init__(self, kind: str, packets: list, clock: int, step: int, period: int):
        super().__init__()
        self.kind = kind
        self._pkts = packets
        self._clock = clock
        self._step = step          # RTP ticks between packets
        self._period = period      # RTP ticks of one loop of the clip
        self._tb = fractions.Fraction(1, clock)
        self._i = 0
        self._start: float | None = None

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        n = len(self._pkts)
        loop, j = divmod(self._i, n)
        pts = loop * self._period + self._pkts[j][1]
        now = time.monotonic()
        if self._start is None:
            self._start = now + random.random() * self._step / self._clock
        wait = self._start + pts / self._clock - now
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            if wait < -MAX_LATE_S:
                self._start -= wait
                LATE["resets"] += 1
            await asyncio.sleep(0)
        self._i += 1
        p = av.Packet(self._pkts[j][0])
        p.pts = pts
        p.time_base = self._tb
        return p
