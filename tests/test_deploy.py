"""
Deployments as they are (issue 14, docs/operations.md): reverse proxies
(C{[server] trusted_proxies}), per-address limits by /64 for IPv6, defaults
an office behind one NAT address does not hit, the same-origin default for
browser connections, and no address-trusting policy with every Origin open.
"""

from __future__ import annotations

import os
import subprocess
import sys

import websockets
from twisted.trial import unittest

from ahoyconference.config import Config, IceSettings, Limits, parseConfig
from ahoyconference.plugins.allowlist_policy import allowlistPolicyPlugin
from tests.helpers import LOGLINES, Client, asyncTest, testConfig
from tests.test_api import APITestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROXIED = dict(max_connections_per_ip=2, max_conferences_per_client=1, join_rate=0, chat_rate=0)


def proxyConfig(header="x-forwarded-for", **limits) -> Config:
    return testConfig(limits=Limits(**{**PROXIED, **limits}),
                      trusted_proxies=parseConfig({"server": {"trusted_proxies": ["127.0.0.1"]}})
                      .trusted_proxies, proxy_header=header)


class ProxyTests(APITestCase):
    """The client's address behind a trusted proxy, and only then."""

    async def via(self, server, value, header="X-Forwarded-For") -> Client:
        client = await Client.connect(server.url, additional_headers={header: value})
        self.clients.append(client)
        return client

    def addresses(self, server) -> list[str]:
        return sorted(session.client.ip for session in server.service.sessions)

    @asyncTest
    async def test_untrustedPeerHeaderIgnored(self):
        """Without trusted proxies, X-Forwarded-For cannot dodge the per-address limit."""
        s = await self.server(config=testConfig(limits=Limits(**PROXIED)))
        await self.via(s, "198.51.100.1")
        await self.via(s, "198.51.100.2")
        with self.assertRaises(websockets.InvalidStatus) as e:
            await self.via(s, "198.51.100.3")
        self.assertEqual(e.exception.response.status_code, 503)
        self.assertEqual(self.addresses(s), ["127.0.0.1", "127.0.0.1"])

    @asyncTest
    async def test_trustedProxyNamesTheClient(self):
        """
        From a trusted proxy the rightmost untrusted address is the client:
        each client counts for itself, and the moderator sees its address.
        """
        s = await self.server(config=proxyConfig())
        moderator = await self.via(s, "203.0.113.50")
        r = await moderator.request("CONFERENCE_CREATE_request", conferenceID="room")
        self.assertEqual(r["status"], 200)
        r = await moderator.request("CONFERENCE_JOIN_request", conferenceID="room", name="mod")
        self.assertEqual(r["status"], 200)
        # A forged first entry (the client's own header) is not believed: the
        # proxy appended the address it saw.
        clients = [await self.via(s, f"192.0.2.66, 198.51.100.{i}") for i in range(1, 6)]
        self.assertEqual(len(clients), 5)  # five clients through one proxy: no 503
        r = await clients[0].request("CONFERENCE_JOIN_request", conferenceID="room", name="c")
        self.assertEqual(r["status"], 200)
        seen = await moderator.expect("CONFERENCE_JOIN_indication")
        self.assertEqual(seen["member"].get("ip"), "198.51.100.1")
        # The per-address limit (2) applies to each client's address.
        await self.via(s, "198.51.100.9")
        await self.via(s, "198.51.100.9")
        with self.assertRaises(websockets.InvalidStatus) as e:
            await self.via(s, "198.51.100.9")
        self.assertEqual(e.exception.response.status_code, 503)
        # So does the per-client conference limit (1).
        r = await clients[1].request("CONFERENCE_CREATE_request", conferenceID="mine")
        self.assertEqual(r["status"], 200)
        other = await self.via(s, "198.51.100.2")
        r = await other.request("CONFERENCE_CREATE_request", conferenceID="mine-too")
        self.assertEqual(r["status"], 503)

    @asyncTest
    async def test_forwardedHeaderAndIPv6By64(self):
        """
        RFC 7239 C{Forwarded} (when configured); IPv6 clients count by /64:
        another address of the same /64 is the same client.
        """
        s = await self.server(config=proxyConfig("forwarded", max_connections_per_ip=1))
        await self.via(s, 'for="[2001:db8:1:2::1]:4711";proto=https', "Forwarded")
        self.assertIn("2001:db8:1:2::1", self.addresses(s))
        with self.assertRaises(websockets.InvalidStatus) as e:
            await self.via(s, 'for="[2001:db8:1:2:ffff::7]"', "Forwarded")
        self.assertEqual(e.exception.response.status_code, 503)
        await self.via(s, 'for="[2001:db8:1:3::1]"', "Forwarded")
        # X-Forwarded-For is not the configured header: ignored, the proxy itself counts.
        await self.via(s, "198.51.100.4", "X-Forwarded-For")
        self.assertIn("127.0.0.1", self.addresses(s))
        self.assertEqual(s.service.counters["refused_connections"]["per_address"], 1)


