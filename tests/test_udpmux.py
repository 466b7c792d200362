# -*- test-case-name: tests.test_udpmux -*-
"""
Tests for L{ahoyconference.media.udpmux}: every member's ICE, DTLS and SRTP
on one UDP port (C{[ice] udp_port}, docs/architecture.md "One UDP port").

Real sockets on loopback: the demultiplexer alone (L{DemuxTests}), the
engine with aiortc peers (media, NAT rebinding through a relay that
changes its source port, hostile datagrams, nothing left behind), and a
C{twistd} server process holding one UDP socket for a six-member room.

Run with C{trial --reactor=asyncio}.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket

from aioice import stun
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase

from ahoyconference.config import ONE_PORT, ConfigError, IceSettings, loadConfig
from ahoyconference.media import mmsg, udpmux
from ahoyconference.media.engine import AiortcMediaEngine
from ahoyconference.media.udpmux import OnePort, PortUnavailable, UdpMux
from tests import test_browser
from tests import test_media_engine as _engineTests
from tests.helpers import asyncTest, createAndJoin, join
from tests.mediaclients import Publisher, Subscriber, waitFor
from tests.serverprocess import ServerProcess
from tests.test_fanout import metric
from tests.test_media_engine import EngineTestMixin, RecordingListener, wait


def freeUdpPort() -> int:
    """A UDP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bindingRequest(username: str | None = None, key: bytes | None = None) -> bytes:
    """A STUN binding request, with a USERNAME and MESSAGE-INTEGRITY when given."""
    message = stun.Message(message_method=stun.Method.BINDING,
                           message_class=stun.Class.REQUEST)
    if username is not None:
        message.attributes["USERNAME"] = username
    if key is not None:
        message.add_message_integrity(key)
    return bytes(message)


def ufragOf(sdp: str) -> str:
    """The first C{a=ice-ufrag} of an SDP."""
    return re.search(r"^a=ice-ufrag:(\S+)", sdp, re.M).group(1)


def candidatePorts(sdp: str) -> set[int]:
    """The ports of the host candidates of an SDP."""
    return {int(m) for m in re.findall(r"^a=candidate:\S+ \d+ udp \d+ \S+ (\d+) typ host",
                                       sdp, re.M)}


def withoutCandidates(sdp: str) -> str:
    """An answer without candidates (the server learns the address from our checks)."""
    return "".join(line for line in sdp.splitlines(True)
                   if not line.startswith(("a=candidate:", "a=end-of-candidates")))


# -- the demultiplexer alone ----------------------------------------------------


class FakeProtocol:
    """Records what a mux hands to an aioice protocol."""

    def __init__(self):
        self.received: list[tuple[bytes, tuple]] = []
        self.lost = 0

    def datagram_received(self, data, addr):
        self.received.append((data, addr))

    def connection_lost(self, exc):
        self.lost += 1


