"""The load's peers: a publisher that replays the clip and a subscriber that
counts, each one aiortc peer connection, set up through an SFU's signalling
(L{sfu.SfuSignalling}).

Loopback only: the only ICE host candidate is 127.0.0.1 (aioice normally
skips it and would use eth0), and C{RTCConfiguration(iceServers=[])} keeps
aiortc from using its default public STUN server."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from clip import AUDIO_CLOCK, VIDEO_CLOCK, ReplayTrack
from rxcount import RX_FAST, _grow_rcvbuf, install_fast_rx, receiver_counts

LOG = logging.getLogger("load")
LOOPBACK = "127.0.0.1"
aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=False: [LOOPBACK]
ICE_CONFIG = RTCConfiguration(iceServers=[])


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