class OfficeDefaultsTests(APITestCase):
    """A 500-person office behind one NAT address, with the default limits."""

    @asyncTest
    async def test_oneAddressManyPeople(self):
        """
        120 connections and 30 conferences from 127.0.0.1 with the default
        [limits] (it was 50 and 10): all served.
        """
        s = await self.server(config=Config(ice=IceSettings(host_addresses=("127.0.0.1",))))
        clients = []
        for _ in range(120):
            clients.append(await self.connect(s.url))
        for i in range(30):
            r = await clients[i].request("CONFERENCE_CREATE_request", conferenceID=f"meeting-{i}")
            self.assertEqual(r["status"], 200, i)
        self.assertEqual(len(s.service.sessions), 120)


class OriginTests(APITestCase):
    """The server's own origin by default, plus the list; "*" for any."""

    async def attempt(self, server, origin) -> int:
        try:
            client = await Client.connect(server.url, origin=origin)
        except websockets.InvalidStatus as e:
            return e.response.status_code
        self.clients.append(client)
        return 101

    @asyncTest
    async def test_defaultIsOwnOrigin(self):
        s = await self.server()
        port = s.port.getHost().port
        for origin, status in ((f"http://127.0.0.1:{port}", 101), (f"https://127.0.0.1:{port}", 101),
                               (f"ws://127.0.0.1:{port}", 101), (None, 101),
                               ("https://evil.example", 403), (f"http://127.0.0.1:{port + 1}", 403),
                               (f"ftp://127.0.0.1:{port}", 403),
                               (f"http://127.0.0.1.evil.example:{port}", 403)):
            self.assertEqual(await self.attempt(s, origin), status, origin)
        self.assertEqual(s.service.counters["refused_connections"]["origin"], 4)
        self.assertIn(await self.attempt(s, "null"), (400, 403))  # a sandboxed page: refused
        refusals = [line for line in LOGLINES if "Origin" in line and "not allowed" in line]
        self.assertTrue(refusals)

    @asyncTest
    async def test_listAddsToOwnOrigin(self):
        s = await self.server(config=testConfig(allowed_origins=("https://good.example",)))
        port = s.port.getHost().port
        self.assertEqual(await self.attempt(s, "https://good.example"), 101)
        self.assertEqual(await self.attempt(s, f"http://127.0.0.1:{port}"), 101)
        self.assertEqual(await self.attempt(s, "https://evil.example"), 403)

    @asyncTest
    async def test_clusterNodesOfOneHost(self):
        """
        In a cluster a page of one node follows a 302 to another node of the
        same host (another port): the host name alone must match.
        """
        s = await self.server(config=testConfig(cluster={
            "redis": "redis://127.0.0.1:1/0", "node_id": "a", "node_url": "ws://127.0.0.1:1/"}))
        port = s.port.getHost().port
        self.assertEqual(await self.attempt(s, f"http://127.0.0.1:{port + 1}"), 101)
        self.assertEqual(await self.attempt(s, f"http://127.0.0.2:{port}"), 403)

    @asyncTest
    async def test_starAllowsAny(self):
        s = await self.server(config=testConfig(allowed_origins=("*",)))
        self.assertEqual(await self.attempt(s, "https://evil.example"), 101)