class DemuxTests(TestCase):
    """L{UdpMux} on a real socket, with stand-in protocols (C{recvmmsg} where there is one)."""

    batching = True

    def setUp(self):
        self.drops: list[str] = []
        self.errors: list[tuple] = []
        self.mux = UdpMux("127.0.0.1", 0, self.drops.append,
                          lambda where, e: self.errors.append((where, e)), self.batching)
        self.mux.start()
        self.addCleanup(self.mux.stop)
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.1", 0))
        self.addCleanup(self.peer.close)
        self.peerAddr = self.peer.getsockname()

    def test_requestMapsOnlyWhenAnswered(self):
        """
        A request for a known ufrag reaches its protocol, but its address is
        mapped only when the connection sends a success response there; a
        non-STUN datagram from an unmapped address is dropped and counted.
        """
        protocol = FakeProtocol()
        transport = self.mux.attach(protocol, "abcdEFGH")
        request = bindingRequest("abcdEFGH:peer")
        self.mux.datagram(request, self.peerAddr)
        self.assertEqual(protocol.received, [(request, self.peerAddr)])
        self.mux.datagram(b"\x80" + b"\x00" * 30, self.peerAddr)  # SRTP-looking
        self.assertEqual(len(protocol.received), 1)
        self.assertEqual(self.drops, [udpmux.UNKNOWN_ADDRESS])
        error = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.ERROR,
                             transaction_id=request[8:20])
        transport.sendto(bytes(error), self.peerAddr)  # 401: still unknown
        self.assertEqual(self.mux.sizes()["addresses"], 0)
        response = stun.Message(message_method=stun.Method.BINDING,
                                message_class=stun.Class.RESPONSE,
                                transaction_id=request[8:20])
        transport.sendto(bytes(response), self.peerAddr)
        self.assertEqual(self.peer.recv(2048), bytes(error))
        self.assertEqual(self.mux.sizes()["addresses"], 1)
        self.mux.datagram(b"\x80" + b"\x00" * 30, self.peerAddr)
        self.assertEqual(len(protocol.received), 2)

    def test_unknownUfragAndUnmatchedResponses(self):
        """Requests for unknown ufrags, junk STUN and responses nobody awaits: dropped."""
        protocol = FakeProtocol()
        self.mux.attach(protocol, "abcdEFGH")
        for data, reason in [
            (bindingRequest("zzzzzzzz:peer"), udpmux.UNKNOWN_UFRAG),
            (bindingRequest(), udpmux.UNKNOWN_UFRAG),
            (bindingRequest("abcdEFGH:peer")[:20] + b"\x00\x06\x00\xff", udpmux.UNKNOWN_UFRAG),
            (bytes(stun.Message(message_method=stun.Method.BINDING,
                                message_class=stun.Class.RESPONSE)), udpmux.UNMATCHED_STUN),
            (bytes(stun.Message(message_method=stun.Method.BINDING,
                                message_class=stun.Class.INDICATION)), udpmux.UNMATCHED_STUN),
            (os.urandom(100), udpmux.UNKNOWN_ADDRESS),
            (b"", udpmux.UNKNOWN_ADDRESS),
        ]:
            self.mux.datagram(data, self.peerAddr)
            self.assertEqual(self.drops[-1], reason, data)
        self.assertEqual(protocol.received, [])
        self.assertEqual(self.mux.sizes()["addresses"], 0)

    def test_responseToOurRequest(self):
        """
        A success response from the address our request went to maps it;
        the same transaction answered from elsewhere does not.
        """
        protocol = FakeProtocol()
        transport = self.mux.attach(protocol, "abcdEFGH")
        request = bindingRequest("peer:abcdEFGH")
        transport.sendto(request, self.peerAddr)
        self.assertEqual(self.peer.recv(2048), request)
        response = bytes(stun.Message(message_method=stun.Method.BINDING,
                                      message_class=stun.Class.RESPONSE,
                                      transaction_id=request[8:20]))
        self.mux.datagram(response, ("127.0.0.1", 9))
        self.assertEqual(self.drops, [udpmux.UNMATCHED_STUN])
        self.mux.datagram(response, self.peerAddr)
        self.assertEqual(protocol.received, [(response, self.peerAddr)])
        self.assertEqual(self.mux.sizes(), {"ufrags": 1, "addresses": 1, "transactions": 0})

    def test_rebindingAndBound(self):
        """
        A connection may be at several addresses (NAT rebinding), at most
        L{udpmux.MAX_ADDRESSES}; an address answered by another connection
        moves to it; closing forgets everything, and tells the protocol.
        """
        first, second = FakeProtocol(), FakeProtocol()
        a = self.mux.attach(first, "aaaaaaaa")
        b = self.mux.attach(second, "bbbbbbbb")
        success = bytes(stun.Message(message_method=stun.Method.BINDING,
                                     message_class=stun.Class.RESPONSE))
        addresses = [("127.0.0.1", 40000 + i) for i in range(udpmux.MAX_ADDRESSES + 2)]
        for addr in addresses:
            a.sendto(success, addr)
        self.assertEqual(a.addresses, addresses[2:])
        self.mux.datagram(b"\x80" * 20, addresses[0])
        self.assertEqual(self.drops, [udpmux.UNKNOWN_ADDRESS])
        b.sendto(success, addresses[-1])
        self.assertEqual(b.addresses, [addresses[-1]])
        self.assertNotIn(addresses[-1], a.addresses)
        self.mux.datagram(b"\x80" * 20, addresses[-1])
        self.assertEqual(len(second.received), 1)
        a.sendto(bindingRequest("x:aaaaaaaa"), addresses[3])
        a.close()
        b.close()
        b.close()
        self.assertEqual(self.mux.sizes(), {"ufrags": 0, "addresses": 0, "transactions": 0})
        self.mux.datagram(bindingRequest("aaaaaaaa:x"), addresses[3])
        self.assertEqual(self.drops[-1], udpmux.UNKNOWN_UFRAG)
        d = Deferred()
        asyncio.get_event_loop().call_soon(d.callback, None)
        return d.addCallback(lambda _: self.assertEqual((first.lost, second.lost), (1, 1)))

    def test_exceptionsCounted(self):
        """A protocol that raises is counted as an error; the mux goes on."""
        protocol = FakeProtocol()
        protocol.datagram_received = lambda data, addr: 1 / 0
        self.mux.attach(protocol, "abcdEFGH")
        self.mux.datagram(bindingRequest("abcdEFGH:p"), self.peerAddr)
        self.assertEqual([where for where, e in self.errors], ["mux"])

    def test_readsFromTheSocket(self):
        """Datagrams sent to the port arrive through the loop's reader."""
        protocol = FakeProtocol()
        self.mux.attach(protocol, "abcdEFGH")
        self.peer.sendto(bindingRequest("abcdEFGH:p"), self.mux.address)
        self.peer.sendto(b"junk", self.mux.address)

        async def check():
            await waitFor(lambda: protocol.received and self.drops, timeout=5)
            self.assertEqual(self.drops, [udpmux.UNKNOWN_ADDRESS])

        return Deferred.fromFuture(asyncio.ensure_future(check()))

    def test_portTaken(self):
        """A port in use: L{PortUnavailable} naming it; nothing stays bound."""
        taken = self.mux.address[1]
        ports = OnePort(("127.0.0.1",), taken, self.drops.append, lambda *a: None)
        with self.assertRaises(PortUnavailable) as caught:
            ports.start()
        self.assertIn(f"127.0.0.1:{taken}", str(caught.exception))
        self.assertIn("udp_port", str(caught.exception))
        self.assertIsNone(ports.muxes[0].socket)

    def test_ufragsUnique(self):
        """Ufrags are 8 characters and never one a live connection has."""
        ports = OnePort(("127.0.0.1",), 0, self.drops.append, lambda *a: None)
        ports.muxes = [self.mux]
        seen = set()
        for _ in range(200):
            ufrag = ports.newUfrag()
            self.assertEqual(len(ufrag), udpmux.UFRAG_LENGTH)
            self.assertNotIn(ufrag, seen)
            seen.add(ufrag)
            self.mux.attach(FakeProtocol(), ufrag)
        self.assertEqual(ports.sizes()["ufrags"], 200)


