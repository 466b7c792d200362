"""
One aiortc member of the loss benchmark (bench/lossbench.py), in a process
of its own inside a namespace of the network test bed (tests/netbed.py).

    python bench/losspeer.py URL ROOM NAME --publish [--fps 30] --host-address A
    python bench/losspeer.py URL ROOM NAME --subscribe-to NAME --host-address A
    ... --janus http://203.0.113.10:8088/janus --room 1234 (Janus VideoRoom instead)

The publisher encodes a moving test picture live (tests/mediaclients.py,
VP8 from aiortc's encoder, so a PLI gets a keyframe) and a tone; the
subscriber decodes it.  Every second each prints one JSON line of
cumulative counters:

 - publisher: C{plis} (PLI/FIR that reached its video sender), C{nacks}
   (sequence numbers asked for again), C{frames} sent;
 - subscriber: C{frames} decoded, C{freezes} and C{freeze_s} (a freeze is
   an interval between two decoded frames longer than
   max(3 x the mean of the last 30 intervals, that mean + 150 ms), the
   definition of WebRTC's C{freezeCount}), C{expected} and C{received}
   video packets (distinct sequence numbers of the primary SSRC, or carried
   by an RTX packet: what is still missing is loss after repair), C{nacks}
   it sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections import deque

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def report(**event) -> None:
    """One line on stdout."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class FreezeMeter:
    """Freezes in a sequence of frame arrival times (WebRTC's freeze definition)."""

    def __init__(self):
        self.last: float | None = None
        self.intervals: deque = deque(maxlen=30)
        self.freezes = 0
        self.freezeSeconds = 0.0

    def frame(self, now: float) -> None:
        """A frame was decoded at C{now}."""
        if self.last is not None:
            interval = now - self.last
            if len(self.intervals) >= 5:
                mean = sum(self.intervals) / len(self.intervals)
                if interval > max(3 * mean, mean + 0.15):
                    self.freezes += 1
                    self.freezeSeconds += interval
            self.intervals.append(interval)
        self.last = now


class SeqCounter:
    """Distinct sequence numbers received, unwrapped: expected − received is loss."""

    def __init__(self):
        self.first: int | None = None
        self.highest = 0
        self.seen: set[int] = set()

    def add(self, seq: int) -> None:
        if self.first is None:
            self.first = self.highest = seq
        ext = self.highest + (((seq - self.highest + 0x8000) & 0xFFFF) - 0x8000)
        self.highest = max(self.highest, ext)
        self.seen.add(ext)

    def counts(self, settle: int = 60) -> tuple[int, int]:
        """C{(expected, received)} up to C{settle} packets before the highest (still under repair)."""
        if self.first is None:
            return 0, 0
        end = self.highest - settle
        expected = max(0, end - self.first + 1)
        return expected, sum(1 for s in self.seen if s <= end)


async def publish(client, fps: int, janus=None, name: str = "") -> None:
    from tests.mediaclients import Publisher

    publisher = Publisher(tag=5, fps=fps)
    nacks = [0]
    if janus is None:
        await publisher.publishVia(client)
    else:  # Janus answers our offer
        from aiortc import RTCSessionDescription

        pc = publisher.pc
        pc.addTrack(publisher.audio)
        pc.addTrack(publisher.video)
        await pc.setLocalDescription(await pc.createOffer())
        info = await janus.publish(name, pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=info.answer_sdp, type="answer"))
        for transceiver in pc.getTransceivers():
            publisher._instrument(transceiver.sender)
    sender = publisher.videoSender()
    original = sender._retransmit

    async def retransmit(seq):
        nacks[0] += 1
        await original(seq)

    sender._retransmit = retransmit
    while True:
        report(t=time.time(), plis=publisher.keyframeRequests, nacks=nacks[0],
               frames=len(publisher.video.sent))
        await asyncio.sleep(1)


async def janusFeed(janus, name: str) -> int:
    """The feed id of the Janus publisher called C{name}, once it publishes."""
    peer = await janus._new_peer()
    for _ in range(600):
        res = await peer.request({"request": "listparticipants", "room": janus.room})
        for p in res.get("participants", []):
            if p.get("display") == name and p.get("publisher"):
                return p["id"]
        await asyncio.sleep(0.2)
    raise RuntimeError(f"no Janus publisher {name!r}")