class AddressTrustingPolicyTests(unittest.TestCase):
    """The allowlist policy trusts addresses: never with allowed_origins = ["*"]."""

    def config(self, origins: str) -> str:
        path = os.path.abspath(self.mktemp() + ".toml")
        with open(path, "w") as f:
            f.write(f'[server]\nallowed_origins = {origins}\n'
                    '[policy]\nname = "allowlist"\ncreate_networks = ["10.0.0.0/8"]\n')
        return path

    def test_twistdRefusesToStart(self):
        """One line naming the key, exit status not 0."""
        path = self.config('["*"]')
        result = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "twistd"), "--nodaemon", "--pidfile=",
             "ahoyconference", f"--config={path}", "--port=tcp:0:interface=127.0.0.1"],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=120)
        self.assertNotEqual(result.returncode, 0)
        lines = result.stdout.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stdout)
        self.assertIn("[server] allowed_origins", lines[0])
        self.assertIn("allowlist", lines[0])

    def test_reloadRefused(self):
        """A reload to ["*"] is refused and logged; the running Origins stay."""
        from twisted.internet import reactor

        from ahoyconference.config import loadConfig
        from ahoyconference.nomedia import NoMediaEngine
        from ahoyconference.service import ConferenceService
        from ahoyconference.tap import _ReloadOnHangup

        policy = allowlistPolicyPlugin.makePolicy({"create_networks": ["10.0.0.0/8"]}, reactor)
        path = self.config('["https://intranet.example"]')
        service = ConferenceService(loadConfig(path), reactor, policy, NoMediaEngine)
        top = _ReloadOnHangup(service, path, reactor)
        with open(path, "w") as f:
            f.write('[server]\nallowed_origins = ["*"]\n')
        start = len(LOGLINES)
        top.reload()
        self.assertEqual(service.config.allowed_origins, ("https://intranet.example",))
        self.assertTrue(any("allowed_origins" in line and "reload failed" in line
                            for line in LOGLINES[start:]))

    def test_allowlistTrustsAddresses(self):
        """The allowlist policy says it trusts addresses; the password policy does not."""
        from twisted.internet import reactor
        from zope.interface.verify import verifyObject

        from ahoyconference.interfaces import IAddressTrustingPolicy
        from ahoyconference.policy import PasswordPolicy, checkOrigins

        policy = allowlistPolicyPlugin.makePolicy({"join_networks": ["10.0.0.0/8"]}, reactor)
        self.assertTrue(verifyObject(IAddressTrustingPolicy, policy))
        self.assertFalse(IAddressTrustingPolicy.providedBy(PasswordPolicy()))
        checkOrigins(PasswordPolicy(), ("*",))
        checkOrigins(policy, ("https://intranet.example",))
        self.assertRaises(ValueError, checkOrigins, policy, ("*",))


class AddressParsingTests(unittest.TestCase):
    """L{clientAddress} and L{addressKey} on the header forms proxies write."""

    proxies = parseConfig({"server": {"trusted_proxies": ["127.0.0.1", "10.0.0.0/8"]}}) \
        .trusted_proxies

    def test_chains(self):
        from ahoyconference.addresses import clientAddress

        def xff(value, peer="127.0.0.1"):
            return clientAddress(peer, {"x-forwarded-for": value}, self.proxies)

        self.assertEqual(xff("198.51.100.1"), "198.51.100.1")
        # Two trusted hops, the client's forged entry first: the forged one loses.
        self.assertEqual(xff("6.6.6.6, 198.51.100.1, 10.1.2.3"), "198.51.100.1")
        self.assertEqual(xff("198.51.100.1:4711"), "198.51.100.1")
        self.assertEqual(xff("unknown"), "127.0.0.1")  # no address: the proxy itself
        self.assertEqual(xff("10.9.9.9"), "10.9.9.9")  # only trusted hops: the leftmost
        self.assertEqual(xff("198.51.100.1", peer="192.0.2.1"), "192.0.2.1")  # not a proxy
        self.assertEqual(clientAddress("127.0.0.1", {}, self.proxies), "127.0.0.1")
        fwd = {"forwarded": 'for=6.6.6.6, for="[2001:db8::5]:80";proto=https;by=10.0.0.1'}
        self.assertEqual(clientAddress("127.0.0.1", fwd, self.proxies, "forwarded"),
                         "2001:db8::5")
        self.assertEqual(clientAddress("127.0.0.1", fwd, self.proxies), "127.0.0.1")

    def test_keys(self):
        from ahoyconference.addresses import addressKey

        self.assertEqual(addressKey("192.0.2.7"), "192.0.2.7")
        self.assertEqual(addressKey("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(addressKey("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64")
        self.assertEqual(addressKey("2001:db8:1:2::9"), "2001:db8:1:2::/64")
        self.assertEqual(addressKey("not an address"), "not an address")
