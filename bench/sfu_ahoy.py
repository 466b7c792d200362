"""AhoyConference's signalling for bench/load.py: the package's protocol
client (L{ahoyconference.client.ProtocolClient}, docs/protocol.md)."""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from urllib.parse import urlsplit

from sfu import PublisherInfo, SfuSignalling, SubscriberInfo, http_json

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ahoyconference.client import ProtocolClient  # noqa: E402

LOG = logging.getLogger("load")

#: Indications the load does not need: counted, not kept (memory stays flat).
UNKEPT = ("CONFERENCE_JOIN_indication", "CONFERENCE_LEAVE_indication")


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
        self.watcher: ProtocolClient | None = None
        self._clients: list[ProtocolClient] = []

    async def _client(self) -> ProtocolClient:
        c = await ProtocolClient.connect(self.url, timeout=self.timeout,
                                         keep=lambda m: m.get("messageType") not in UNKEPT,
                                         ping_interval=None, compression=None)
        self._clients.append(c)
        return c

    async def open(self) -> None:
        self.watcher = await self._client()
        created = await self.watcher.request("CONFERENCE_CREATE_request", conferenceID=self.room)
        if created.get("status") not in (200, 409, 486):  # 486: it exists (protocol.md 4.1)
            raise RuntimeError(f"CONFERENCE_CREATE_request failed: {created}")
        await self.watcher.join(self.room, "bench-watcher")
        LOG.info("ahoy: room %s, watcher %s", self.room, self.watcher.memberID[:12])

    async def publish_offer(self, display: str):
        c = await self._client()
        await c.join(self.room, display)
        offer = await c.share(audio=True, video=True, maxVideoBitrate=2000)
        return (c, offer), offer["sdp"]

    async def publish_answer(self, ctx, answer_sdp: str) -> PublisherInfo:
        c, offer = ctx
        await c.respond(offer, answer_sdp)
        return PublisherInfo(feed_id=c.memberID, answer_sdp=None, ctx=c)

    async def publisher_ready(self, info: PublisherInfo) -> None:
        state = {"audio": False, "video": False}
        while not all(state.values()):
            m = await self.watcher.expect("MEDIA_indication")
            if m.get("member", {}).get("memberID") == info.feed_id:
                for k in state:
                    if isinstance(m.get(k), dict) and "available" in m[k]:
                        state[k] = bool(m[k]["available"])

    async def subscribe(self, feed_id) -> SubscriberInfo:
        c = await self._client()
        await c.join(self.room, "sub")
        offer = await c.requestMedia(feed_id)
        return SubscriberInfo(offer_sdp=offer["sdp"], ctx=(c, offer))

    async def start_subscription(self, sub: SubscriberInfo, answer_sdp: str) -> None:
        c, offer = sub.ctx
        await c.respond(offer, answer_sdp)

    async def server_counters(self) -> dict:
        """The server's own forwarding counters (GET /metrics, Prometheus text)."""
        u = urlsplit(self.url)
        text = await http_json("GET", f"http://{u.hostname}:{u.port}/metrics", raw=True, timeout=10)
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
                if k and (k.endswith("_indication") or k == "ERROR_response"):
                    out[k] = out.get(k, 0) + v
        return out

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._clients), return_exceptions=True)
        self._clients.clear()