class PlainDemuxTests(DemuxTests):
    """The same with C{recvfrom} and C{sendto} (where C{recvmmsg} is missing)."""

    batching = False

    def test_plain(self):
        self.assertIsNone(self.mux.batch)
        self.assertIsNone(UdpMux("127.0.0.1", 0, self.drops.append, lambda *a: None).batch)


class ConfigTests(TestCase):
    """C{[ice] udp_port}: 0 when absent, the shipped file's is L{ONE_PORT}, a port or an error."""

    def load(self, text: str):
        path = self.mktemp() + ".toml"
        with open(path, "w") as f:
            f.write(text)
        return loadConfig(path)

    def test_values(self):
        self.assertEqual(self.load("").ice.udp_port, 0)
        self.assertEqual(self.load("[ice]\nudp_port = 20000\n").ice.udp_port, 20000)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        shipped = loadConfig(os.path.join(here, "conf", "ahoyconference.toml"))
        self.assertEqual(shipped.ice.udp_port, ONE_PORT)
        for bad in ("70000", "-1", '"10000"', "true"):
            with self.assertRaises(ConfigError) as caught:
                self.load(f"[ice]\nudp_port = {bad}\n")
            self.assertIn("[ice] udp_port", str(caught.exception))


# -- the engine on one port, with aiortc peers ---------------------------------------


class Relay:
    """
    A NAT stand-in between an aiortc peer and the server: the peer sends to
    L{address}; we forward from a socket whose port L{rebind} changes.
    """

    def __init__(self, server: tuple):
        self.server = server
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.front.setblocking(False)
        self.address = self.front.getsockname()
        self.peer = None
        self.back = None
        self.ports: list[int] = []
        self._loop = asyncio.get_event_loop()
        self._loop.add_reader(self.front.fileno(), self._fromPeer)
        self.rebind()

    def rebind(self) -> None:
        """Forward from a new source port from now on."""
        if self.back is not None:
            self._loop.remove_reader(self.back.fileno())
            self.back.close()
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        self.back.setblocking(False)
        self.ports.append(self.back.getsockname()[1])
        self._loop.add_reader(self.back.fileno(), self._fromServer, self.back)

    def _fromPeer(self) -> None:
        while True:
            try:
                data, self.peer = self.front.recvfrom(2048)
            except BlockingIOError:
                return
            self.back.sendto(data, self.server)

    def _fromServer(self, back) -> None:
        while True:
            try:
                data, addr = back.recvfrom(2048)
            except (BlockingIOError, OSError):
                return
            if self.peer is not None:
                self.front.sendto(data, self.peer)

    def close(self) -> None:
        """Stop relaying."""
        for sock in (self.front, self.back):
            self._loop.remove_reader(sock.fileno())
            sock.close()


