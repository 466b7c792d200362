#!/usr/bin/env python3
"""
Churn soak: many connect / create / join / share / leave / disconnect cycles
against a real C{twistd ahoyconference} subprocess, then check that the
server process is back where it started: resident memory, open file
descriptors, peer connections (C{/metrics} C{ahoy_peer_connections}),
members, conferences and asyncio tasks.

Cycle kinds (cycle C{i}):
 - every C{--media-every}-th: a full media cycle in the permanent room
   C{churn-media}: a real aiortc publisher (ICE + DTLS up, a moving picture
   and a tone) and a real aiortc subscriber that receives its packets; then
   both leave (one with C{CONFERENCE_LEAVE_request}, one by closing).
 - the others are signalling cycles in a room of their own,
   C{churn-<i>} (created, then removed by the idle timeout): the server
   makes its publish offer (a peer connection, ICE gathering, a DTLS
   certificate), and then by C{i % 3}: (0) a canned answer is applied (the
   server starts ICE toward a local sink socket that never answers) and the
   client leaves; (1) the client leaves without answering; (2) it answers
   and vanishes (the socket is closed without a leave).

The server's asyncio task count comes from a probe: the server runs as
C{python bench/churn.py --serve-twistd <twistd args>}, which is
C{twisted.scripts.twistd.run()} (what the C{twistd} script runs) plus a
C{SIGUSR2} handler that writes a few counts to C{$AHOY_PROBE}.

Everything stays on 127.0.0.1.  Usage:

    .venv/bin/python bench/churn.py --cycles 10000 --media-every 20 --json out.json

The suite runs a small version (C{tests/test_churn.py}).  Figures of the
long run are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from ahoyconference.client import ProtocolClient  # noqa: E402
from tests.serverprocess import ServerProcess  # noqa: E402


async def connect(url: str) -> ProtocolClient:
    """A member's connection (the package's protocol client)."""
    return await ProtocolClient.connect(url, timeout=30)


# -- the server side: twistd with a probe ---------------------------------------

def serveTwistd(argv: list[str]) -> None:
    """Run twistd (as its console script does), answering SIGUSR2 with counts."""
    import gc
    import threading

    path = os.environ["AHOY_PROBE"]

    def probe(signum, frame):
        from twisted.internet import reactor

        loop = reactor._asyncioEventloop
        names = ("RTCPeerConnection", "RTCDtlsTransport", "RTCIceTransport", "Connection",
                 "StunProtocol", "InStream", "OutStream", "Session", "Member")
        counts = dict.fromkeys(names, 0)
        collected = gc.collect()
        for obj in gc.get_objects():
            name = type(obj).__name__
            if name in counts:
                counts[name] += 1
        result = {"tasks": len(asyncio.all_tasks(loop)), "threads": threading.active_count(),
                  "objects": counts, "gc_collected": collected, "time": time.time()}
        with open(path + ".tmp", "w") as f:
            json.dump(result, f)
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR2, probe)
    sys.argv = ["twistd"] + argv
    from twisted.scripts.twistd import run

    run()


def _dieWithParent() -> None:
    """In the child: get SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class ChurnServer(ServerProcess):
    """The twistd subprocess (tests/serverprocess.py) and what can be read of it from outside."""

    @classmethod
    def inWorkdir(cls, workdir: str) -> ChurnServer:
        probePath = os.path.join(workdir, "probe.json")
        server = cls.twistd(
            workdir,
            '[server]\nlog_level = "warn"\n'
            "[limits]\njoin_rate = 0\nchat_rate = 0\nmax_connections_per_ip = 0\n"
            "max_conferences_per_client = 0\npassword_failures = 0\nidle_timeout = 2\n"
            "ice_timeout = 10\n"
            '[ice]\nhost_addresses = ["127.0.0.1"]\n'
            '[[rooms]]\nid = "churn-media"\n',
            twistdArgs=["-l", os.path.join(workdir, "twistd.log")], name="churn",
            command=[sys.executable, os.path.abspath(__file__), "--serve-twistd"],
            env={"AHOY_PROBE": probePath}, preexec_fn=_dieWithParent)
        server.probePath = probePath
        server.log = os.path.join(workdir, "twistd.log")
        return server

    def rssKiB(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    async def metrics(self) -> dict[str, float]:
        """The /metrics figures this soak looks at."""
        def fetch():
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
                return r.read().decode()

        text = await asyncio.get_running_loop().run_in_executor(None, fetch)
        out: dict[str, float] = {}
        for line in text.splitlines():
            m = re.match(r"^(ahoy_\w+?)(?:_total)?(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(2))
        return out

    async def probe(self) -> dict:
        """The server's own counts (asyncio tasks, live aiortc objects)."""
        before = os.path.getmtime(self.probePath) if os.path.exists(self.probePath) else 0
        self.signal(signal.SIGUSR2)
        for _ in range(200):
            await asyncio.sleep(0.05)
            if os.path.exists(self.probePath) and os.path.getmtime(self.probePath) != before:
                with open(self.probePath) as f:
                    return json.load(f)
        raise RuntimeError("the probe did not answer")

    async def figures(self) -> dict:
        metrics = await self.metrics()
        probe = await self.probe()
        return {
            "rss_kib": self.rssKiB(), "fds": self.fds(), "tasks": probe["tasks"],
            "threads": probe["threads"], "objects": probe["objects"],
            "peer_connections": metrics.get("ahoy_peer_connections", 0),
            "members": metrics.get("ahoy_members", 0),
            "connections": metrics.get("ahoy_connections", 0),
            "conferences": metrics.get("ahoy_conferences", 0),
            "tracebacks": _tracebacks(self.log),
        }


def _tracebacks(log: str) -> int:
    try:
        with open(log, errors="replace") as f:
            return sum(1 for line in f if "Traceback" in line)
    except FileNotFoundError:
        return 0


class Sink(asyncio.DatagramProtocol):
    """A UDP socket on 127.0.0.1 that swallows the server's ICE checks."""

    received = 0

    def datagram_received(self, data, addr):
        self.received += 1


class Churn:
    """The cycles, and the counts of what they did."""

    def __init__(self, server: ServerProcess, mediaEvery: int):
        self.server = server
        self.mediaEvery = mediaEvery
        self.canned: str | None = None
        self.done = {"signalling": 0, "media": 0, "answered": 0, "vanished": 0}
        self.failures: list[str] = []

    async def setUp(self) -> None:
        self.sinkTransport, self.sink = await asyncio.get_running_loop().create_datagram_endpoint(
            Sink, local_addr=("127.0.0.1", 0))
        self.sinkPort = self.sinkTransport.get_extra_info("sockname")[1]
        await self.cannedAnswer()

    async def cannedAnswer(self) -> None:
        """A real answer to a real offer, its candidate moved to the sink."""
        from tests.mediaclients import Publisher

        client = await connect(self.server.url)
        await client.join("churn-media", "canned")
        offer = await client.share(audio=True, video=True)
        publisher = Publisher()
        answer = await publisher.answer(offer["sdp"])
        await publisher.close()
        await client.close()
        self.canned = re.sub(r"^(a=candidate:\S+ \d+ \S+ \d+ 127\.0\.0\.1) \d+ ",
                             rf"\1 {self.sinkPort} ", answer, flags=re.M)

    async def cycle(self, i: int) -> None:
        try:
            if self.mediaEvery and i % self.mediaEvery == 0:
                await asyncio.wait_for(self.mediaCycle(i), 90)
                self.done["media"] += 1
            else:
                await asyncio.wait_for(self.signallingCycle(i), 60)
                self.done["signalling"] += 1
        except Exception as e:
            self.failures.append(f"cycle {i}: {e!r}")

    async def signallingCycle(self, i: int) -> None:
        client = await connect(self.server.url)
        try:
            room = f"churn-{i}"
            r = await client.request("CONFERENCE_CREATE_request", conferenceID=room)
            assert r["status"] == 200, r
            r = await client.request("CONFERENCE_JOIN_request", conferenceID=room, name=f"n{i}")
            assert r["status"] == 200, r
            r = await client.request("MEDIA_SHARE_request", audio=True, video=True)
            assert r["status"] == 200, r
            offer = await client.expect("MEDIA_RECEIVE_request")
            kind = i % 3
            if kind in (0, 2):
                await client.respond(offer, self.canned)
                self.done["answered"] += 1
                r = await client.request("CHAT_MESSAGE_request", message={"text": "x"})
                assert r["status"] == 200, r  # the answer was taken (no ERROR_response first)
                assert not any(m["messageType"] == "ERROR_response" for m in client.inbox), \
                    client.inbox
            if kind == 2:
                client.abort()
                self.done["vanished"] += 1
                return
            r = await client.request("CONFERENCE_LEAVE_request")
            assert r["status"] == 200, r
        finally:
            await client.close()

    async def mediaCycle(self, i: int) -> None:
        from tests.mediaclients import Publisher, Subscriber

        pub = await connect(self.server.url)
        sub = await connect(self.server.url)
        peers = []
        try:
            r = await pub.request("CONFERENCE_JOIN_request", conferenceID="churn-media",
                                  name=f"p{i}")
            assert r["status"] == 200, r
            memberID = r["memberID"]
            r = await sub.request("CONFERENCE_JOIN_request", conferenceID="churn-media",
                                  name=f"s{i}")
            assert r["status"] == 200, r
            publisher = Publisher(tag=i % 16)
            peers.append(publisher)
            await publisher.publishVia(pub)
            while True:
                m = await sub.expect("MEDIA_indication", member={"name": f"p{i}",
                                                                  "memberID": memberID})
                if m["video"]["available"]:
                    break
            subscriber = Subscriber()
            peers.append(subscriber)
            await subscriber.subscribeVia(sub, memberID)
            deadline = time.monotonic() + 30
            while sum(subscriber.ssrcs.values()) < 20:  # RTP through DTLS-SRTP
                if time.monotonic() > deadline:
                    raise TimeoutError("no media at the subscriber")
                await asyncio.sleep(0.05)
            if i % 2:
                await pub.request("CONFERENCE_LEAVE_request")
        finally:
            for peer in peers:
                await peer.close()
            await pub.close()
            await sub.close()


async def settle(server: ServerProcess, timeout: float = 60) -> dict:
    """Wait for no members, connections, peer connections, extra conferences; then measure."""
    deadline = time.monotonic() + timeout
    while True:
        m = await server.metrics()
        if (m.get("ahoy_peer_connections", 0) == 0 and m.get("ahoy_members", 0) == 0
                and m.get("ahoy_connections", 0) == 0 and m.get("ahoy_conferences", 0) <= 1) \
                or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)
    return await server.figures()


async def run(args) -> dict:
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]
    sys.path.insert(0, ROOT)
    workdir = args.workdir or tempfile.mkdtemp(prefix="ahoy-churn-")
    os.makedirs(workdir, exist_ok=True)
    server = ChurnServer.inWorkdir(workdir)
    result: dict = {"cycles": args.cycles, "media_every": args.media_every,
                    "concurrency": args.concurrency, "workdir": workdir}
    try:
        server.start()
        await server.awaitPort()
        churn = Churn(server, args.media_every)
        await churn.setUp()
        for i in range(args.warmup):  # imports, caches, first allocations
            await churn.cycle(-1 - i if i else 0)
        result["baseline"] = await settle(server)
        _progress(args, "baseline", result["baseline"])
        started = time.monotonic()
        samples = []
        i = 1
        while i <= args.cycles:
            batch = range(i, min(i + args.concurrency, args.cycles + 1))
            await asyncio.gather(*(churn.cycle(n) for n in batch))
            i = batch[-1] + 1
            if args.report_every and (i - 1) % args.report_every < args.concurrency:
                probe = await server.probe()
                sample = {"cycle": i - 1, "elapsed": round(time.monotonic() - started, 1),
                          "rss_kib": server.rssKiB(), "fds": server.fds(), "tasks": probe["tasks"],
                          "peer_connection_objects": probe["objects"]["RTCPeerConnection"]}
                samples.append(sample)
                _progress(args, "progress", sample)
        result["elapsed_s"] = round(time.monotonic() - started, 1)
        result["after"] = await settle(server)
        _progress(args, "after", result["after"])
        result["samples"] = samples
        result["done"] = churn.done
        result["failures"] = churn.failures[:50]
        result["failure_count"] = len(churn.failures)
        result["sink_datagrams"] = churn.sink.received
        churn.sinkTransport.close()
    finally:
        result["exit_status"] = await server.astop()
        result["log"] = server.log
    base, after = result.get("baseline"), result.get("after")
    if base and after:
        result["delta"] = {k: after[k] - base[k] for k in
                           ("rss_kib", "fds", "tasks", "peer_connections", "members",
                            "connections", "conferences", "tracebacks")}
    return result


def _progress(args, what, data) -> None:
    if not args.quiet:
        print(what, json.dumps(data), file=sys.stderr, flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-twistd":
        serveTwistd(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description="Churn soak against a real twistd.")
    parser.add_argument("--cycles", type=int, default=10000)
    parser.add_argument("--media-every", type=int, default=20,
                        help="every N-th cycle is a full media cycle (0: never)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="cycles run at the same time")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--report-every", type=int, default=500)
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--workdir", help="for the config, the log and the probe "
                                          "(default: a new temporary directory, kept)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    loop = asyncio.new_event_loop()
    task = loop.create_task(run(args))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    result = loop.run_until_complete(task)
    text = json.dumps(result, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
