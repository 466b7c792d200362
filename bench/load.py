#!/usr/bin/env python3
"""SFU forwarding load generator (aiortc): AhoyConference and Janus VideoRoom.

Adapted from the janus-bench harness (../shared/janus-bench/load.py): same
media, tracks, counting, CPU sampling and summary; added the AhoyConference
signalling class (our WebSocket API, protocol.md), server-offered publishing,
and a dependency-free HTTP client for Janus (no aiohttp).

P publishers each send one VP8 video + one Opus audio track made of packets
that were encoded ONCE (PyAV, cached on disk) and are only re-packetized by
aiortc, so publishing costs no encoder CPU.  S subscribers per publisher receive
the forwarded streams and only COUNT RTP packets (no depacketizing, jitter
buffer or decoding).  After all peers are connected and receiving, the server
process CPU (/proc/<pid>/stat utime+stime), this process's own CPU, the
machine-wide CPU and the packet counters are sampled at the start and the end
of a T-second window.

Only loopback is used: aioice is told the only host address is 127.0.0.1 and
no STUN/TURN server is configured (aiortc would otherwise default to a public
STUN server).

Everything SFU-specific (signalling) lives in one class per SFU:
AhoyConference and JanusVideoRoom (see SfuSignalling).
"""
from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import logging
import os
import pickle
import random
import resource
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import aiortc.rtcrtpreceiver as _rtcrtpreceiver
import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc import __version__ as _aiortc_version
from aiortc.mediastreams import MediaStreamError

LOG = logging.getLogger("load")

# --------------------------------------------------------------------------
# Loopback only: the only ICE host candidate is 127.0.0.1 (aioice normally
# skips it and would use eth0), and RTCConfiguration(iceServers=[]) below
# keeps aiortc from using its default public STUN server.
# --------------------------------------------------------------------------
LOOPBACK = "127.0.0.1"
aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=False: [LOOPBACK]
ICE_CONFIG = RTCConfiguration(iceServers=[])


# ==========================================================================
# Signalling: the only SFU-specific part.
# ==========================================================================
@dataclass
class PublisherInfo:
    feed_id: Any          # what a subscriber needs to name this publisher
    answer_sdp: str
    ctx: Any = None       # opaque, for close()


@dataclass
class SubscriberInfo:
    offer_sdp: str        # the SFU's offer (SFU-initiated subscription)
    ctx: Any = None       # opaque, passed back to start_subscription()/close()


class SfuSignalling:
    """What load.py needs from an SFU's signalling (duck-typed; subclassing optional).

      await open()                                  connect, make sure the room exists
      # publishing, client offers (Janus):
      await publish(display, offer_sdp)             -> PublisherInfo(feed_id, answer_sdp)
      # or server offers (AhoyConference): set server_offers_publish = True and
      await publish_offer(display)                  -> (ctx, offer_sdp)
      await publish_answer(ctx, answer_sdp)         -> PublisherInfo(feed_id, None)
      await publisher_ready(pub_info)               (optional) called once the publisher's
                                                    PeerConnection is connected; return when
                                                    the SFU accepts subscriptions to it
      # SFU-initiated subscription (Janus, AhoyConference):
      await subscribe(feed_id)                      -> SubscriberInfo(offer_sdp)
      await start_subscription(sub_info, answer_sdp)
      # or client-initiated subscription: set client_offers_subscription = True and
      await subscribe_with_offer(feed_id, offer_sdp) -> answer_sdp
      server_events()                               -> dict of counters (optional)
      await close()                                 leave / hang up everything

    SDPs are complete (non-trickle): load.py waits for ICE gathering before
    handing out an SDP and expects complete SDPs back.
    """

    name = "abstract"
    client_offers_subscription = False
    server_offers_publish = False