def throughRelay(offer: str, relay: Relay, port: int) -> str:
    """The server's offer as the peer behind C{relay} gets it: the relay's port."""
    return offer.replace(f" 127.0.0.1 {port} typ host", f" 127.0.0.1 {relay.address[1]} typ host")


class OnePortEngineTests(EngineTestMixin, TestCase):
    """The engine with C{udp_port}: media, rebinding, hostile datagrams, no leak."""

    batching = False

    def setUp(self):
        from twisted.internet import reactor

        from tests.test_media_engine import loopbackOnly

        loopbackOnly(self)
        self.port = freeUdpPort()
        self.listener = RecordingListener()
        self.engine = AiortcMediaEngine(
            self.listener, IceSettings(host_addresses=("127.0.0.1",), udp_port=self.port),
            reactor, iceTimeout=self.iceTimeout, batching=self.batching)
        self.clients = []
        self.addCleanup(self._closeAll)

    @property
    def sizes(self):
        return self.engine.onePort.sizes()

    async def relayed(self, relay: Relay, what: str, memberID: str, publisherID: str = ""):
        """Publish (or subscribe) an aiortc peer whose datagrams go through C{relay}."""
        if what == "publish":
            peer = Publisher(tag=3)
            self.clients.append(peer)
            offer = await wait(self.engine.publish(memberID, True, True, 500))
            answer = await peer.answer(throughRelay(offer, relay, self.port))
            await wait(self.engine.acceptPublishAnswer(memberID, withoutCandidates(answer)))
        else:
            peer = Subscriber()
            self.clients.append(peer)
            offer = await wait(self.engine.subscribe(memberID, publisherID, True, True))
            answer = await peer.answer(throughRelay(offer, relay, self.port))
            await wait(self.engine.acceptSubscribeAnswer(memberID, publisherID,
                                                         withoutCandidates(answer)))
        return peer

    @asyncTest
    async def test_mediaOnOnePort(self):
        """
        A publisher and two subscribers: every offer's host candidate is the
        one port, each connection its own ufrag, media flows; when everyone
        has gone the mux remembers nothing.
        """
        publisher = await self.publish("pub", tag=4)
        first = await self.subscribe("sub1", "pub")
        second = await self.subscribe("sub2", "pub")
        offers = [publisher.offer, first.pc.remoteDescription.sdp,
                  second.pc.remoteDescription.sdp]
        for offer in offers:
            self.assertEqual(candidatePorts(offer), {self.port})
        self.assertEqual(len({ufragOf(o) for o in offers}), 3)
        for subscriber in (first, second):
            await waitFor(lambda s=subscriber: len({n for t, n, ok in s.frames}) >= 15,
                          what="15 pictures")
            await waitFor(lambda s=subscriber: len(s.audio) >= 25, what="audio")
        self.assertEqual(self.sizes["ufrags"], 3)
        self.assertGreaterEqual(self.sizes["addresses"], 3)
        self.assertEqual({k: v for k, v in self.engine.stats()["drops"].items()
                          if k.startswith("mux")}, {})
        for client in self.clients:
            await client.close()
        self.clients = []
        self.engine.removeMember("pub")
        self.engine.removeMember("sub1")
        self.engine.removeMember("sub2")
        await waitFor(lambda: not self.engine._peers, what="peer connections gone")
        await waitFor(lambda: self.sizes == {"ufrags": 0, "addresses": 0, "transactions": 0},
                      what=f"the mux emptied ({self.sizes})")
        self.assertIsNotNone(self.engine.onePort.muxes[0].socket)

    @asyncTest
    async def test_natRebinding(self):
        """
        A publisher and a subscriber behind relays whose source ports change
        mid-call: after their next consent check from the new port, media
        goes on both ways (the server sends to the subscriber's new address).
        """
        server = ("127.0.0.1", self.port)
        pubRelay, subRelay = Relay(server), Relay(server)
        self.addCleanup(pubRelay.close)
        self.addCleanup(subRelay.close)
        await self.relayed(pubRelay, "publish", "pub")
        subscriber = await self.relayed(subRelay, "subscribe", "sub", "pub")
        await waitFor(lambda: len({n for t, n, ok in subscriber.frames}) >= 10,
                      what="pictures before rebinding")
        sub = self.engine._subscriptions[("sub", "pub")]
        self.assertEqual(sub.outs["video"].addr, ("127.0.0.1", subRelay.ports[0]))
        pubRelay.rebind()
        subRelay.rebind()
        await asyncio.sleep(0.2)
        seen = {n for t, n, ok in subscriber.frames}
        await waitFor(lambda: len({n for t, n, ok in subscriber.frames} - seen) >= 30,
                      timeout=40, what="30 new pictures after both rebound")
        self.assertEqual(sub.outs["video"].addr, ("127.0.0.1", subRelay.ports[1]))
        self.assertTrue(all(ok for t, n, ok in subscriber.frames))
        drops = self.engine.stats()["drops"]
        self.assertEqual(drops.get("srtp", 0), 0)

    @asyncTest
    async def test_hostileDatagrams(self):
        """
        From a new address: random bytes, DTLS and SRTP look-alikes, STUN for
        an unknown ufrag, STUN for a member's ufrag without or with a wrong
        MESSAGE-INTEGRITY, responses nobody asked for.  None reaches a
        member's DTLS or SRTP (no srtp or junk drops), none maps the
        address, each is counted; media goes on.
        """
        publisher = await self.publish("pub", tag=6)
        subscriber = await self.subscribe("sub", "pub")
        await waitFor(lambda: len(subscriber.frames) >= 5, what="pictures")
        before = dict(self.sizes)
        ufrag = ufragOf(publisher.offer)
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(attacker.close)
        attacker.bind(("127.0.0.1", 0))
        attacker.setblocking(False)
        srtp = bytes([0x80, 96]) + os.urandom(10) + os.urandom(100)
        dtls = bytes([22, 0xFE, 0xFD]) + os.urandom(60)
        hostile = ([os.urandom(n) for n in (1, 13, 200, 1400)] + [b"", srtp, dtls, dtls[:1]]
                   + [bindingRequest("nobody12:x", b"k" * 16), bindingRequest(f"{ufrag}:x"),
                      bindingRequest(f"{ufrag}:x", b"wrong password!!"),
                      bytes(stun.Message(message_method=stun.Method.BINDING,
                                         message_class=stun.Class.RESPONSE))])
        for data in hostile * 5:
            attacker.sendto(data, ("127.0.0.1", self.port))
        # the two requests for the member's ufrag are answered with errors (400, 401)
        answers = []
        for _ in range(10):
            data = await asyncio.wait_for(
                asyncio.get_running_loop().sock_recv(attacker, 2048), 5)
            answers.append(stun.parse_message(data).message_class)
        self.assertEqual(set(answers), {stun.Class.ERROR})
        for data in (srtp, dtls):  # still unknown after the refused checks
            attacker.sendto(data, ("127.0.0.1", self.port))
        await waitFor(lambda: sum(v for k, v in self.engine.stats()["drops"].items()
                                  if k.startswith("mux")) >= len(hostile) * 5 - 10 + 2,
                      what="every hostile datagram counted")
        drops = self.engine.stats()["drops"]
        self.assertEqual(drops[udpmux.UNKNOWN_ADDRESS], 8 * 5 + 2)
        self.assertEqual(drops[udpmux.UNKNOWN_UFRAG], 5)
        self.assertEqual(drops[udpmux.UNMATCHED_STUN], 5)
        for reason in ("srtp", "junk_datagram", "short", "error"):
            self.assertNotIn(reason, drops)
        self.assertEqual(self.sizes, before)
        seen = len({n for t, n, ok in subscriber.frames})
        await waitFor(lambda: len({n for t, n, ok in subscriber.frames}) >= seen + 10,
                      what="pictures after the attack")


