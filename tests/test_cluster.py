# -*- test-case-name: tests.test_cluster -*-
"""
A cluster of three real C{twistd} nodes and a real C{redis-server} (Debian's,
started here on a loopback port in a temporary directory): placement on the
least loaded node, 302 to the hosting node, media after the redirect, a node
killed with SIGKILL, Redis stopped and started again (docs/cluster.md).

Skipped only when C{/usr/bin/redis-server} is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time

from twisted.trial.unittest import SkipTest, TestCase

from ahoyconference import passwords
from ahoyconference.cluster import loadScore, settingsFrom, storedSettings
from ahoyconference.interfaces import ConferenceSettings
from tests.helpers import Client, asyncTest
from tests.mediaclients import Publisher, Subscriber, waitFor
from tests.serverprocess import ServerProcess, freePort
from tests.test_media_engine import loopbackOnly

REDIS = "/usr/bin/redis-server"
TTL = 3  # seconds: a node's heartbeat every second


class PasswordHashTests(TestCase):
    """L{ahoyconference.passwords}: what the directory stores."""

    def test_hashAndMatch(self):
        stored = passwords.hashPassword("sesame", iterations=1000)
        self.assertTrue(passwords.isHashed(stored))
        self.assertNotIn("sesame", stored)
        self.assertTrue(passwords.matches("sesame", stored))
        self.assertTrue(passwords.matches("sesame", stored))  # cached
        self.assertFalse(passwords.matches("sesam", stored))
        self.assertFalse(passwords.matches("sesame", stored[:-4] + "AAA="))
        self.assertFalse(passwords.matches("x", "pbkdf2-sha256$nonsense"))
        self.assertNotEqual(passwords.hashPassword("sesame"), passwords.hashPassword("sesame"))
        self.assertEqual(passwords.hashPassword(""), "")
        self.assertTrue(passwords.matches("plain", "plain"))

    def test_storedSettings(self):
        """Stored settings keep every field, passwords only as hashes."""
        settings = ConferenceSettings("c", "C", "d", password="s", listenerPassword="",
                                      moderatorPassword="m", maxMember=3, timeLimit=60)
        record = storedSettings(settings)
        self.assertNotIn('"s"', json.dumps(record))
        back = settingsFrom(json.loads(json.dumps(record)))
        self.assertEqual((back.conferenceName, back.maxMember, back.timeLimit, back.listenerPassword),
                         ("C", 3, 60, ""))
        self.assertTrue(passwords.matches("m", back.moderatorPassword))

    def test_loadScore(self):
        self.assertLess(loadScore({"members": 1, "pps": 0}), loadScore({"members": 0, "pps": 500}))


class Node(ServerProcess):
    """One C{twistd ahoyconference} node of the test cluster (tests/serverprocess.py)."""

    nodeID: str

    @classmethod
    def inCluster(cls, tmp: str, nodeID: str, redisPort: int) -> Node:
        port = freePort()
        node = cls.twistd(
            tmp, '[ice]\nhost_addresses = ["127.0.0.1"]\n'
                 "[limits]\njoin_rate = 0\nchat_rate = 0\nmax_conferences_per_client = 0\n"
                 f'[cluster]\nredis = "redis://127.0.0.1:{redisPort}/0"\n'
                 f'node_id = "unused"\nnode_url = "ws://unused/"\nttl = {TTL}\n'
                 '[[rooms]]\nid = "lobby"\npassword = "lobby-pw"\n',
            port=port, name=nodeID,
            pluginArgs=[f"--node-id={nodeID}", f"--node-url=ws://127.0.0.1:{port}/"])
        node.nodeID = nodeID
        return node

    def logText(self) -> str:
        return self.output()


class ClusterTests(TestCase):
    """Three nodes, one Redis."""

    @asyncTest
    async def test_browserFollowsRedirect(self):
        """
        A page served by node 2 joins a conference hosted by node 1: the
        join answers 302, the client opens a WebSocket to node 1 (an Origin
        of the same host, another port: accepted in a cluster) and is in the
        room there, seen by a member of node 1.
        """
        from playwright.async_api import async_playwright

        from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

        if not os.path.exists(CHROMIUM):
            raise SkipTest(f"{CHROMIUM} is missing")
        n1, n2, _ = self.nodes
        owner = await self.connect(n1)
        r = await owner.request("CONFERENCE_CREATE_request", conferenceID="web")
        self.assertEqual(await self.r.get("ahoy:host:web"), "n1")
        r = await owner.request("CONFERENCE_JOIN_request", conferenceID="web", name="owner")
        self.assertEqual(r["status"], 200)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await page.goto(f"http://127.0.0.1:{n2.port}/?loopbackOnly=1&testhook=1")
                await page.wait_for_function("window.ahoy && window.ahoy.state.connection === 'open'",
                                             timeout=20000)
                await page.fill("#join-room", "web")
                await page.fill("#join-name", "Bea")
                await page.click("#join-submit")
                await page.wait_for_function("window.ahoy.state.screen === 'room'", timeout=20000)
            finally:
                await browser.close()
        joined = await owner.expect("CONFERENCE_JOIN_indication")
        self.assertEqual(joined["member"]["name"], "Bea")
        self.assertIn("302", n2.logText())

    timeout = 120

    def setUp(self):
        if not os.path.exists(REDIS):
            raise SkipTest(f"{REDIS} is missing (apt-get install redis-server)")
        loopbackOnly(self)
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        self.redisPort = freePort()
        self.redis = None
        self.startRedis()
        self.nodes = [Node.inCluster(self.tmp, f"n{i}", self.redisPort) for i in (1, 2, 3)]
        for node in self.nodes:
            node.start()
        self.clients: list[Client] = []
        self.peers: list = []
        return self._waitForNodes()

    def startRedis(self) -> None:
        self.redis = subprocess.Popen(
            [REDIS, "--port", str(self.redisPort), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.tmp, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.redisPort), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stopRedis(self) -> None:
        self.redis.terminate()
        self.redis.wait(10)

    @asyncTest
    async def _waitForNodes(self):
        import redis.asyncio

        self.r = redis.asyncio.Redis(port=self.redisPort, decode_responses=True)
        await waitFor(lambda: all(n.alive() for n in self.nodes), 1, what="nodes")

        async def registered():
            keys = await self.r.keys("ahoy:node:*")
            return len(keys) == 3
        await self.until(registered, "three nodes registered", 45)

    async def until(self, predicate, what: str, timeout: float = 20.0):
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                if await predicate():
                    return
            except Exception:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.2)

    @asyncTest
    async def tearDown(self):
        for c in self.clients:
            await c.close()
        for p in self.peers:
            await p.close()
        for node in self.nodes:
            node.stop()
        try:
            await self.r.aclose()
        except Exception:
            pass
        if self.redis.poll() is None:
            self.stopRedis()

    async def connect(self, node: Node) -> Client:
        c = await Client.connect(node.url)
        self.clients.append(c)
        return c

    async def joinFollowing(self, node: Node, conferenceID: str, name: str, password: str = ""):
        """Join through a node, following a 302 as clients do; (client, response, hops)."""
        url, hops = node.url, []
        for _ in range(3):
            c = await Client.connect(url)
            self.clients.append(c)
            r = await c.request("CONFERENCE_JOIN_request", conferenceID=conferenceID,
                                name=name, password=password)
            if r["status"] != 302:
                return c, r, hops
            self.assertEqual(r["reason"], "moved")
            hops.append(r["url"])
            url = r["url"]
            await c.close()
        raise AssertionError(f"redirected too often: {hops}")

    async def nodeLoad(self, nodeID: str) -> dict:
        value = await self.r.get(f"ahoy:node:{nodeID}")
        return json.loads(value) if value else {}

    @asyncTest
    async def test_placeRedirectMedia(self):
        """
        A create via node 1 (the busiest) is placed on another node; the
        record holds no password in clear; a join via the third node is
        302 with that node's URL, the client follows, the passwords apply
        there, and media flows between two members who came through
        different nodes.
        """
        n1, n2, n3 = self.nodes
        owner = await self.connect(n1)
        r = await owner.request("CONFERENCE_CREATE_request", conferenceID="warm")
        self.assertEqual(r["status"], 200)
        self.assertEqual(await self.r.get("ahoy:host:warm"), "n1")  # all idle: the first ID
        await owner.request("CONFERENCE_JOIN_request", conferenceID="warm", name="w1")
        other = await self.connect(n1)
        await other.request("CONFERENCE_JOIN_request", conferenceID="warm", name="w2")
        await self.until(lambda: _members(self, "n1", 2), "node 1's load published")

        creator = await self.connect(n1)
        r = await creator.request("CONFERENCE_CREATE_request", conferenceID="team",
                                  password="crew-pw", moderatorPassword="boss-pw")
        self.assertEqual((r["status"], r["conferenceID"]), (200, "team"))
        host = await self.r.get("ahoy:host:team")
        self.assertIn(host, ("n2", "n3"))
        record = await self.r.get("ahoy:conf:team")
        self.assertNotIn("crew-pw", record)
        self.assertNotIn("boss-pw", record)
        r = await creator.request("CONFERENCE_CREATE_request", conferenceID="team")
        self.assertEqual(r["status"], 486)  # unique across the cluster
        c = await self.connect(n2 if host == "n3" else n3)
        r = await c.request("CONFERENCE_CREATE_request", conferenceID="team")
        self.assertEqual(r["status"], 486)

        hostNode = {"n2": n2, "n3": n3}[host]
        via = n3 if host == "n2" else n2
        c, r, hops = await self.joinFollowing(via, "team", "wrong", "nope")
        self.assertEqual((r["status"], hops), (403, [hostNode.url]))
        alice, r, hops = await self.joinFollowing(via, "team", "alice", "boss-pw")
        self.assertEqual((r["status"], r["moderator"], hops), (200, True, [hostNode.url]))
        aliceID = r["memberID"]
        bob, r, hops = await self.joinFollowing(n1, "team", "bob", "crew-pw")
        self.assertEqual((r["status"], r["moderator"], hops), (200, False, [hostNode.url]))
        # The package's client follows the 302 by itself.
        carol = await self.connect(via)
        r = await carol.join("team", "carol", "crew-pw")
        self.assertEqual((r["moderator"], carol.redirects, carol.memberID),
                         (False, [hostNode.url], r["memberID"]))
        await waitFor(lambda: any(m["messageType"] == "CONFERENCE_JOIN_indication"
                                  and m["member"]["name"] == "carol" for m in alice.inbox),
                      timeout=10, what="alice told that carol joined on the host")

        await alice.request("MEDIA_SHARE_request", audio=True, video=True)
        offer = await alice.expect("MEDIA_RECEIVE_request")
        publisher = Publisher()
        self.peers.append(publisher)
        await alice.send({"messageType": "MEDIA_RECEIVE_response", "status": 200,
                          "sdp": await publisher.answer(offer["sdp"]),
                          "transactionID": offer["transactionID"]})
        await bob.expect("MEDIA_indication", timeout=30)
        await bob.request("MEDIA_request", members=[
            {"memberID": aliceID, "audio": True, "video": True}])
        request = await bob.expect("SDP_request")
        subscriber = Subscriber()
        self.peers.append(subscriber)
        await bob.send({"messageType": "SDP_response", "status": 200,
                        "sdp": await subscriber.answer(request["sdp"]), "transactionID": aliceID})
        await waitFor(lambda: len(subscriber.frames) >= 10 and len(subscriber.audio) >= 20,
                      timeout=30, what="media through the hosting node")
        await self.until(lambda: _positive(self, host, "pps"), "the host's packet rate published")

    @asyncTest
    async def test_nodeKilled(self):
        """
        The hosting node dies (SIGKILL): within the TTL its conference has
        no node; a member that comes back re-creates it on a live node
        from the stored parameters (passwords still apply), within seconds.
        """
        n1 = self.nodes[0]
        c = await self.connect(n1)
        r = await c.request("CONFERENCE_CREATE_request", conferenceID="doomed",
                            password="pw-123456")
        self.assertEqual(r["status"], 200)
        member, r, _ = await self.joinFollowing(n1, "doomed", "m", "pw-123456")
        self.assertEqual(r["status"], 200)
        host = await self.r.get("ahoy:host:doomed")
        victim = next(n for n in self.nodes if n.nodeID == host)
        killedAt = time.monotonic()
        victim.kill()
        await waitFor(lambda: member.closed.done(), timeout=10, what="the member's connection")

        async def gone():
            return await self.r.get("ahoy:host:doomed") is None
        await self.until(gone, "the dead node's conference released", 15)
        self.assertLessEqual(time.monotonic() - killedAt, 10.0)
        survivor = next(n for n in self.nodes if n is not victim)
        c, r, _ = await self.joinFollowing(survivor, "doomed", "again", "wrong-pw")
        self.assertEqual(r["status"], 403)
        c, r, hops = await self.joinFollowing(survivor, "doomed", "again", "pw-123456")
        self.assertEqual(r["status"], 200, r)
        self.assertLessEqual(time.monotonic() - killedAt, 20.0)
        self.assertNotIn(victim.url, hops)
        self.assertIn(await self.r.get("ahoy:host:doomed"),
                      {n.nodeID for n in self.nodes if n is not victim})
        # the permanent room of the configuration is placed on a live node too
        c, r, _ = await self.joinFollowing(survivor, "lobby", "l", "lobby-pw")
        self.assertEqual(r["status"], 200)

    @asyncTest
    async def test_redisOutage(self):
        """
        Redis stops: the conference a node hosts keeps working (chat), a
        create and a join for a conference of another node answer 503, one
        log line per outage; Redis comes back (empty): the node registers
        again, publishes what it hosts, and creates work again.
        """
        n1, n2, _ = self.nodes
        a = await self.connect(n1)
        await a.request("CONFERENCE_CREATE_request", conferenceID="here")
        self.assertEqual(await self.r.get("ahoy:host:here"), "n1")
        a, r, _ = await self.joinFollowing(n1, "here", "a")
        b, r, _ = await self.joinFollowing(n1, "here", "b")
        self.stopRedis()
        for i in range(3):
            r = await a.request("CHAT_MESSAGE_request", message={"text": f"still here {i}"})
            self.assertEqual(r["status"], 200)
            await b.expect("CHAT_MESSAGE_indication")
            c = await self.connect(n1)
            r = await c.request("CONFERENCE_CREATE_request", conferenceID=f"new-{i}")
            self.assertEqual(r["status"], 503)
            c = await self.connect(n2)
            r = await c.request("CONFERENCE_JOIN_request", conferenceID="here", name="x")
            self.assertEqual(r["status"], 503)
        await asyncio.sleep(TTL)  # heartbeats fail too
        self.assertEqual(n1.logText().count("unreachable"), 1)
        self.startRedis()
        import redis.asyncio

        await self.r.aclose()
        self.r = redis.asyncio.Redis(port=self.redisPort, decode_responses=True)

        async def republished():
            return (await self.r.get("ahoy:host:here") == "n1" and
                    await self.r.get("ahoy:conf:here") is not None)
        await self.until(republished, "node 1 publishing its conference again", 15)
        self.assertEqual(n1.logText().count("reachable again"), 1)
        c = await self.connect(n2)
        r = await c.request("CONFERENCE_CREATE_request", conferenceID="after")
        self.assertEqual(r["status"], 200)
        c, r, _ = await self.joinFollowing(n2, "here", "late")
        self.assertEqual(r["status"], 200)
        await a.expect("CONFERENCE_JOIN_indication")


async def _members(test: ClusterTests, nodeID: str, count: int) -> bool:
    return (await test.nodeLoad(nodeID)).get("members") == count


async def _positive(test: ClusterTests, nodeID: str, key: str) -> bool:
    return (await test.nodeLoad(nodeID)).get(key, 0) > 0