# --------------------------------------------------------------------------
# AhoyConference: our WebSocket API (protocol.md), subprotocol conference-protocol
# --------------------------------------------------------------------------
class _AhoyClient:
    """One WebSocket connection speaking the conference protocol.

    A reader task files every message; request() sends and waits (bounded)
    for the response with the same transactionID; expect() waits for the
    next message that matches a predicate."""

    _ids = 0

    def __init__(self, ws, timeout: float):
        self.ws = ws
        self.timeout = timeout
        self.inbox: list[dict] = []
        self.counts: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())
        self.member_id: str | None = None

    @classmethod
    async def connect(cls, url: str, timeout: float) -> _AhoyClient:
        import websockets
        ws = await websockets.connect(url, subprotocols=["conference-protocol"],
                                      open_timeout=timeout, max_size=2 ** 24,
                                      ping_interval=None, compression=None)
        return cls(ws, timeout)

    async def _read(self):
        import websockets
        try:
            async for text in self.ws:
                m = json.loads(text)
                t = m.get("messageType", "?")
                self.counts[t] = self.counts.get(t, 0) + 1
                if t in ("CONFERENCE_JOIN_indication", "CONFERENCE_LEAVE_indication"):
                    continue          # not needed by the load; keep memory flat
                self.inbox.append(m)
                self._changed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self._changed.set()

    async def send(self, msg: dict) -> str:
        if "transactionID" not in msg:
            _AhoyClient._ids += 1
            msg = dict(msg, transactionID=f"b{_AhoyClient._ids}")
        await self.ws.send(json.dumps(msg))
        return msg["transactionID"]

    async def expect(self, pred, what: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, m in enumerate(self.inbox):
                if pred(m):
                    return self.inbox.pop(i)
            if self._reader.done():
                raise RuntimeError(f"connection closed waiting for {what}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no {what} within {self.timeout}s; have "
                                   f"{[m.get('messageType') for m in self.inbox][-5:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass

    async def request(self, messageType: str, ok=(200,), **params) -> dict:
        tid = await self.send({"messageType": messageType, **params})
        want = messageType.replace("_request", "_response")
        res = await self.expect(lambda m: m.get("transactionID") == tid and m.get("messageType")
                                in (want, "ERROR_response"), want)
        if res.get("status") not in ok:
            raise RuntimeError(f"{messageType} failed: {res.get('status')} {res.get('reason')}")
        return res

    async def join(self, room: str, name: str) -> dict:
        res = await self.request("CONFERENCE_JOIN_request", conferenceID=room, name=name)
        self.member_id = res["memberID"]
        return res

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except Exception:
            pass
        self._reader.cancel()


class AhoyConference(SfuSignalling):
    """AhoyConference over its WebSocket API (protocol.md).

    One WebSocket connection (one member) per publisher and per subscriber,
    like Janus's one session per peer.  A "watcher" member joins first and
    sees every MEDIA_indication: publisher_ready() waits there until the
    publisher's audio and video are available.  The server makes every
    offer: MEDIA_SHARE_request -> MEDIA_RECEIVE_request (offer) ->
    MEDIA_RECEIVE_response (answer); MEDIA_request -> SDP_request (offer,
    transactionID = publisher's memberID) -> SDP_response (answer)."""

    name = "ahoy"
    server_offers_publish = True

    def __init__(self, url: str, room, timeout: float = 20.0):
        self.url = url
        self.room = str(room)
        self.timeout = timeout
        self.watcher: _AhoyClient | None = None
        self._clients: list[_AhoyClient] = []

    async def _client(self) -> _AhoyClient:
        c = await _AhoyClient.connect(self.url, self.timeout)
        self._clients.append(c)
        return c

    async def open(self) -> None:
        self.watcher = await self._client()
        await self.watcher.request("CONFERENCE_CREATE_request", ok=(200, 409),
                                   conferenceID=self.room)
        await self.watcher.join(self.room, "bench-watcher")
        LOG.info("ahoy: room %s, watcher %s", self.room, self.watcher.member_id[:12])

    async def publish_offer(self, display: str):
        c = await self._client()
        await c.join(self.room, display)
        await c.request("MEDIA_SHARE_request", audio=True, video=True, maxVideoBitrate=2000)
        req = await c.expect(lambda m: m.get("messageType") == "MEDIA_RECEIVE_request",
                             "MEDIA_RECEIVE_request")
        return (c, req["transactionID"]), req["sdp"]

    async def publish_answer(self, ctx, answer_sdp: str) -> PublisherInfo:
        c, tid = ctx
        await c.send({"messageType": "MEDIA_RECEIVE_response", "status": 200, "reason": "OK",
                      "sdp": answer_sdp, "transactionID": tid})
        return PublisherInfo(feed_id=c.member_id, answer_sdp=None, ctx=c)

    async def publisher_ready(self, info: PublisherInfo) -> None:
        state = {"audio": False, "video": False}

        def pred(m):
            if (m.get("messageType") == "MEDIA_indication"
                    and m.get("member", {}).get("memberID") == info.feed_id):
                for k in state:
                    if isinstance(m.get(k), dict) and "available" in m[k]:
                        state[k] = bool(m[k]["available"])
                return all(state.values())
            return False

        await self.watcher.expect(pred, f"MEDIA_indication a+v of {info.feed_id[:12]}")

    async def subscribe(self, feed_id) -> SubscriberInfo:
        c = await self._client()
        await c.join(self.room, "sub")
        await c.request("MEDIA_request", members=[{"memberID": feed_id, "audio": True, "video": True}])
        req = await c.expect(lambda m: m.get("messageType") == "SDP_request"
                             and m.get("transactionID") == feed_id, "SDP_request")
        return SubscriberInfo(offer_sdp=req["sdp"], ctx=(c, feed_id))

    async def start_subscription(self, sub: SubscriberInfo, answer_sdp: str) -> None:
        c, feed_id = sub.ctx
        await c.send({"messageType": "SDP_response", "status": 200, "reason": "OK",
                      "sdp": answer_sdp, "transactionID": feed_id})

    async def server_counters(self) -> dict:
        """The server's own forwarding counters (GET /metrics, Prometheus text)."""
        from urllib.parse import urlsplit
        u = urlsplit(self.url)
        text = await _http_json("GET", f"http://{u.hostname}:{u.port}/metrics", raw=True, timeout=10)
        out = {}
        for line in text.splitlines():
            if line.startswith(("ahoy_forwarded_packets", "ahoy_dropped_packets", "ahoy_forwarded_bytes")):
                name, _, value = line.rpartition(" ")
                out[name.split("{")[0]] = float(value)
        return out

    def server_events(self) -> dict:
        out: dict[str, int] = {}
        for c in self._clients:
            for k, v in c.counts.items():
                if k.endswith("_indication") or k == "ERROR_response":
                    out[k] = out.get(k, 0) + v
        return out

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._clients), return_exceptions=True)
        self._clients.clear()