class OnePortMixin:
    """The engine tests' engine, on one UDP port."""

    def setUp(self):
        from twisted.internet import reactor

        super().setUp()
        unused = self.engine  # the mixin's own, on sockets of their own
        self.addCleanup(lambda: unused.close())
        self.engine = AiortcMediaEngine(
            self.listener, IceSettings(host_addresses=("127.0.0.1",), udp_port=freeUdpPort()),
            reactor, iceTimeout=self.iceTimeout)


class OnePortForwardingTests(OnePortMixin, _engineTests.ForwardingTests):
    """L{tests.test_media_engine.ForwardingTests} on one port."""


class OnePortLifecycleTests(OnePortMixin, _engineTests.LifecycleTests):
    """
    L{tests.test_media_engine.LifecycleTests} on one port: a publisher that
    goes away, renegotiates (a new peer connection: a new ufrag on the same
    port), publishers kept apart.
    """


class BatchedEngineTests(OnePortEngineTests):
    """The same with C{recvmmsg}/C{sendmmsg} (L{mmsg}; off by default)."""

    batching = True

    def setUp(self):
        if not mmsg.available():
            raise SkipTest("no recvmmsg/sendmmsg here")
        super().setUp()
        self.assertIsNotNone(self.engine.onePort.muxes[0].batch)


