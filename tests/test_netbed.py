# -*- test-case-name: tests.test_netbed -*-
"""
The server on networks like its users' (L{tests.netbed}): Chromium behind
two home NATs, a locked-down office that reaches the server's media only
through TURN over TCP, and a member whose cable is pulled.

The server runs as C{twistd} inside the data-centre namespace, coturn
beside it; Chromium (Debian's, through Playwright, launched with
C{ip netns exec}) and aiortc peers (L{tests.peer_process}) run inside the
member namespaces.  The test process itself stands "on the internet"
(203.0.113.2): its WebSocket clients and its C{GET /metrics} use sockets
made inside that namespace.

One bed for the whole module: the first test builds it (about 2 s), and
C{test_zz_tornDown} (trial runs a class's tests in alphabetical order)
takes it down and checks that the host's interfaces, namespaces and
iptables rules are as they were.  When only some tests are run, the bed is
taken down at exit.  Without root (or without ip, iptables, coturn,
Chromium) every test skips with one line saying why.

Figures (how long the pulled cable took to notice) go to
C{artifacts/netbed.json}.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import socket
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, TestCase

from tests import netbed
from tests.helpers import Client, asyncTest
from tests.netbed import NetBed
from tests.test_browser import ARTIFACTS, CHROMIUM_ARGS, MEDIA_WAIT, BrowserPage
from tests.test_vanish import PeerProcess

ROOT = Path(__file__).resolve().parent.parent

_bed: dict = {}


def sharedBed() -> NetBed:
    """The module's bed, built on first use (a failure to build is kept and re-raised)."""
    if "error" in _bed:
        raise _bed["error"]
    if "bed" not in _bed:
        try:
            # trial runs in its own temporary directory: logs and sockets go there.
            _bed["bed"] = NetBed(Path.cwd() / "netbed").start()
        except Exception as e:
            _bed["error"] = e
            raise
    return _bed["bed"]


def closeBed() -> list[str]:
    """Take the bed down (if there is one); what the host has left over."""
    bed = _bed.pop("bed", None)
    return bed.close() if bed is not None else []


@atexit.register
def _closeAtExit() -> None:
    problems = closeBed()
    if problems:
        sys.stderr.write(f"tests.test_netbed: after tearing the bed down: {problems}\n")


def _figure(name: str, value) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "netbed.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[name] = value
    path.write_text(json.dumps(figures, indent=2) + "\n")


class SkipTests(TestCase):
    """Without what the bed needs, one line says why."""

    def test_withoutRoot(self):
        self.patch(netbed.os, "geteuid", lambda: 1000)
        self.assertEqual(netbed.missing(),
                         "the network test bed needs root (network namespaces, iptables)")

    def test_withoutTool(self):
        if os.geteuid() != 0:
            raise SkipTest("only as root (otherwise root is what is missing)")
        self.patch(netbed.shutil, "which", lambda tool: None if tool == "turnserver" else tool)
        self.assertIn("turnserver is missing (apt-get install", netbed.missing())