async def subscribe(client, joined: dict, name: str, janus=None) -> None:
    from tests.mediaclients import Subscriber

    if janus is not None:
        return await receive(await janusSubscription(janus, name))
    target = next((m for m in joined["members"] if m["name"] == name), None)
    while target is None or not target["video"]["available"]:
        indication = await client.expect(timeout=120)
        member = indication.get("member", {})
        if indication["messageType"] in ("CONFERENCE_JOIN_indication", "MEDIA_indication") \
                and member.get("name") == name:
            target = {**member, **{k: indication[k] for k in ("audio", "video") if k in indication}}
            if "video" not in target:
                target["video"] = member.get("video", {"available": False})
    subscriber = measured(Subscriber())
    await subscriber.subscribeVia(client, target["memberID"])
    await receive(subscriber)


async def janusSubscription(janus, name: str):
    """A subscriber to the Janus publisher C{name} (Janus offers, we answer)."""
    from tests.mediaclients import Subscriber

    sub = await janus.subscribe(await janusFeed(janus, name))
    subscriber = measured(Subscriber())
    await janus.start_subscription(sub, await subscriber.answer(sub.offer_sdp))
    return subscriber


def measured(subscriber):
    """Time every decoded frame of C{subscriber} (its C{meter})."""
    subscriber.meter = meter = FreezeMeter()

    class Frames(list):
        def append(self, item):
            meter.frame(time.monotonic())
            super().append(item)

    subscriber.frames = Frames(subscriber.frames)
    return subscriber


async def receive(subscriber) -> None:
    """Report the subscriber's counters every second, forever."""
    meter = subscriber.meter
    seqs = SeqCounter()
    primary = subscriber.offeredVideoSsrcs()[0]
    rtxSeqs: list[int] = []
    dtls = subscriber.pc.getTransceivers()[0].receiver.transport
    logged = dtls._handle_rtp_data

    async def rtp(data, arrival_time_ms):  # RTX (RFC 4588): the original number leads the payload
        if len(data) >= 14 and int.from_bytes(data[8:12], "big") not in (primary, 0):
            length = 12 + 4 * (data[0] & 0x0F)
            if data[0] & 0x10 and len(data) >= length + 4:
                length += 4 + 4 * int.from_bytes(data[length + 2:length + 4], "big")
            if (data[1] & 0x7F) in rtxTypes and len(data) >= length + 2:
                rtxSeqs.append(int.from_bytes(data[length:length + 2], "big"))
        await logged(data, arrival_time_ms)

    rtxTypes = {int(pt) for pt in re.findall(r"^a=rtpmap:(\d+) rtx/", subscriber.pc.remoteDescription.sdp,
                                             re.M)}
    dtls._handle_rtp_data = rtp
    done = 0
    nacks = [0]
    receiver = subscriber.receiver("video")
    original = receiver._send_rtcp_nack

    async def sendNack(ssrc, lost):
        nacks[0] += len(lost)
        await original(ssrc, lost)

    receiver._send_rtcp_nack = sendNack
    while True:
        log = subscriber.seqs
        for ssrc, seq, _ts in log[done:]:
            if ssrc == primary:
                seqs.add(seq)
        done = len(log)
        for seq in rtxSeqs:
            seqs.add(seq)
        rtxSeqs.clear()
        if done > 100_000:  # keep memory flat
            del log[:done]
            done = 0
        expected, received = seqs.counts()
        report(t=time.time(), frames=len(subscriber.frames), freezes=meter.freezes,
               freeze_s=round(meter.freezeSeconds, 3), expected=expected, received=received,
               nacks=nacks[0])
        await asyncio.sleep(1)


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("room")
    parser.add_argument("name")
    parser.add_argument("--publish", action="store_true")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--subscribe-to")
    parser.add_argument("--host-address", required=True)
    parser.add_argument("--janus", help="Janus's HTTP API (VideoRoom) instead of ours")
    parser.add_argument("--room-id", type=int, default=1234, help="the Janus room")
    args = parser.parse_args(argv)

    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: [args.host_address]
    if args.janus:
        from urllib.parse import urlsplit

        import sfu
        from sfu_janus import JanusVideoRoom

        sfu.ALLOWED_HOSTS.add(urlsplit(args.janus).hostname)
        janus = JanusVideoRoom(args.janus, args.room_id, timeout=60)
        await janus.open()
        if args.publish:
            await publish(None, args.fps, janus, args.name)
        else:
            await subscribe(None, {}, args.subscribe_to, janus)
        return
    from ahoyconference.client import ProtocolClient

    client = await ProtocolClient.connect(args.url, timeout=60)
    if args.publish:
        await client.create(args.room)
    joined = await client.join(args.room, args.name)
    if args.publish:
        await publish(client, args.fps)
    else:
        await subscribe(client, joined, args.subscribe_to)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