# -- a server process: one UDP socket ---------------------------------------------


def udpSockets(pid: int) -> int:
    """The UDP sockets process C{pid} holds: its socket fds found in its net/udp tables."""
    inodes = set()
    for name in ("udp", "udp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f)
                inodes |= {line.split()[9] for line in f}
        except FileNotFoundError:
            pass
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match and match.group(1) in inodes:
            held += 1
    return held


def openFds(pid: int) -> int:
    """File descriptors of process C{pid}."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class ServerProcessTests(TestCase):
    """A C{twistd} server: six members all-to-all on one port, one UDP socket."""

    timeout = 240

    def setUp(self):
        import aioice.ice

        from tests.test_media_engine import loopbackOnly

        loopbackOnly(self)
        # Our peers give the server time: a late consent answer of the server
        # (this busy process reads it late) does not make them hang up.  The
        # server (its own process) keeps its consent timing.
        self.patch(aioice.ice, "CONSENT_FAILURES", 1000)

    async def room(self, udpPort: int, members: int = 6):
        """Start a server, put C{members} aiortc members in one room, all-to-all."""
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        server = ServerProcess.twistd(
            workdir, config=f'[ice]\nhost_addresses = ["127.0.0.1"]\nudp_port = {udpPort}\n'
                            '[limits]\njoin_rate = 0\nmax_connections_per_ip = 0\n'
                            'max_conferences_per_client = 0\n')
        server.start()
        peers, clients = [], []

        async def cleanup():
            for peer in peers:
                await peer.close()
            for client in clients:
                await client.close()
            await server.astop()

        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(cleanup())))
        await server.awaitPort()
        baseline = openFds(server.pid)
        client, joined = await createAndJoin(server.url, "six", "m0")
        clients.append(client)
        ids = [joined["memberID"]]
        for i in range(1, members):
            client, joined = await join(server.url, "six", f"m{i}")
            clients.append(client)
            ids.append(joined["memberID"])
        # Everyone's audio to everyone.  The aiortc peers of all six members
        # run in this process and must answer the server's ICE consent checks
        # within 0.5 s; decoding video here as well starved them on this
        # shared 2-core machine, with or without the one port (the engine
        # tests and the Chromium room below carry video on one port).
        for i, client in enumerate(clients):
            publisher = Publisher(tag=1 + i, video=False)
            peers.append(publisher)
            await publisher.publishVia(client)
        subscribers = {}
        for i, client in enumerate(clients):
            for j, memberID in enumerate(ids):
                if i != j:
                    subscriber = Subscriber()
                    peers.append(subscriber)
                    await subscriber.subscribeVia(client, memberID, video=False)
                    subscribers[(i, j)] = subscriber
        for (i, j), subscriber in subscribers.items():
            await waitFor(lambda s=subscriber: len(s.audio) >= 25, timeout=30,
                          what=f"m{j}'s audio at m{i}")
            frequency, rms = subscriber.tone()
            self.assertTrue(425 < frequency < 455 and rms > 1000, (frequency, rms))
        self.assertEqual(await self.connected(server), members * members)
        return server, baseline

    async def connected(self, server) -> float:
        """The server's peer connections in the state connected."""
        from tests.test_api import _httpGet

        text = (await _httpGet(server.url, "/metrics")).decode()
        return metric(text, "ahoy_peer_connections", state="connected")

    @asyncTest
    async def test_sixMembersOneSocket(self):
        """
        Six members, each publishing and subscribing to the five others (36
        peer connections): the server process holds one UDP socket, and its
        metrics count no datagram dropped by the mux; after 30 s (ICE consent
        checks on one port too) every peer connection is still up.
        """
        port = freeUdpPort()
        server, baseline = await self.room(port)
        self.assertEqual(udpSockets(server.pid), 1)
        with open(f"/proc/{server.pid}/net/udp") as f:
            self.assertIn(f":{port:04X} ", f.read())
        self.fds = openFds(server.pid) - baseline
        from tests.test_api import _httpGet

        text = (await _httpGet(server.url, "/metrics")).decode()
        self.assertGreater(metric(text, "ahoy_forwarded_packets_total"), 0)
        for reason in (udpmux.UNKNOWN_ADDRESS, udpmux.UNKNOWN_UFRAG, udpmux.UNMATCHED_STUN):
            self.assertEqual(metric(text, "ahoy_dropped_packets_by_reason_total",
                                    reason=reason), 0)
        await asyncio.sleep(30)
        self.assertEqual(await self.connected(server), 36)
        self.assertEqual(udpSockets(server.pid), 1)

    @asyncTest
    async def test_perConnectionSockets(self):
        """C{udp_port = 0}: a socket per peer connection, as before (the comparison)."""
        server, baseline = await self.room(0, members=3)
        self.assertGreaterEqual(udpSockets(server.pid), 3 * 3)



class TapTests(TestCase):
    """C{--udp-port}, and a port that cannot be bound stopping C{twistd} with one line."""

    def test_option(self):
        from ahoyconference import tap

        o = tap.Options()
        o.parseOptions(["--udp-port=8443"])
        self.assertEqual(o["configuration"].ice.udp_port, 8443)
        o = tap.Options()
        o.parseOptions([])
        self.assertEqual(o["configuration"].ice.udp_port, 0)
        for bad in ("70000", "x", "-2"):
            e = self.assertRaises(SystemExit, tap.Options().parseOptions, [f"--udp-port={bad}"])
            self.assertIn("--udp-port", str(e.code))

    @asyncTest
    async def test_portTaken(self):
        from tests.test_tap import twistd

        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        server = twistd(self, '[ice]\nhost_addresses = ["127.0.0.1"]\n',
                        pluginArgs=[f"--udp-port={port}"])
        self.assertNotEqual(await server.awaitExit(), 0)
        self.assertIn(f"[ice] udp_port: cannot bind UDP 127.0.0.1:{port}", server.output())
        self.assertNotIn("Traceback", server.output())


class BatchTests(TestCase):
    """L{mmsg}: C{recvmmsg} and C{sendmmsg} through cffi, on real sockets."""

    def setUp(self):
        if not mmsg.available():
            raise SkipTest("no recvmmsg/sendmmsg here (the mux uses recvfrom/sendto)")
        self.a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (self.a, self.b):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            self.addCleanup(s.close)

    def test_receive(self):
        """Everything waiting, in order, with its source; then nothing."""
        receiver = mmsg.Receiver(self.b, size=8)
        self.assertEqual(receiver.receive(), [])
        sent = [os.urandom(n) for n in (1, 100, 1500, 0, 7)] + [b"x" * 3000]
        for data in sent:
            self.a.sendto(data, self.b.getsockname())
        got = receiver.receive()
        self.assertEqual([d for d, a in got], sent[:5] + [b"x" * mmsg.DATAGRAM])
        self.assertEqual({a for d, a in got}, {self.a.getsockname()})
        self.assertEqual(receiver.receive(), [])

    def test_sendBatch(self):
        """
        Copies queued from C buffers go out on flush, as they were when
        queued (the buffer may be written again meanwhile); a copy the
        kernel refuses is counted, the others go; a full batch flushes.
        """
        from cffi import FFI

        ffi = FFI()
        refused = []
        batch = mmsg.SendBatch(self.a, size=4, onRefused=lambda n, e: refused.append((n, e)))
        batch.holding = True
        buffers = [ffi.new("char[]", bytes([i]) * 50) for i in range(3)]
        senders = [batch.sender(b) for b in buffers]
        to = self.b.getsockname()
        senders[0](memoryview(b"\0" * 10), to)
        senders[1](memoryview(b"\0" * 20), ("::1", 9))  # not for an IPv4 socket
        senders[2](memoryview(b"\0" * 30), to)
        ffi.memmove(buffers[0], b"\7" * 50, 50)  # the session protects its next packet
        senders[0](memoryview(b"\0" * 11), to)
        self.assertEqual(len(batch), 4)
        self.assertEqual(batch.flush(), 1)
        self.assertEqual((batch.failed, batch.failedBytes), (1, 20))
        self.assertEqual(refused[0][0], 1)
        self.assertEqual(self.b.recv(100), b"\0" * 10)
        self.assertEqual(self.b.recv(100), b"\2" * 30)
        self.assertEqual(self.b.recv(100), b"\7" * 11)
        for n in range(5):
            senders[2](memoryview(b"\0" * (n + 1)), to)
        self.assertEqual(len(batch), 1)  # the fifth flushed the four before it
        batch.flush()
        self.assertEqual([len(self.b.recv(100)) for _ in range(5)], [1, 2, 3, 4, 5])

    def test_flushedSoonOutsideARead(self):
        """A copy queued outside the mux's read (a phone, a timer) goes out on the next turn."""
        from cffi import FFI

        ffi = FFI()
        buffer = ffi.new("char[]", b"abc")
        batch = mmsg.SendBatch(self.a, loop=asyncio.get_event_loop())
        batch.sender(buffer)(memoryview(b"123"), self.b.getsockname())

        async def check():
            await waitFor(lambda: len(batch) == 0, timeout=5)
            self.assertEqual(self.b.recv(100), b"abc")

        return Deferred.fromFuture(asyncio.ensure_future(check()))


class BrowserRoomTests(test_browser.BrowserTestCase):
    """
    Chromium and aiortc in one room on one port: two browsers (camera and
    microphone, each subscribed to the other) and four aiortc members who
    hear both.
    """

    timeout = 300

    def config(self):
        from tests.helpers import testConfig

        self.port = freeUdpPort()
        return testConfig(ice=IceSettings(host_addresses=("127.0.0.1",), udp_port=self.port))

    @asyncTest
    async def test_sixMembers(self):
        """
        Both browsers play each other's picture and hear each other; every
        aiortc member hears both browsers; every server-side candidate
        is the one port, and each live peer connection has its ufrag there.
        """
        import aioice.ice

        from tests.test_browser import MEDIA_WAIT

        self.patch(aioice.ice, "get_host_addresses",
                   lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"])
        self.patch(aioice.ice, "CONSENT_FAILURES", 1000)  # our busy peers' patience only
        alice = await self.newPage("alice")
        await alice.page.fill("#join-name", "Alice")
        await alice.page.fill("#create-id", "one-port")
        await alice.page.click("#create-submit")
        await alice.waitFor("window.ahoy.state.screen === 'room'", "in the room")
        bob = await self.newPage("bob", room="one-port")
        await bob.joinRoom("one-port", "Bob")
        await alice.shareBoth()
        await bob.shareBoth()
        peers = []
        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(
            asyncio.gather(*[p.close() for p in peers]))))
        await alice.waitSubscribed("Bob")
        await bob.waitSubscribed("Alice")
        await alice.assertVideoPlaying("Bob")
        await bob.assertVideoPlaying("Alice")
        await alice.assertAudioArriving("Bob")
        await bob.assertAudioArriving("Alice")
        # Four aiortc members join and hear both browsers.
        for name in ("Ann", "Ben", "Cat", "Dan"):
            robot, joined = await join(self.server.url, "one-port", name)
            self.clients.append(robot)
            for member in joined["members"]:
                if member["name"] in ("Alice", "Bob"):
                    subscriber = Subscriber()
                    peers.append(subscriber)
                    await subscriber.subscribeVia(robot, member["memberID"], video=False)
                    await waitFor(lambda s=subscriber: len(s.audio) >= 50, timeout=MEDIA_WAIT,
                                  what=f"{member['name']}'s audio at {name}")
        self.assertEqual(len(self.server.service.conference("one-port").members), 6)
        engine = self.server.service.engine
        ports = set()
        for peer in engine._peers:
            ports |= candidatePorts(peer.offerSdp)
        self.assertEqual(ports, {self.port})
        self.assertEqual(engine.onePort.sizes()["ufrags"], len(engine._peers))
        # (No check of the mux's drops here: each page's first publishing peer
        # connection is replaced when it adds video, and what Chromium still
        # sends on it after we closed it is rightly dropped as unknown.)