class NetBedTests(TestCase):
    """Members at home, in an office and with a pulled cable."""

    timeout = 240

    def setUp(self):
        why = netbed.missing()
        if why:
            raise SkipTest(why)
        self.bed = sharedBed()
        self.browsers: dict[str, object] = {}
        self.pages: list[BrowserPage] = []
        self.clients: list[Client] = []
        self.peers: list[PeerProcess] = []
        self.playwright = None
        self.addCleanup(self._closeMembers)

    @asyncTest
    async def _closeMembers(self):
        problems = []
        for p in self.pages:
            try:
                await p.close(self._testMethodName)
            except Exception as e:
                problems.append(e)
        for c in self.clients:
            await c.close()
        for peer in self.peers:
            await peer.kill()
        for browser in self.browsers.values():
            await browser.close()
        if self.playwright is not None:
            await self.playwright.stop()
        if self.bed.created:  # not taken down yet: plug every cable back in
            for role in netbed.LANS:
                self.bed.plug(role)
        if problems:
            raise problems[0]
        errors = [(p.label, e) for p in self.pages for e in p.errors]
        self.assertEqual(errors, [], "uncaught JavaScript errors")

    # -- members ------------------------------------------------------------

    async def client(self, room: str, name: str) -> Client:
        """A protocol-level member on the internet (203.0.113.2) that joins C{room}."""
        sock = self.bed.socket("inet", connect=(netbed.SERVER_IP, netbed.HTTP_PORT))
        sock.setblocking(False)
        c = await Client.connect(self.bed.url, sock=sock)
        self.clients.append(c)
        await c.request("CONFERENCE_CREATE_request", conferenceID=room)
        joined = await c.request("CONFERENCE_JOIN_request", conferenceID=room, name=name)
        self.assertEqual(joined["status"], 200, joined)
        self.assertIn("iceServers", joined)
        c.memberID = joined["memberID"]
        return c

    cameraFps: int | None = None
    """Frames per second of the fake cameras of the browsers a test starts (Chromium's 20 if C{None})."""

    async def page(self, role: str, label: str, **query) -> BrowserPage:
        """A Chromium page inside a member namespace, the client loaded (URL parameters: C{query})."""
        if self.playwright is None:
            from playwright.async_api import async_playwright

            self.playwright = await async_playwright().start()
        if role not in self.browsers:
            origin = self.bed.http.rstrip("/")
            args = [a for a in CHROMIUM_ARGS if a != "--allow-loopback-in-peer-connection"]
            if self.cameraFps is not None:  # Chromium's fake camera gives 20 frames/s unless told
                args = [f"{a}=fps={self.cameraFps}" if a == "--use-fake-device-for-media-stream"
                        else a for a in args]
            # getUserMedia needs a secure context: plain http on a documentation address.
            args.append(f"--unsafely-treat-insecure-origin-as-secure={origin}")
            self.browsers[role] = await self.playwright.chromium.launch(
                executable_path=self.bed.chromium(role), args=args, headless=True)
        context = await self.browsers[role].new_context(viewport={"width": 960, "height": 540})
        page = BrowserPage(self, label, context, await context.new_page())
        self.pages.append(page)
        return await page.open(self.bed.http, loopbackOnly="0", **query)

    async def aiortcPeer(self, role: str, room: str, name: str, *args: str) -> PeerProcess:
        """An aiortc member (L{tests.peer_process}) inside a member namespace."""
        address = netbed.LANS[role][4]
        with open(self.bed.workdir / f"peer-{name}.log", "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", self.bed.ns(role), sys.executable, "-m",
                "tests.peer_process", self.bed.url, room, name, "--host-address", address, *args,
                cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=log)
        peer = PeerProcess(proc)
        self.peers.append(peer)
        return peer

    async def metricsUntil(self, check, what: str, timeout: float = 20.0) -> dict:
        """Poll /metrics until C{check(values)} holds."""
        loop = asyncio.get_event_loop()
        deadline = loop.time() + timeout
        while True:
            values = await loop.run_in_executor(None, self.bed.metrics)
            if check(values):
                return values
            if loop.time() > deadline:
                raise AssertionError(f"/metrics not {what} within {timeout}s: "
                                     f"{ {k: v for k, v in values.items() if k.startswith('ahoy_')} }")
            await asyncio.sleep(0.5)

    async def assertPairs(self, page: BrowserPage, count: int, local: str, types: tuple,
                          relayProtocol: str | None = None) -> list[dict]:
        """
        Every peer connection of the page reaches the server's own address,
        from C{local} (the NAT's outside address, learnt from the server's
        answers: peer-reflexive; or the TURN server's relay address).
        """
        pairs = await page.page.evaluate("window.ahoy.selectedPairs()")
        page.console.append(f"selected candidate pairs: {pairs}")
        self.assertEqual(len(pairs), count, pairs)
        for pair in pairs:
            self.assertEqual(pair["remote"], netbed.SERVER_IP, pair)
            self.assertEqual(pair["local"], local, pair)
            self.assertIn(pair["localType"], types, pair)
            if relayProtocol:
                self.assertEqual(pair["relayProtocol"], relayProtocol, pair)
        return pairs

    # -- the bed itself -----------------------------------------------------

    def test_bed(self):
        """
        Documentation addresses only, no default route anywhere; the home
        routers masquerade and let replies back in; the office reaches only
        TCP to TURN and to the web port; the cable loses, delays, paces and
        queues as it is told to, changed while it runs.
        """
        bed = self.bed
        for role in netbed.ROLES:
            routes = bed.ip(role, "route", "show")
            self.assertNotIn("default", routes, role)
            for line in bed.ip(role, "-4", "-o", "addr", "show").splitlines():
                address = line.split()[3].split("/")[0]
                self.assertTrue(address == "127.0.0.1" or address.startswith(
                    ("192.0.2.", "198.51.100.", "203.0.113.")), f"{role}: {line}")

        udp = bed.socket("dc", socket.SOCK_DGRAM, bind=(netbed.SERVER_IP, 40000), timeout=1)
        listener = bed.socket("dc", bind=(netbed.SERVER_IP, 40001))
        listener.listen(4)
        try:
            # Home A: NAT'd to its router's address; replies come back.
            home = bed.socket("homeA", socket.SOCK_DGRAM, timeout=1)
            home.sendto(b"hello", (netbed.SERVER_IP, 40000))
            data, source = udp.recvfrom(100)
            self.assertEqual(source[0], netbed.LANS["homeA"][1])
            udp.sendto(b"reply", source)
            self.assertEqual(home.recv(100), b"reply")
            home.close()
            bed.socket("homeA", connect=(netbed.SERVER_IP, 40001)).close()

            # The office: no UDP at all, no TCP but to TURN and the web port.
            office = bed.socket("office", socket.SOCK_DGRAM, timeout=1)
            office.sendto(b"hello", (netbed.SERVER_IP, 40000))
            self.assertRaises(TimeoutError, udp.recvfrom, 100)
            office.close()
            self.assertRaises(TimeoutError, bed.socket, "office",
                              connect=(netbed.SERVER_IP, 40001), timeout=1)
            bed.socket("office", connect=(netbed.TURN_IP, netbed.TURN_PORT)).close()
            bed.socket("office", connect=(netbed.SERVER_IP, netbed.HTTP_PORT)).close()

            # The cable: half the datagrams up, and a delay both ways.
            cable = bed.cables["homeA"]
            home = bed.socket("homeA", socket.SOCK_DGRAM, timeout=1)
            home.sendto(b"warm", (netbed.SERVER_IP, 40000))  # ARP, conntrack
            udp.recvfrom(100)
            before = cable.stats()["up"]
            cable.set(up={"loss": 0.5})
            for i in range(200):
                home.sendto(b"%d" % i, (netbed.SERVER_IP, 40000))
            time.sleep(0.5)
            received = 0
            udp.settimeout(0.2)
            try:
                while True:
                    udp.recvfrom(100)
                    received += 1
            except TimeoutError:
                pass
            after = cable.set(up={"loss": 0.0})["up"]
            lost = after["lost"] - before["lost"]
            self.assertTrue(40 < received < 160, received)
            self.assertEqual(received + lost, after["frames_in"] - before["frames_in"])
            self.assertEqual(after["sent"] - before["sent"], received)

            cable.set(both={"delay": 0.1})
            start = time.monotonic()
            home.sendto(b"ping", (netbed.SERVER_IP, 40000))
            udp.settimeout(2)
            data, source = udp.recvfrom(100)
            udp.sendto(b"pong", source)
            self.assertEqual(home.recv(100), b"pong")
            self.assertGreaterEqual(time.monotonic() - start, 0.2)
            cable.set(both={"delay": 0.0})

            # A rate limit paces frames (20 x 1042 bytes at 160 kbit/s: 1.04 s) ...
            def burst(count: int) -> tuple[int, float]:
                start = time.monotonic()
                for _ in range(count):
                    home.sendto(bytes(1000), (netbed.SERVER_IP, 40000))
                got, last = 0, start
                udp.settimeout(1.5)
                try:
                    while got < count:
                        udp.recvfrom(2000)
                        got, last = got + 1, time.monotonic()
                except TimeoutError:
                    pass
                return got, last - start

            cable.set(up={"rate": 160000})
            got, took = burst(20)
            self.assertEqual(got, 20)
            self.assertGreaterEqual(took, 0.9)
            # ... and a full queue drops what does not fit.
            before = cable.set(up={"queue": 5000})["up"]
            got, took = burst(20)
            after = cable.set(up={"rate": 0, "queue": 1_000_000})["up"]
            drops = after["queue_drops"] - before["queue_drops"]
            self.assertEqual(got + drops, 20)
            self.assertGreaterEqual(got, 4)  # the queue holds four; more leave meanwhile
            self.assertGreaterEqual(drops, 5)
            self.assertRaises(ValueError, cable.set, up={"loss": 2})
            self.assertRaises(ValueError, cable.set, sideways={"loss": 0})
            home.close()
        finally:
            udp.close()
            listener.close()

    # -- media across NATs ------------------------------------------------

    @asyncTest
    async def test_browsersBehindNats(self):
        """
        Chromium behind NAT A and Chromium behind NAT B see and hear each
        other through the server; the server sees each at its router's
        address, and each browser's pairs go from its own host address to
        the server's.
        """
        watcher = await self.client("nat-room", "watcher")
        alice = await self.page("homeA", "alice")
        bob = await self.page("homeB", "bob")
        await alice.joinRoom("nat-room", "alice")
        await bob.joinRoom("nat-room", "bob")
        for name, role in (("alice", "homeA"), ("bob", "homeB")):
            joined = await watcher.expect("CONFERENCE_JOIN_indication")
            self.assertEqual(joined["member"]["name"], name)
            self.assertEqual(joined["member"]["ip"], netbed.LANS[role][1])
        await alice.shareBoth()
        await bob.shareBoth()
        await alice.waitSubscribed("bob")
        await bob.waitSubscribed("alice")
        seenByAlice = await alice.assertVideoPlaying("bob")
        seenByBob = await bob.assertVideoPlaying("alice")
        await alice.assertAudioArriving("bob")
        await bob.assertAudioArriving("alice")
        await self.assertPairs(alice, 2, netbed.LANS["homeA"][1], ("prflx", "srflx"))
        await self.assertPairs(bob, 2, netbed.LANS["homeB"][1], ("prflx", "srflx"))
        values = await self.metricsUntil(
            lambda v: v.get('ahoy_peer_connections{state="connected"}') == 4,
            "4 connected peer connections")
        self.assertEqual(values["ahoy_publishers"], 2)
        for page in (alice, bob):
            await page.screenshot(f"netbed-nat-{page.label}.png")
        _figure("nat_frames_decoded", {"alice_of_bob": seenByAlice["framesDecoded"],
                                       "bob_of_alice": seenByBob["framesDecoded"]})

    @asyncTest
    async def test_officeThroughTurn(self):
        """
        The locked-down office (TCP to TURN and the web port only) gets its
        credential in the join response, relays its media through coturn
        over TCP, and media flows both ways with a member at home.  The
        TURN secret appears in no frame and in no line of the server's log.
        """
        watcher = await self.client("office-room", "watcher")
        carol = await self.page("office", "carol")
        alice = await self.page("homeA", "alice")
        await carol.joinRoom("office-room", "carol")
        await alice.joinRoom("office-room", "alice")
        await carol.shareBoth()
        await alice.shareBoth()
        await carol.waitSubscribed("alice")
        await alice.waitSubscribed("carol")
        await carol.assertVideoPlaying("alice")
        await alice.assertVideoPlaying("carol")
        await alice.assertAudioArriving("carol")
        await self.assertPairs(carol, 2, netbed.TURN_IP, ("relay",), "tcp")
        await self.assertPairs(alice, 2, netbed.LANS["homeA"][1], ("prflx", "srflx"))
        await watcher.quiet(0.1)
        for text in watcher.raw:
            self.assertNotIn(self.bed.secret, text)
        log = self.bed.logs["server"].read_text(errors="replace")
        self.assertIn("joined office-room", log)
        self.assertNotIn(self.bed.secret, log)

    # -- loss on the publisher's leg ---------------------------------------

    @asyncTest
    async def test_lossyPublisher(self):
        """
        Chromium at home A publishes over a cable that loses 3 % of what it
        sends (40 ms ± 10 ms delay); Chromium at home B watches.  The server
        NACKs the missing packets, Chromium resends them as RTX, the server
        forwards them: recovered packets in /metrics, Bob decodes on.
        """
        cable = self.bed.cables["homeA"]
        self.addCleanup(cable.set, up={"loss": 0, "delay": 0, "jitter": 0})
        cable.set(up={"loss": 0.03, "delay": 0.04, "jitter": 0.01})
        before = await asyncio.get_event_loop().run_in_executor(None, self.bed.metrics)
        await self.client("loss-room", "watcher")  # makes the room
        alice = await self.page("homeA", "alice")
        bob = await self.page("homeB", "bob")
        await alice.joinRoom("loss-room", "alice")
        await bob.joinRoom("loss-room", "bob")
        await alice.shareBoth()
        await bob.waitSubscribed("alice")
        await bob.assertVideoPlaying("alice")
        first = await bob.mediaOf("alice")
        await asyncio.sleep(10)
        last = await bob.mediaOf("alice")

        def grown(values, name):
            key = f"ahoy_{name}_total"
            return values.get(key, 0) - before.get(key, 0)

        values = await self.metricsUntil(
            lambda v: grown(v, "publisher_packets_recovered") > 0, "recovering packets")
        sent = await alice.page.evaluate("window.ahoy.publishStats()")
        figures = {
            "seconds": 10,
            "frames_decoded": last["framesDecoded"] - first["framesDecoded"],
            "freezes": last["freezeCount"] - first["freezeCount"],
            "freeze_seconds": round(last["totalFreezesDuration"]
                                    - first["totalFreezesDuration"], 2),
            "packets_lost_at_subscriber": last["packetsLost"],
            "cable_lost": cable.stats()["up"]["lost"],
            "nacks_sent": grown(values, "publisher_nacks_sent"),
            "nacked": grown(values, "publisher_nacked_packets"),
            "recovered": grown(values, "publisher_packets_recovered"),
            "given_up": grown(values, "publisher_packets_given_up"),
            "publisher_rtx_sent": sent.get("retransmittedPacketsSent", 0),
            "plis_sent": grown(values, "keyframe_requests_sent"),
        }
        _figure("lossy_publisher_3pc", figures)
        self.assertEqual(last["serial"], first["serial"])
        self.assertGreater(figures["nacks_sent"], 0)
        self.assertGreater(figures["recovered"], 0)
        self.assertGreater(figures["publisher_rtx_sent"], 0)
        self.assertGreater(figures["frames_decoded"], 50)

    # -- simulcast: each subscriber the layer its link carries -------------

    @asyncTest
    async def test_simulcastLimitedLink(self):
        """
        Chromium at home B publishes three layers; Chromium at home A
        watches through a cable that carries 300 kbit/s down, Chromium in
        the office (through TURN) watches without a limit.  Home A holds the
        low layer on one subscription and, once it settled there, decodes
        (for 10 s, while the selector tries its link with padding now and
        then) at least 25 frames/s and 85 % of the frames the publisher
        encodes (the fake cameras are told to give 30 frames/s) with no
        more than 1 s of freezes in all; the office gets the full size.  The limit is lifted: home A
        climbs back to the full size within 15 s.  An aiortc member (one
        stream, no simulcast) then publishes: all three play it.

        Every subscriber starts on the low layer (its link is not known
        yet) and is tried up with padding at once: home A's picture freezes
        for no more than 2 s at the start (before subscribers started on
        the low layer, the top layer filled the router's 1 s queue and the
        picture froze 0-7.6 s).  The window starts once home A had no new
        freeze for 3 s.  How long the office waits for the full size is a
        figure (C{fast_full_seconds}).
        """
        cable = self.bed.cables["homeA"]
        self.addCleanup(cable.set, down={"rate": 0, "queue": 1_000_000})
        self.cameraFps = 30
        await self.client("simulcast-room", "watcher")  # makes the room
        publisher = await self.page("homeB", "publisher", lowres="0", camera="960x540")
        slow = await self.page("homeA", "slow")
        fast = await self.page("office", "fast")
        for page in (publisher, slow, fast):
            await page.joinRoom("simulcast-room", page.label)
        cable.set(down={"rate": 300_000, "queue": 40_000})  # a router's queue: about 1 s
        await publisher.page.evaluate("window.ahoy.setSharing(false, true, 1500)")

        async def topWidth() -> int:
            sent = await publisher.page.evaluate("window.ahoy.publishStats()")
            return max((layer["frameWidth"] for layer in sent["layers"].values()), default=0)

        layers = await publisher.poll(
            """() => window.ahoy.publishStats().then(s => Object.keys(s.layers).filter(
                   r => s.layers[r].framesEncoded > 0).length >= 3 ? s.layers : null)""",
            "sending three layers", timeout=MEDIA_WAIT)
        lowWidth = min(layer["frameWidth"] for layer in layers.values())
        sending = time.monotonic()
        await fast.assertVideoPlaying("publisher")
        await slow.assertVideoPlaying("publisher")
        full = await fast.poll(
            """w => window.ahoy.mediaStats().then(all => all.find(s => s.name === 'publisher'
                   && s.frameWidth >= w) || null)""",
            "receiving the full size", timeout=MEDIA_WAIT, arg=await topWidth())
        fastFull = time.monotonic() - sending
        low = await slow.poll(
            """w => window.ahoy.mediaStats().then(all => all.find(s => s.name === 'publisher'
                   && s.frameWidth > 0 && s.frameWidth <= w) || null)""",
            "receiving the low layer", timeout=MEDIA_WAIT, arg=lowWidth)
        # settled: for 3 s no new freeze, and frames decoded all along at
        # about the rate they are encoded (a freeze is counted when it ends)
        settled = time.monotonic()
        giveUp = settled + 30  # then the window shows the freezes
        seen = await slow.mediaOf("publisher")
        while time.monotonic() - settled < 3 and time.monotonic() < giveUp:
            await asyncio.sleep(0.5)
            now = await slow.mediaOf("publisher")
            if (now["freezeCount"] != seen["freezeCount"]
                    or now["framesDecoded"] - seen["framesDecoded"] < 8):
                settled = time.monotonic()
            seen = now
        loop = asyncio.get_event_loop()
        before = await loop.run_in_executor(None, self.bed.metrics)
        first = await slow.mediaOf("publisher")
        encodedFirst = (await publisher.page.evaluate("window.ahoy.publishStats()"))["layers"]
        start = time.monotonic()
        await asyncio.sleep(10)
        last = await slow.mediaOf("publisher")
        encodedLast = (await publisher.page.evaluate("window.ahoy.publishStats()"))["layers"]
        after = await loop.run_in_executor(None, self.bed.metrics)
        seconds = time.monotonic() - start
        fps = (last["framesDecoded"] - first["framesDecoded"]) / seconds
        freezes = last["totalFreezesDuration"] - first["totalFreezesDuration"]
        lowRid = min(encodedLast, key=lambda r: encodedLast[r]["frameWidth"])
        encoded = encodedLast[lowRid]["framesEncoded"] - encodedFirst[lowRid]["framesEncoded"]
        figures = {"low_width": lowWidth, "low_encoded_fps": round(encoded / seconds, 1),
                   "full_width": full["frameWidth"],
                   "slow_width": last["frameWidth"], "slow_fps": round(fps, 1),
                   "start_freeze_seconds": round(first["totalFreezesDuration"], 2),
                   "fast_full_seconds": round(fastFull, 1),
                   "slow_freezes": last["freezeCount"] - first["freezeCount"],
                   "slow_freeze_seconds": round(freezes, 2),
                   "cable_queue_drops": cable.stats()["down"]["queue_drops"],
                   "switches_in_window": {k: after[k] - before.get(k, 0) for k in after
                                          if k.startswith(("ahoy_simulcast_switches",
                                                           "ahoy_simulcast_probes",
                                                           "ahoy_simulcast_padding"))},
                   "slow_bytes_per_second": round((last["videoBytes"] - first["videoBytes"])
                                                  / seconds),
                   "fast_fps": (await fast.mediaOf("publisher"))["framesPerSecond"],
                   "published": encodedLast}
        # it holds the low layer (tries of its link are padding)
        await slow.poll(
            """w => window.ahoy.mediaStats().then(all => all.some(s => s.name === 'publisher'
                   && s.frameWidth > 0 && s.frameWidth <= w))""",
            "on the low layer", timeout=8, arg=lowWidth)
        self.assertEqual(last["serial"], low["serial"])
        self.assertLessEqual(figures["start_freeze_seconds"], 2.0, figures)
        self.assertGreaterEqual(fps, 25, figures)
        self.assertGreaterEqual(fps, 0.85 * figures["low_encoded_fps"], figures)
        self.assertLessEqual(freezes, 1.0, figures)
        still = await fast.mediaOf("publisher")
        self.assertGreaterEqual(still["frameWidth"], full["frameWidth"], figures)

        cable.set(down={"rate": 0, "queue": 1_000_000})
        lifted = time.monotonic()
        await slow.poll(
            """w => window.ahoy.mediaStats().then(all => all.some(s => s.name === 'publisher'
                   && s.frameWidth >= w))""",
            "back at the full size", timeout=30, arg=full["frameWidth"])
        figures["climb_seconds"] = round(time.monotonic() - lifted, 1)
        values = await asyncio.get_event_loop().run_in_executor(None, self.bed.metrics)
        figures["switches"] = {k: v for k, v in values.items() if k.startswith("ahoy_simulcast")}
        _figure("simulcast_limited_link", figures)
        self.assertLessEqual(figures["climb_seconds"], 15, figures)
        self.assertGreater(values.get('ahoy_simulcast_switches_total{direction="up"}', 0), 0)

        # a publisher that sends one stream (aiortc) reaches all of them
        robo = await self.aiortcPeer("homeA", "simulcast-room", "robo", "--publish")
        await robo.waitFor("connected", timeout=MEDIA_WAIT)
        for page in (slow, fast, publisher):
            await page.assertVideoPlaying("robo")

    # -- the pulled cable ---------------------------------------------------

    @asyncTest
    async def test_pulledCable(self):
        """
        Alice (aiortc at home A) publishes; Bob (Chromium at home B)
        publishes and receives her.  Bob's cable is pulled (link down in his
        namespace: no FIN, no ICE goodbye).  The others get
        CONFERENCE_LEAVE_indication within the WebSocket ping timeout, and
        Bob's peer connections, socket, publication and subscription are
        gone from /metrics, Alice's still up.
        """
        watcher = await self.client("cable-room", "watcher")
        alice = await self.aiortcPeer("homeA", "cable-room", "alice", "--publish")
        await alice.waitFor("connected", timeout=MEDIA_WAIT)
        bob = await self.page("homeB", "bob")
        await bob.joinRoom("cable-room", "bob")
        await bob.shareBoth()
        await bob.waitSubscribed("alice")
        await bob.assertVideoPlaying("alice")
        bobID = await bob.stateValue("me.memberID")
        await self.metricsUntil(
            lambda v: v.get('ahoy_peer_connections{state="connected"}') == 3
            and v["ahoy_connections"] == 3 and v["ahoy_publishers"] == 2
            and v["ahoy_subscriptions"] == 1,
            "up: Alice's and Bob's publications, Bob's subscription")
        watcher.received.clear()

        self.bed.pull("homeB")
        pulled = time.monotonic()
        left = await watcher.expect("CONFERENCE_LEAVE_indication", timeout=60)
        noticed = time.monotonic() - pulled
        self.assertEqual(left["member"]["memberID"], bobID)
        while True:  # and his media is gone (sent with the leave, in either order)
            media = await watcher.expect("MEDIA_indication", timeout=5)
            if media["member"]["memberID"] == bobID and not media["video"]["available"]:
                break
        values = await self.metricsUntil(
            lambda v: sum(n for k, n in v.items() if k.startswith("ahoy_peer_connections")) == 1
            and v.get('ahoy_peer_connections{state="connected"}') == 1
            and v["ahoy_connections"] == 2 and v["ahoy_publishers"] == 1
            and v["ahoy_subscriptions"] == 0,
            "free of Bob's peer connections, socket, publication and subscription")
        members = sum(n for k, n in values.items() if k.startswith("ahoy_members{"))
        self.assertEqual(members, 2)
        self.assertEqual(values['ahoy_dropped_connections_total{reason="ping_timeout"}'], 1)
        log = self.bed.logs["server"].read_text(errors="replace")
        self.assertIn("no answer to a WebSocket ping", log)
        _figure("pulled_cable_noticed_seconds", round(noticed, 1))

    @asyncTest
    async def test_mediaPathCut(self):
        """
        Only the media path goes (home A's router starts dropping UDP; the
        WebSocket stays up): ICE consent (RFC 7675) expires, the server
        closes and frees Alice's publishing peer connection and tells the
        others her media is gone; Alice stays a member.
        """
        watcher = await self.client("cut-room", "watcher")
        alice = await self.aiortcPeer("homeA", "cut-room", "alice", "--publish")
        await alice.waitFor("connected", timeout=MEDIA_WAIT)

        def media(indication: dict) -> tuple[bool, bool]:
            return (indication["audio"]["available"], indication["video"]["available"])

        while True:  # the server receives both her audio and her video
            indication = await watcher.expect("MEDIA_indication", timeout=MEDIA_WAIT)
            if media(indication) == (True, True):
                break
        await self.metricsUntil(
            lambda v: v.get('ahoy_peer_connections{state="connected"}') == 1
            and v["ahoy_publishers"] == 1, "Alice publishing")
        watcher.received.clear()
        router = netbed.LANS["homeA"][0]
        rule = ["FORWARD", "-p", "udp", "-j", "DROP"]
        self.bed.exec(router, "iptables", "-I", *rule)
        try:
            cut = time.monotonic()
            indication = await watcher.expect("MEDIA_indication", timeout=90)
            noticed = time.monotonic() - cut
            while media(indication) != (False, False):  # one kind at a time
                self.assertIn(False, media(indication), indication)
                indication = await watcher.expect("MEDIA_indication", timeout=5)
            values = await self.metricsUntil(
                lambda v: sum(n for k, n in v.items()
                              if k.startswith("ahoy_peer_connections")) == 0
                and v["ahoy_publishers"] == 0 and v["ahoy_connections"] == 2,
                "free of Alice's peer connection, with Alice still connected")
            members = sum(n for k, n in values.items() if k.startswith("ahoy_members{"))
            self.assertEqual(members, 2)
            self.assertEqual(watcher.received and [m for m in watcher.received if m.get(
                "messageType") == "CONFERENCE_LEAVE_indication"], [])
        finally:
            self.bed.exec(router, "iptables", "-D", *rule)
        _figure("media_path_cut_noticed_seconds", round(noticed, 1))

    # -- last: the bed goes ------------------------------------------------

    def test_zz_tornDown(self):
        """
        Taking the bed down leaves no namespace, process or TAP device, and
        the host's interfaces and iptables rules as they were (a bed is
        built for this if no other test built one).
        """
        bed = self.bed
        names = [bed.ns(role) for role in netbed.ROLES]
        processes = list(bed.processes.values())
        self.assertEqual(closeBed(), [])
        listed = netbed._run("ip", "netns", "list")
        for name in names:
            self.assertNotIn(name, listed)
            self.assertFalse(os.path.exists(f"/run/netns/{name}"))
        for p in processes:
            self.assertIsNotNone(p.poll())
