"""Janus VideoRoom over its HTTP REST + long-poll transport, for bench/load.py."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from sfu import PublisherInfo, SfuSignalling, SubscriberInfo, http_json

LOG = logging.getLogger("load")


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
        info = await http_json("GET", self.url + "/info")
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
        res = await http_json("POST", self.o.url + path, body)
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
                evs = await http_json("GET", f"{url}?maxev=10&rid={int(time.time() * 1000)}")
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
