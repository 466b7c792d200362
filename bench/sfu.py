"""What bench/load.py needs from an SFU's signalling (L{SfuSignalling}), the
records it passes around, and a dependency-free HTTP/1.0 JSON request for
loopback servers (Janus's REST API, AhoyConference's /metrics)."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

LOOPBACK = "127.0.0.1"
#: Hosts http_json may talk to: loopback, plus the network test bed's server
#: address (bench/losspeer.py adds it; a documentation address inside the bed).
ALLOWED_HOSTS = {LOOPBACK}


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


async def http_json(method: str, url: str, body: dict | None = None,
                     timeout: float = 60.0, raw: bool = False) -> Any:
    """A minimal HTTP/1.0 JSON request (one connection per request, loopback
    only), so that the load generator needs no HTTP client library."""
    from urllib.parse import urlsplit
    u = urlsplit(url)
    if u.hostname not in ALLOWED_HOSTS:
        raise ValueError(f"refusing URL {url}: not loopback (nor the test bed's server)")
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
