#!/usr/bin/env python3
"""One load-generator process of bench/capacity.py: several rooms, driven over stdin.

bench/capacity.py spreads the load of R rooms over a few of these processes
(one Python thread each, so the load generator can use both cores) and
keeps their measurement windows aligned.  Everything a room is made of is
bench/load.py's (and its modules'): the signalling classes, the cached VP8 +
Opus clip, L{peers.make_publisher} / L{peers.make_subscriber}, the counting
subscribers, L{load.snapshot} and L{load.summarize}; this file only adds the
command loop.

Commands, one JSON object per line on stdin:

  {"cmd": "room", "room": ID}   set up room ID (1 publisher x S subscribers)
                                in the background; answered by a "room" event
  {"cmd": "start"}              start the measurement window ("started")
  {"cmd": "stop"}               end it; answered by a "result" event
  {"cmd": "quit"}               hang up every peer and exit

Events, one JSON object per line on stdout: "hello" (media loaded), "room"
(ok, node URL, redirects followed, setup seconds, or the error), "started",
"result" (the counters of every room that came up, added up), "error".
Loopback only (peers.py: the only ICE host address is 127.0.0.1, no STUN).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import load  # noqa: E402  (patches aiortc's receiver for counting, as in load.py)
from clip import LATE, build_media  # noqa: E402
from peers import make_publisher, make_subscriber  # noqa: E402
from procstats import LoopLag, mlock_self  # noqa: E402
from rxcount import RX_FAST  # noqa: E402

LOG = logging.getLogger("load")


def emit(event: str, **fields) -> None:
    """One event line for the orchestrator."""
    sys.stdout.write(json.dumps(dict(fields, event=event)) + "\n")
    sys.stdout.flush()


class Room:
    """One room of the load: its signalling, its publisher and its subscribers."""

    def __init__(self, room):
        self.room = room
        self.sig = None
        self.pub = None
        self.subs: list = []
        self.ok = False


class Worker:
    """The rooms of this process and the measurement window over all of them."""

    def __init__(self, args):
        self.args = args
        self.media = None
        self.rooms: dict = {}
        self.tasks: list[asyncio.Task] = []
        self.a = None
        self.lag = None
        self.lateAtStart = 0

    async def setUp(self, rid) -> None:
        """Room rid: create it (through the URL given: a cluster places it and
        the joins follow the 302), publish, subscribe S times, wait until every
        subscriber receives audio and video."""
        args = self.args
        room = self.rooms[rid] = Room(rid)
        t0 = time.monotonic()
        try:
            room.sig = load.SIGNALLERS[args.sfu](args.url, rid, timeout=args.step_timeout)
            await room.sig.open()
            room.pub = await make_publisher(room.sig, 0, self.media, args.step_timeout)
            room.subs = list(await asyncio.gather(
                *(make_subscriber(room.sig, room.pub, args.step_timeout) for _ in range(args.subs))))
            deadline = time.monotonic() + args.step_timeout
            while any({k for k, n, _ in s.counts().values() if n > 0} < {"audio", "video"}
                      for s in room.subs):
                if time.monotonic() > deadline:
                    raise RuntimeError("subscribers not receiving audio+video")
                await asyncio.sleep(0.2)
            room.ok = True
            watcher = getattr(room.sig, "watcher", None)
            redirects = list(watcher.redirects) if watcher is not None else []
            emit("room", room=rid, ok=True, node=redirects[-1] if redirects else args.url,
                 redirects=redirects, setup_s=round(time.monotonic() - t0, 2))
        except Exception as e:
            emit("room", room=rid, ok=False, error=f"{type(e).__name__}: {e}"[:300],
                 setup_s=round(time.monotonic() - t0, 2))

    def _measured(self) -> tuple[list, list]:
        """The publishers and subscribers of the rooms that came up, numbered
        so that L{load.summarize} finds each subscriber's publisher."""
        pubs, subs = [], []
        for room in self.rooms.values():
            if not room.ok:
                continue
            room.pub.idx = len(pubs)
            pubs.append(room.pub)
            for s in room.subs:
                s.pub = room.pub.idx
                subs.append(s)
        return pubs, subs

    def start(self) -> None:
        pubs, subs = self._measured()
        self.lag.recording = True
        self.lateAtStart = LATE["resets"]
        self.a = load.snapshot(pubs, subs, self.args.server_pids)
        emit("started", rooms=len(pubs))

    def stop(self) -> None:
        pubs, subs = self._measured()
        b = load.snapshot(pubs, subs, self.args.server_pids)
        self.lag.recording = False
        res = load.summarize(self.a, b, pubs, subs, self.args)
        per_sub = res.pop("per_sub") or []
        emit("result", rooms=len(pubs), subscribers=len(subs), seconds=res["seconds"],
             pub_sent=sum(res["pub_packets_sent"].values()),
             fwd_packets=res["fwd_packets"], fwd_by_kind=res["fwd_by_kind"],
             media_recv=sum(p["got"]["audio"] + p["got"]["video"] for p in per_sub),
             seq_expected=sum(p["seq_expected"]["audio"] + p["seq_expected"]["video"]
                              for p in per_sub),
             sent_fanout=sum(b["sent"][s.pub]["audio"] + b["sent"][s.pub]["video"]
                             - self.a["sent"][s.pub]["audio"] - self.a["sent"][s.pub]["video"]
                             for s in subs),
             worst_sub_recv_over_sent=res["worst_sub_recv_over_sent"],
             loadgen_cpu_pct=res["loadgen_cpu_pct"],
             loop_lag_ms=self.lag.stats_ms(),
             publisher_late_resets=LATE["resets"] - self.lateAtStart,
             udp_drops_loadgen=b["udp_drops_loadgen"] - self.a["udp_drops_loadgen"],
             rxq_loadgen=[self.a["rxq_loadgen"], b["rxq_loadgen"]],
             rx_errors={k: v for k, v in RX_FAST.items() if k != "enabled"})

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        peers = [p.pc for r in self.rooms.values() for p in ([r.pub] if r.pub else []) + r.subs]
        await asyncio.gather(*(pc.close() for pc in peers), return_exceptions=True)
        await asyncio.gather(*(r.sig.close() for r in self.rooms.values() if r.sig),
                             return_exceptions=True)

    async def run(self) -> None:
        args = self.args
        self.media = build_media(args.media_cache, args.clip_seconds, 640, 480, 30,
                                 args.video_kbps * 1000, args.audio_kbps * 1000)
        self.lag = LoopLag()
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        emit("hello", pid=os.getpid(), mlocked=args.mlocked)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break           # the orchestrator went away: stop too
                cmd = json.loads(line)
                what = cmd.get("cmd")
                if what == "room":
                    self.tasks.append(asyncio.create_task(self.setUp(cmd["room"])))
                elif what == "start":
                    self.start()
                elif what == "stop":
                    self.stop()
                elif what == "quit":
                    break
                else:
                    emit("error", error=f"unknown command {what!r}")
        finally:
            self.lag.stop()
            await self.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sfu", required=True, choices=sorted(load.SIGNALLERS))
    ap.add_argument("--url", required=True, help="signalling URL (a cluster: its first node)")
    ap.add_argument("-S", "--subs", type=int, default=4, help="subscribers per room")
    ap.add_argument("--server-pid", required=True, help="the target's process ids, comma-separated")
    ap.add_argument("--step-timeout", type=float, default=30.0)
    ap.add_argument("--video-kbps", type=int, default=1000)
    ap.add_argument("--audio-kbps", type=int, default=32)
    ap.add_argument("--clip-seconds", type=int, default=10)
    ap.add_argument("--media-cache", default="/tmp/ahoy_bench/media_cache.pkl")
    ap.add_argument("--no-mlock", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s capworker %(levelname)s %(message)s")
    args.server_pids = [int(x) for x in args.server_pid.split(",") if x.strip()]
    # what load.summarize reads of its command line
    args.label, args.publishers, args.per_sub = args.sfu, 0, True
    args.mlocked = False if args.no_mlock else mlock_self()
    RX_FAST["enabled"] = True
    os.makedirs(os.path.dirname(os.path.abspath(args.media_cache)), exist_ok=True)
    asyncio.run(Worker(args).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