# --------------------------------------------------------------------------
# Janus VideoRoom over its HTTP REST + long-poll transport
# --------------------------------------------------------------------------
async def _http_json(method: str, url: str, body: dict | None = None,
                     timeout: float = 60.0, raw: bool = False) -> Any:
    """A minimal HTTP/1.0 JSON request (one connection per request, loopback
    only), so that the load generator needs no HTTP client library."""
    from urllib.parse import urlsplit
    u = urlsplit(url)
    if u.hostname != LOOPBACK:
        raise ValueError(f"refusing non-loopback URL {url}")
    path = u.path + ("?" + u.query if u.query else "")
    data = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} {path} HTTP/1.0\r\nHost: {u.hostname}:{u.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")

    async def go():
        reader, writer = await asyncio.open_connection(u.hostname, u.port)
        try:
            writer.write(head.encode() + data)
            await writer.drain()
            response = await reader.read()
        finally:
            writer.close()
        header, _, payload = response.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError(f"HTTP {status} from {url}: {payload[:200]!r}")
        return payload.decode() if raw else json.loads(payload)

    return await asyncio.wait_for(go(), timeout)


class JanusVideoRoom(SfuSignalling):
    """Janus VideoRoom over the Janus HTTP REST + long-poll transport.

    One Janus session + one videoroom handle per peer (as browsers do).
    Events of a session arrive on its own long-poll GET and are matched to
    requests by transaction id.  Every wait is bounded by `timeout`.
    """

    name = "janus"

    def __init__(self, url: str, room, timeout: float = 20.0):
        self.url = url.rstrip("/")
        self.room = int(room)
        self.timeout = timeout
        self._peers: list[_JanusPeer] = []

    async def open(self) -> None:
        info = await _http_json("GET", self.url + "/info")
        LOG.info("janus %s, plugins: %s", info.get("version_string"),
                 ",".join(info.get("plugins", {}).keys()))
        # make sure the room exists (create it, non-permanent, if not)
        peer = await self._new_peer()
        res = await peer.request({"request": "exists", "room": self.room})
        if not res.get("exists"):
            res = await peer.request({
                "request": "create", "room": self.room, "publishers": 64,
                "bitrate": 0, "fir_freq": 0, "audiocodec": "opus",
                "videocodec": "vp8", "permanent": False})
            LOG.info("created room %s: %s", self.room, res)
        await peer.destroy()
        self._peers.remove(peer)

    async def publish(self, display: str, offer_sdp: str) -> PublisherInfo:
        peer = await self._new_peer()
        ev, _ = await peer.message({"request": "join", "ptype": "publisher",
                                    "room": self.room, "display": display})
        if ev.get("videoroom") != "joined":
            raise RuntimeError(f"publisher join failed: {ev}")
        feed_id = ev["id"]
        ev, jsep = await peer.message(
            {"request": "publish", "audio": True, "video": True},
            jsep={"type": "offer", "sdp": offer_sdp, "trickle": False})
        if ev.get("configured") != "ok" or not jsep:
            raise RuntimeError(f"publish failed: {ev}")
        return PublisherInfo(feed_id=feed_id, answer_sdp=jsep["sdp"], ctx=peer)

    async def publisher_ready(self, info: PublisherInfo) -> None:
        # Janus answers "No such feed" to subscribers until the publisher's
        # handle has seen setup_media (reported as the "webrtcup" event).
        await asyncio.wait_for(info.ctx.webrtcup.wait(), self.timeout)

    async def subscribe(self, feed_id: Any) -> SubscriberInfo:
        peer = await self._new_peer()
        ev, jsep = await peer.message({"request": "join", "ptype": "subscriber",
                                       "room": self.room,
                                       "streams": [{"feed": feed_id}]})
        if ev.get("videoroom") != "attached" or not jsep:
            raise RuntimeError(f"subscriber join failed: {ev}")
        return SubscriberInfo(offer_sdp=jsep["sdp"], ctx=peer)

    async def start_subscription(self, sub: SubscriberInfo, answer_sdp: str) -> None:
        ev, _ = await sub.ctx.message(
            {"request": "start"},
            jsep={"type": "answer", "sdp": answer_sdp, "trickle": False})
        if ev.get("started") != "ok":
            raise RuntimeError(f"start failed: {ev}")

    def server_events(self) -> dict:
        """Counts of asynchronous server events (webrtcup, media, slowlink, hangup...)."""
        out: dict[str, int] = {}
        for p in self._peers:
            for k, v in p.async_events.items():
                out[k] = out.get(k, 0) + v
        return out

    async def close(self) -> None:
        await asyncio.gather(*(p.destroy() for p in self._peers), return_exceptions=True)
        self._peers.clear()

    # -- internals ---------------------------------------------------------
    async def _new_peer(self) -> _JanusPeer:
        peer = _JanusPeer(self)
        await peer.create()
        self._peers.append(peer)
        return peer


class _JanusPeer:
    """One Janus session with one attached janus.plugin.videoroom handle."""

    def __init__(self, owner: JanusVideoRoom):
        self.o = owner
        self.session_id: int | None = None
        self.handle_id: int | None = None
        self._waiters: dict[str, asyncio.Future] = {}
        self._poll_task: asyncio.Task | None = None
        self.async_events: dict[str, int] = {}
        self.webrtcup = asyncio.Event()
        self._closed = False

    async def _post(self, path: str, body: dict) -> dict:
        body = dict(body, transaction=body.get("transaction") or uuid.uuid4().hex[:12])
        res = await _http_json("POST", self.o.url + path, body)
        if res.get("janus") == "error":
            raise RuntimeError(f"janus error: {res}")
        return res

    async def create(self) -> None:
        res = await self._post("", {"janus": "create"})
        self.session_id = res["data"]["id"]
        self._poll_task = asyncio.create_task(self._poll())
        res = await self._post(f"/{self.session_id}",
                               {"janus": "attach", "plugin": "janus.plugin.videoroom"})
        self.handle_id = res["data"]["id"]

    async def request(self, body: dict) -> dict:
        """Synchronous plugin request (exists, create, list...)."""
        res = await self._post(f"/{self.session_id}/{self.handle_id}",
                               {"janus": "message", "body": body})
        return res.get("plugindata", {}).get("data", {})

    async def message(self, body: dict, jsep: dict | None = None) -> tuple[dict, dict | None]:
        """Asynchronous plugin request: ack now, event (maybe with jsep) on the long poll."""
        tx = uuid.uuid4().hex[:12]
        fut = asyncio.get_running_loop().create_future()
        self._waiters[tx] = fut
        msg = {"janus": "message", "body": body, "transaction": tx}
        if jsep:
            msg["jsep"] = jsep
        try:
            res = await self._post(f"/{self.session_id}/{self.handle_id}", msg)
            if res.get("janus") == "event":       # answered synchronously
                return res["plugindata"]["data"], res.get("jsep")
            ev = await asyncio.wait_for(fut, self.o.timeout)
        finally:
            self._waiters.pop(tx, None)
        data = ev.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise RuntimeError(f"videoroom error: {data}")
        return data, ev.get("jsep")

    async def _poll(self) -> None:
        url = f"{self.o.url}/{self.session_id}"
        while not self._closed:
            try:
                evs = await _http_json("GET", f"{url}?maxev=10&rid={int(time.time() * 1000)}")
            except asyncio.CancelledError:
                return
            except Exception as exc:  # transient; bounded by _closed / cancel
                LOG.debug("long poll error %s", exc)
                await asyncio.sleep(0.5)
                continue
            for ev in evs if isinstance(evs, list) else [evs]:
                kind = ev.get("janus")
                tx = ev.get("transaction")
                if kind == "event" and tx in self._waiters:
                    if not self._waiters[tx].done():
                        self._waiters[tx].set_result(ev)
                elif kind != "keepalive":
                    if kind == "webrtcup":
                        self.webrtcup.set()
                    key = kind
                    if kind == "media":
                        key = f"media:{ev.get('type')}:{ev.get('receiving')}"
                    self.async_events[key] = self.async_events.get(key, 0) + 1

    async def destroy(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._poll_task:
            self._poll_task.cancel()
        try:
            if self.handle_id:
                await self._post(f"/{self.session_id}/{self.handle_id}", {"janus": "detach"})
            await self._post(f"/{self.session_id}", {"janus": "destroy"})
        except Exception as exc:
            LOG.debug("destroy: %s", exc)


SIGNALLERS = {"janus": JanusVideoRoom, "ahoy": AhoyConference}
DEFAULT_URL = {"janus": "http://127.0.0.1:8088/janus", "ahoy": "ws://127.0.0.1:8080/"}


# ==========================================================================
# Media: encode once, replay packets.
# ==========================================================================
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


# ==========================================================================
# Receiving without decoding: count only.
# ==========================================================================
_RX = {"packets": 0}


async def _count_only_handle_rtp_packet(self, packet, arrival_time_ms):
    """Replacement for RTCRtpReceiver._handle_rtp_packet.

    Keeps per-SSRC StreamStatistics (so RTCP receiver reports and getStats()
    still work) and counts; skips REMB estimation, NACK generation,
    depacketizing, the jitter buffer and decoding."""
    if not self._enabled:
        return
    codec = self._RTCRtpReceiver__codecs.get(packet.payload_type)
    if codec is None:
        return
    streams = self._RTCRtpReceiver__remote_streams
    st = streams.get(packet.ssrc)
    if st is None:
        st = streams[packet.ssrc] = _rtcrtpreceiver.StreamStatistics(codec.clockRate)
        if not hasattr(self, "_bench_ssrc_kind"):
            self._bench_ssrc_kind = {}
        self._bench_ssrc_kind[packet.ssrc] = ("rtx" if codec.name.lower() == "rtx"
                                              else getattr(self, "_bench_kind", "?"))
    st.add(packet)
    _RX["packets"] += 1


_rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet = _count_only_handle_rtp_packet


class _SeqTs:
    """What StreamStatistics.add() reads of a packet."""

    __slots__ = ("sequence_number", "timestamp")

    def __init__(self, seq: int, ts: int):
        self.sequence_number = seq
        self.timestamp = ts


_SEQ_TS_SSRC = __import__("struct").Struct("!HII").unpack_from
RX_FAST = {"srtp_errors": 0, "unknown_pt": 0}


RCVBUF_BYTES = 8 << 20


def _grow_rcvbuf(protocol) -> None:
    """A large receive buffer on a load-generator socket, so that a stall of
    the load generator's own loop (the machine is shared) does not drop
    packets in the kernel and count as the SFU's loss.  The SFU's sockets
    are left as the SFU made them."""
    import socket as _socket
    sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
    if sock is None:
        return
    try:
        sock.setsockopt(_socket.SOL_SOCKET, 33, RCVBUF_BYTES)   # SO_RCVBUFFORCE (root)
    except OSError:
        try:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, RCVBUF_BYTES)
        except OSError:
            pass


def install_fast_rx(pc: RTCPeerConnection) -> bool:
    """Count a connected subscriber's RTP straight from its ICE sockets.

    The default path (aioice queue -> DTLS transport coroutine -> unprotect ->
    RtpPacket.parse -> router -> receiver coroutine) costs the load generator
    about as much per packet as the SFU spends forwarding it, and the load
    generator shares the machine.  This wraps the aioice socket protocol's
    datagram_received (as the SFU's engine does) and, per RTP datagram, only
    unprotects it, reads seq/timestamp/SSRC and updates the receiver's own
    StreamStatistics, so aiortc still sends the same RTCP receiver reports
    and the counters read the same.  RTCP, STUN and DTLS take the usual way.
    """
    transceivers = pc.getTransceivers()
    if not transceivers:
        return False
    dtls = transceivers[0].receiver.transport
    srtp = getattr(dtls, "_rx_srtp", None)
    conn = getattr(getattr(dtls, "transport", None), "_connection", None)
    if srtp is None or conn is None:
        return False
    by_pt = {}
    for t in transceivers:
        for c in t._codecs:
            kind = "rtx" if c.mimeType.lower().endswith("/rtx") else t.kind
            by_pt[c.payloadType] = (t.receiver, kind, c.clockRate)
    unprotect = srtp.unprotect
    stats_cls = _rtcrtpreceiver.StreamStatistics

    def on_rtp(data: bytes) -> None:
        try:
            plain = unprotect(data)
        except Exception:
            RX_FAST["srtp_errors"] += 1
            return
        entry = by_pt.get(plain[1] & 0x7F)
        if entry is None:
            RX_FAST["unknown_pt"] += 1
            return
        receiver, kind, clock = entry
        seq, ts, ssrc = _SEQ_TS_SSRC(plain, 2)
        streams = receiver._RTCRtpReceiver__remote_streams
        st = streams.get(ssrc)
        if st is None:
            st = streams[ssrc] = stats_cls(clock)
            if not hasattr(receiver, "_bench_ssrc_kind"):
                receiver._bench_ssrc_kind = {}
            receiver._bench_ssrc_kind[ssrc] = kind
        st.add(_SeqTs(seq, ts))
        _RX["packets"] += 1

    for protocol in list(conn._protocols):
        _grow_rcvbuf(protocol)
        original = protocol.datagram_received

        def datagram_received(data, addr, _original=original):
            if 127 < data[0] < 192 and len(data) > 12 and not 191 < data[1] < 224:
                on_rtp(data)
            else:
                _original(data, addr)

        protocol.datagram_received = datagram_received
    return True


def receiver_counts(receiver) -> dict:
    """{ssrc: (kind, received, extended_highest_seq)} of one receiver."""
    out = {}
    for ssrc, st in receiver._RTCRtpReceiver__remote_streams.items():
        ext = st.cycles + (st.max_seq or 0)
        out[ssrc] = (getattr(receiver, "_bench_ssrc_kind", {}).get(ssrc, "?"), st.packets_received, ext)
    return out


# ==========================================================================
# Peers
# ==========================================================================
async def wait_connected(pc: RTCPeerConnection, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pc.connectionState != "connected":
        if pc.connectionState in ("failed", "closed") or time.monotonic() > deadline:
            raise RuntimeError(f"peer connection {pc.connectionState}")
        await asyncio.sleep(0.05)


@dataclass
class Publisher:
    idx: int
    pc: RTCPeerConnection
    senders: dict            # kind -> RTCRtpSender
    feed_id: Any = None

    def sent(self) -> dict:
        out = {k: s._RTCRtpSender__packet_count for k, s in self.senders.items()}
        out["bytes"] = sum(s._RTCRtpSender__octet_count for s in self.senders.values())
        return out


@dataclass
class Subscriber:
    pub: int
    pc: RTCPeerConnection
    receivers: list = field(default_factory=list)

    def counts(self) -> dict:
        out = {}
        for r in self.receivers:
            out.update(receiver_counts(r))
        return out


async def make_publisher(sig, idx: int, media: dict, timeout: float) -> Publisher:
    pc = RTCPeerConnection(ICE_CONFIG)
    fps = media["fps"]
    vt = ReplayTrack("video", [(d, p) for d, p, _ in media["video"]], VIDEO_CLOCK,
                     VIDEO_CLOCK // fps, media["video_period"])
    at = ReplayTrack("audio", media["audio"], AUDIO_CLOCK, 960, media["audio_period"])
    wanted = {"audio": ("audio/opus",), "video": ("video/vp8", "video/rtx")}
    if getattr(sig, "server_offers_publish", False):
        # the SFU offers (recvonly); we answer sendonly with the replay tracks
        ctx, offer_sdp = await sig.publish_offer(f"pub{idx}")
        await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        ta = tv = None
        for t in pc.getTransceivers():
            # keep only Opus / VP8+rtx (the clip is VP8; the sender uses codecs[0])
            t._codecs = [c for c in t._codecs if c.mimeType.lower() in wanted[t.kind]]
            if not t._codecs:
                raise RuntimeError(f"the SFU offered no usable {t.kind} codec")
            if t.kind == "audio" and ta is None:
                ta = t
            elif t.kind == "video" and tv is None:
                tv = t
        if ta is None or tv is None:
            raise RuntimeError("the SFU's publish offer lacks audio or video")
        pc.addTrack(at)
        pc.addTrack(vt)
        await pc.setLocalDescription(await pc.createAnswer())   # gathers (loopback only)
        info = await sig.publish_answer(ctx, pc.localDescription.sdp)
    else:
        ta = pc.addTransceiver(at, direction="sendonly")
        tv = pc.addTransceiver(vt, direction="sendonly")
        caps_a = RTCRtpSender.getCapabilities("audio").codecs
        caps_v = RTCRtpSender.getCapabilities("video").codecs
        ta.setCodecPreferences([c for c in caps_a if c.mimeType.lower() in wanted["audio"]])
        tv.setCodecPreferences([c for c in caps_v if c.mimeType.lower() in wanted["video"]])
        await pc.setLocalDescription(await pc.createOffer())   # gathers (loopback only)
        info = await sig.publish(f"pub{idx}", pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(info.answer_sdp, "answer"))
    await wait_connected(pc, timeout)
    ready = getattr(sig, "publisher_ready", None)
    if ready is not None:
        await ready(info)
    return Publisher(idx, pc, {"audio": ta.sender, "video": tv.sender}, info.feed_id)


async def make_subscriber(sig, pub: Publisher, timeout: float) -> Subscriber:
    pc = RTCPeerConnection(ICE_CONFIG)
    sub = Subscriber(pub.idx, pc)

    def tag_receivers():
        for t in pc.getTransceivers():
            r = t.receiver
            r._bench_kind = t.kind
            r._bench_ssrc_kind = {}
            sub.receivers.append(r)

    if getattr(sig, "client_offers_subscription", False):
        # client-initiated: recvonly offer from us, answer from the SFU
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        tag_receivers()
        await pc.setLocalDescription(await pc.createOffer())
        answer_sdp = await sig.subscribe_with_offer(pub.feed_id, pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))
    else:
        # SFU-initiated (Janus): offer from the SFU, answer from us
        info = await sig.subscribe(pub.feed_id)
        await pc.setRemoteDescription(RTCSessionDescription(info.offer_sdp, "offer"))
        tag_receivers()
        await pc.setLocalDescription(await pc.createAnswer())
        await sig.start_subscription(info, pc.localDescription.sdp)
    await wait_connected(pc, timeout)
    if RX_FAST.get("enabled", True):
        if not install_fast_rx(pc):
            LOG.warning("fast receive path not installed; using aiortc's")
    else:
        conn = pc.getTransceivers()[0].receiver.transport.transport._connection
        for protocol in list(conn._protocols):
            _grow_rcvbuf(protocol)
    return sub


# ==========================================================================
# CPU sampling
# ==========================================================================
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pids: list[int]) -> tuple[float, float]:
    """(utime, stime) of whole processes (all threads), summed over pids, seconds."""
    user = system = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        user += int(rest[11]) / CLK_TCK
        system += int(rest[12]) / CLK_TCK
    return user, system


def proc_threads(pids: list[int]) -> dict:
    """CPU seconds per thread name (summed over threads of the same name)."""
    out: dict[str, float] = {}
    tids = []
    for pid in pids:
        try:
            tids += [(pid, t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            pass
    for pid, tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                s = f.read()
        except OSError:
            continue
        name = s[s.index("(") + 1:s.rindex(")")]
        rest = s.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(rest[11]) + int(rest[12])) / CLK_TCK
    return out


def proc_rss_kb(pids: list[int], field: str = "VmRSS:") -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    total += int(line.split()[1])
    return total


def proc_majflt(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            total += int(f.read().rsplit(")", 1)[1].split()[9])
    return total


def _socket_inodes(pids: list[int]) -> set[str]:
    """The inodes of the sockets these processes have open."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            pass
    return inodes


def _udp_rows(pids: list[int]):
    """The split rows of /proc/net/udp[6] for these processes' sockets."""
    inodes = _socket_inodes(pids)
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if len(cols) > 12 and cols[9] in inodes:
                        yield cols
        except OSError:
            pass


def udp_drops(pids: list[int]) -> int:
    """Datagrams the kernel dropped on the UDP sockets of these processes
    (receive buffer full), from the `drops` column of /proc/net/udp[6]."""
    return sum(int(cols[12]) for cols in _udp_rows(pids))


def udp_rx_queue_bytes(pids: list[int]) -> int:
    """Bytes waiting in the receive queues of these processes' UDP sockets
    (rx_queue of /proc/net/udp): a growing value means the process is behind."""
    return sum(int(cols[4].split(":")[1], 16) for cols in _udp_rows(pids))


def udp_rcvbuf_errors() -> int:
    """Machine-wide UDP RcvbufErrors (/proc/net/snmp)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def vm_reclaim() -> int:
    """Pages scanned for reclaim, machine-wide (kswapd + direct)."""
    n = 0
    with open("/proc/vmstat") as f:
        for line in f:
            if line.startswith(("pgscan_kswapd ", "pgscan_direct ")):
                n += int(line.split()[1])
    return n


def mlock_self() -> bool:
    """mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT): keep our pages resident
    during page-reclaim storms (see mlock_onfault.c)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(1 | 2 | 4) != 0:
        LOG.warning("mlockall failed: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def calibrate() -> dict:
    """A fixed amount of CPU work, timed, to see machine speed drift between
    runs (C: sha256 of 16 MiB; Python: a 1M-iteration loop).  Best of 3."""
    import hashlib
    buf = b"\x5a" * (16 << 20)
    c = py = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        hashlib.sha256(buf).digest()
        c = min(c, time.perf_counter() - t)
        t = time.perf_counter()
        x = 0
        for i in range(1_000_000):
            x += i & 7
        py = min(py, time.perf_counter() - t)
    return {"sha256_16MiB_ms": round(1e3 * c, 1), "py_loop_1M_ms": round(1e3 * py, 1)}


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def machine_cpu() -> tuple[float, float, float]:
    """(busy, total, steal) jiffies over all cores from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    total = sum(v[:8])
    return total - idle, total, v[7]


class LoopLag:
    """Measures how late the event loop wakes up (load-generator overload)."""

    def __init__(self, period: float = 0.02):
        self.period = period
        self.samples: list[float] = []
        self.recording = False
        self._task = asyncio.create_task(self._run())

    async def _run(self):
        while True:
            t = time.monotonic()
            await asyncio.sleep(self.period)
            if self.recording:
                self.samples.append(time.monotonic() - t - self.period)

    def stats_ms(self) -> dict:
        if not self.samples:
            return {"max": None, "p99": None}
        xs = sorted(self.samples)
        return {"max": round(1e3 * xs[-1], 1), "p99": round(1e3 * xs[int(0.99 * (len(xs) - 1))], 1)}

    def stop(self):
        self._task.cancel()


def snapshot(pubs, subs, server_pids) -> dict:
    return dict(
        t=time.monotonic(),
        server_cpu=proc_cpu(server_pids),
        server_threads=proc_threads(server_pids),
        self_cpu=self_cpu(),
        machine=machine_cpu(),
        late_resets=LATE["resets"],
        server_majflt=proc_majflt(server_pids),
        self_majflt=proc_majflt([os.getpid()]),
        vm_pgscan=vm_reclaim(),
        udp_drops_server=udp_drops(server_pids),
        udp_drops_loadgen=udp_drops([os.getpid()]),
        udp_rcvbuf_errors=udp_rcvbuf_errors(),
        rxq_loadgen=udp_rx_queue_bytes([os.getpid()]),
        rxq_server=udp_rx_queue_bytes(server_pids),
        sent=[p.sent() for p in pubs],
        recv=[s.counts() for s in subs],
    )


def summarize(a: dict, b: dict, pubs, subs, args) -> dict:
    wall = b["t"] - a["t"]
    server_user = b["server_cpu"][0] - a["server_cpu"][0]
    server_sys = b["server_cpu"][1] - a["server_cpu"][1]
    server_cpu = server_user + server_sys
    sent = {"audio": 0, "video": 0, "bytes": 0}
    sent_by_pub = []
    for pa, pb in zip(a["sent"], b["sent"], strict=False):
        d = {k: pb[k] - pa[k] for k in pb}
        sent_by_pub.append(d)
        for k in d:
            sent[k] += d[k]
    recv = {"audio": 0, "video": 0, "rtx": 0}
    expected = {"audio": 0, "video": 0}
    per_sub = []
    for sub, ra, rb in zip(subs, a["recv"], b["recv"], strict=False):
        got = {"audio": 0, "video": 0, "rtx": 0}
        exp = {"audio": 0, "video": 0}
        for ssrc, (kind, n_b, ext_b) in rb.items():
            kind_a, n_a, ext_a = ra.get(ssrc, (kind, 0, ext_b))
            got[kind] = got.get(kind, 0) + n_b - n_a
            if kind in exp:
                exp[kind] += ext_b - ext_a
        pub_sent = sent_by_pub[sub.pub]
        ratio = {k: (got[k] / pub_sent[k] if pub_sent[k] else 0.0) for k in ("audio", "video")}
        per_sub.append(dict(pub=sub.pub, got=got, seq_expected=exp, recv_over_sent=ratio))
        for k in recv:
            recv[k] += got.get(k, 0)
        for k in expected:
            expected[k] += exp[k]
    fwd = recv["audio"] + recv["video"] + recv["rtx"]
    media_recv = recv["audio"] + recv["video"]
    sent_fanout = sum((sent_by_pub[s.pub]["audio"] + sent_by_pub[s.pub]["video"]) for s in subs)
    exp_total = expected["audio"] + expected["video"]
    mb = (b["machine"][0] - a["machine"][0]) / max(1, b["machine"][1] - a["machine"][1])
    threads = {}
    for name, sec in b["server_threads"].items():
        d = sec - a["server_threads"].get(name, 0.0)
        if d > 0:
            threads[name] = round(100 * d / wall, 1)
    return dict(
        sfu=args.label or args.sfu, signalling=args.sfu, publishers=args.publishers, subs_per_pub=args.subs,
        subscribers=len(subs), seconds=round(wall, 2),
        pub_packets_sent={k: sent[k] for k in ("audio", "video")},
        pub_pps=round((sent["audio"] + sent["video"]) / wall, 1),
        pub_payload_kbps_each=round(8 * sent["bytes"] / wall / 1e3 / max(1, len(pubs)), 1),
        fwd_packets=fwd, fwd_by_kind=recv, fwd_pps=round(fwd / wall, 1),
        server_cpu_s=round(server_cpu, 3),
        server_cpu_pct=round(100 * server_cpu / wall, 2),
        server_user_pct=round(100 * server_user / wall, 2),
        server_sys_pct=round(100 * server_sys / wall, 2),
        server_us_per_fwd_pkt=round(1e6 * server_cpu / fwd, 2) if fwd else None,
        server_threads_cpu_pct=dict(sorted(threads.items(), key=lambda kv: -kv[1])[:8]),
        server_rss_kb=proc_rss_kb(args.server_pids),
        loadgen_cpu_pct=round(100 * (b["self_cpu"] - a["self_cpu"]) / wall, 2),
        machine_cpu_pct_of_all_cores=round(100 * mb, 1),
        machine_steal_pct_of_all_cores=round(100 * (b["machine"][2] - a["machine"][2])
                                             / max(1, b["machine"][1] - a["machine"][1]), 2),
        other_cpu_pct=round(100 * mb * (os.cpu_count() or 1)
                            - 100 * server_cpu / wall
                            - 100 * (b["self_cpu"] - a["self_cpu"]) / wall, 1),
        ncpu=os.cpu_count(),
        loss_pct_vs_fanout=round(100 * (1 - media_recv / sent_fanout), 3) if sent_fanout else None,
        loss_pct_seq_gaps=round(100 * (1 - media_recv / exp_total), 3) if exp_total else None,
        worst_sub_recv_over_sent=round(min((min(p["recv_over_sent"].values()) for p in per_sub),
                                           default=0), 4),
        per_sub=per_sub if args.per_sub else None,
    )


# ==========================================================================
# Orchestration
# ==========================================================================
SHORTFALL_MAX = 1.0
"""Runs whose subscribers received more than this % less (or more) than the
publishers sent (x S) inside the window are invalid: with the load generator's
large receive buffers, a load generator that falls behind shows up as a
backlog (not as loss), and the per-packet CPU would then be divided by too few
packets (or, while it catches up, by too many)."""


async def _safe(fn) -> dict:
    try:
        return await fn()
    except Exception as exc:
        LOG.warning("server counters: %s", exc)
        return {}


async def run(args) -> dict:
    calib = calibrate()
    media = build_media(args.media_cache, args.clip_seconds, 640, 480, 30,
                        args.video_kbps * 1000, args.audio_kbps * 1000)
    sig = SIGNALLERS[args.sfu](args.url, args.room, timeout=args.step_timeout)
    await sig.open()
    lag = LoopLag()
    pubs: list[Publisher] = []
    subs: list[Subscriber] = []
    try:
        t0 = time.monotonic()
        for i in range(args.publishers):
            pubs.append(await make_publisher(sig, i, media, args.step_timeout))
        LOG.info("%d publishers connected in %.1fs", len(pubs), time.monotonic() - t0)
        t1 = time.monotonic()
        jobs = [p for p in pubs for _ in range(args.subs)]
        for k in range(0, len(jobs), args.batch):
            batch = jobs[k:k + args.batch]
            subs += await asyncio.gather(*(make_subscriber(sig, p, args.step_timeout) for p in batch))
        LOG.info("%d subscribers connected in %.1fs", len(subs), time.monotonic() - t1)
        # wait (bounded) until every subscriber gets both audio and video
        deadline = time.monotonic() + args.step_timeout
        while True:
            missing = [s for s in subs
                       if {k for k, n, _ in s.counts().values() if n > 0} < {"audio", "video"}]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(missing)} subscribers not receiving audio+video")
            await asyncio.sleep(0.2)
        LOG.info("all receiving; warm-up %.0fs, then measuring %.0fs", args.warmup, args.seconds)
        await asyncio.sleep(args.warmup)
        lag.recording = True
        counters = getattr(sig, "server_counters", None)
        ca = await _safe(counters) if counters else {}
        a = snapshot(pubs, subs, args.server_pids)
        if args.ready_file:       # tells a profiler that the window has started
            with open(args.ready_file, "w") as f:
                f.write(str(time.time()))
        await asyncio.sleep(args.seconds)
        b = snapshot(pubs, subs, args.server_pids)
        cb = await _safe(counters) if counters else {}
        res = summarize(a, b, pubs, subs, args)
        res["server_events"] = sig.server_events()
        # the SFU's own counters over the window (AhoyConference's /metrics), if it has any
        res["server_counters"] = {k: cb[k] - ca.get(k, 0) for k in cb}
        lag.recording = False
        res["loadgen_loop_lag_ms"] = lag.stats_ms()
        res["publisher_late_resets"] = b["late_resets"] - a["late_resets"]
        res["major_faults"] = {"server": b["server_majflt"] - a["server_majflt"],
                               "loadgen": b["self_majflt"] - a["self_majflt"]}
        res["vm_pages_scanned_for_reclaim"] = b["vm_pgscan"] - a["vm_pgscan"]
        # kernel drops on full UDP receive buffers: which side lost the packets
        res["udp_drops"] = {"server": b["udp_drops_server"] - a["udp_drops_server"],
                            "loadgen": b["udp_drops_loadgen"] - a["udp_drops_loadgen"],
                            "machine_rcvbuf_errors": b["udp_rcvbuf_errors"] - a["udp_rcvbuf_errors"]}
        # bytes queued in UDP receive buffers at the window's start and end: a
        # load generator that falls behind shows here (and as a shortfall)
        res["udp_rx_backlog_bytes"] = {"loadgen": [a["rxq_loadgen"], b["rxq_loadgen"]],
                                       "server": [a["rxq_server"], b["rxq_server"]]}
        res["loadgen_mlocked"] = args.mlocked
        res["loadgen_rx_path"] = args.rx_path
        res["loadgen_rx_errors"] = {k: v for k, v in RX_FAST.items() if k != "enabled"}
        res["server_mlocked"] = proc_rss_kb(args.server_pids, "VmLck:") > 0
        res["calibration"] = calib
        why = []
        if res["loss_pct_seq_gaps"] is not None and res["loss_pct_seq_gaps"] > 0.5:
            why.append("loss>0.5%")
        if res["publisher_late_resets"]:
            why.append("publisher schedule resets")
        if res["loss_pct_vs_fanout"] is not None and abs(res["loss_pct_vs_fanout"]) > SHORTFALL_MAX:
            why.append(f"|receive shortfall|>{SHORTFALL_MAX}%")
        if (res["loadgen_loop_lag_ms"]["max"] or 0) > 250:
            why.append("event-loop lag>250ms")
        if sum(res["major_faults"].values()) > 100:
            why.append("major page faults>100")
        res["valid"] = not why
        res["invalid_reasons"] = why
        res["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        res["versions"] = {"aiortc": _aiortc_version, "av": av.__version__,
                           "python": sys.version.split()[0]}
        res["setup_s"] = round(t1 - t0 + (time.monotonic() - t1) - args.warmup - args.seconds, 1)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from fields import FORWARDING_FIELDS
        missing = [k for k in FORWARDING_FIELDS if k not in res]
        if missing:
            raise RuntimeError(f"result lacks fields {missing}")
        return res
    finally:
        lag.stop()
        await asyncio.gather(*(x.pc.close() for x in pubs + subs), return_exceptions=True)
        await sig.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sfu", default="janus", choices=sorted(SIGNALLERS))
    ap.add_argument("--label", help="name of the server in the result (default: --sfu)")
    ap.add_argument("--url", help=f"signalling URL (default: {DEFAULT_URL})")
    ap.add_argument("--room", default="1234", help="room / conference id")
    ap.add_argument("-P", "--publishers", type=int, default=1)
    ap.add_argument("-S", "--subs", type=int, default=1, help="subscribers per publisher")
    ap.add_argument("-T", "--seconds", type=float, default=30.0, help="measurement window")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--server-pid", help="SFU process id(s) to sample, comma-separated "
                    "(default: read --server-pid-file)")
    ap.add_argument("--server-pid-file")
    ap.add_argument("--video-kbps", type=int, default=1000)
    ap.add_argument("--audio-kbps", type=int, default=32)
    ap.add_argument("--clip-seconds", type=int, default=10)
    ap.add_argument("--media-cache", default="/tmp/ahoy_bench/media_cache.pkl")
    ap.add_argument("--batch", type=int, default=5, help="subscribers set up concurrently")
    ap.add_argument("--step-timeout", type=float, default=30.0)
    ap.add_argument("--max-run", type=float, default=300.0, help="hard limit for the whole run, s")
    ap.add_argument("--per-sub", action="store_true", help="include per-subscriber detail")
    ap.add_argument("--no-mlock", action="store_true",
                    help="do not mlockall() the load generator (see mlock_onfault.c)")
    ap.add_argument("--rx-path", choices=("fast", "aiortc"), default="fast",
                    help="subscribers count RTP straight from the socket (fast, default) or "
                    "after aiortc's receive pipeline (aiortc, as janus-bench did)")
    ap.add_argument("--ready-file", help="write this file when the measurement window starts")
    ap.add_argument("--out", help="append the JSON result to this file")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.url is None:
        args.url = DEFAULT_URL[args.sfu]
    os.makedirs(os.path.dirname(os.path.abspath(args.media_cache)), exist_ok=True)
    if args.server_pid is None:
        if not args.server_pid_file:
            ap.error("--server-pid or --server-pid-file is required")
        with open(args.server_pid_file) as f:
            args.server_pid = f.read().strip()
    args.server_pids = [int(x) for x in str(args.server_pid).split(",") if x.strip()]
    args.mlocked = False if args.no_mlock else mlock_self()
    RX_FAST["enabled"] = args.rx_path == "fast"
    res = asyncio.run(asyncio.wait_for(run(args), args.max_run))
    line = json.dumps(res)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
