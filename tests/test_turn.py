# -*- test-case-name: tests.test_turn -*-
"""
TURN for clients (docs/protocol.md 4.11): the C{[ice.turn]} table, coturn's
REST credentials, and the C{iceServers} of a real server's join response.
(The credential working against a real coturn is tested over the network
test bed: L{tests.test_netbed}.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time

from twisted.trial import unittest

from ahoyconference.config import ConfigError, IceSettings, parseConfig
from ahoyconference.turn import TurnSettings, credentials, iceServers
from tests import helpers
from tests.helpers import Server, asyncTest, createAndJoin, join, testConfig

SECRET = "north-wind-Qx7"
URLS = ["turn:203.0.113.10:3478?transport=udp", "turn:203.0.113.10:3478?transport=tcp"]


class CredentialTests(unittest.TestCase):
    """coturn's REST form: C{EXPIRY:MEMBERID} and base64(HMAC-SHA1)."""

    def test_knownValue(self):
        """
        The password matches one computed by OpenSSL
        (C{printf 1700003600:abc | openssl dgst -sha1 -hmac north-wind-Qx7 -binary | base64}).
        """
        settings = TurnSettings(urls=tuple(URLS), secret=SECRET.encode(), ttl=3600)
        self.assertEqual(credentials(settings, "abc", 1700000000.7),
                         ("1700003600:abc", "RAEvxv+yFErcGEI4irsIppKO918="))

    def test_iceServers(self):
        """One entry with every URL; none without settings."""
        settings = TurnSettings(urls=tuple(URLS), secret=b"s3cret-value", ttl=600)
        servers = iceServers(settings, "m1", 1000)
        self.assertEqual(servers, [{"urls": URLS, "username": "1600:m1",
                                    "credential": credentials(settings, "m1", 1000)[1]}])
        self.assertEqual(iceServers(None, "m1", 1000), [])

    def test_secretNotInRepr(self):
        """The secret is not in the settings' repr (nor the config's)."""
        settings = TurnSettings(urls=tuple(URLS), secret=b"s3cret-value", ttl=600)
        self.assertNotIn("s3cret-value", repr(settings))
        config = parseConfig({"ice": {"turn": {"urls": URLS, "secret": "s3cret-value"}}})
        self.assertNotIn("s3cret-value", repr(config))


class ConfigTests(unittest.TestCase):
    """The C{[ice.turn]} table and its mistakes."""

    def parse(self, turn: dict):
        return parseConfig({"ice": {"turn": turn}}, "ahoy.toml").ice.turn

    def test_default(self):
        """No table: no TURN."""
        self.assertIsNone(parseConfig({}).ice.turn)

    def test_secret(self):
        """urls, secret, ttl (default one day)."""
        turn = self.parse({"urls": URLS, "secret": SECRET})
        self.assertEqual(turn, TurnSettings(urls=tuple(URLS), secret=SECRET.encode(), ttl=86400))
        self.assertEqual(self.parse({"urls": URLS, "secret": SECRET, "ttl": 600}).ttl, 600)

    def test_secretFile(self):
        """The first line of secret_file is the secret."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(SECRET + "\n")
        self.assertEqual(self.parse({"urls": URLS, "secret_file": path}).secret, SECRET.encode())

    def assertRefused(self, turn: dict, key: str, words: str):
        with self.assertRaises(ConfigError) as e:
            self.parse(turn)
        self.assertIn(f"ahoy.toml: [ice.turn] {key}", str(e.exception))
        self.assertIn(words, str(e.exception))
        return str(e.exception)

    def test_mistakes(self):
        """Each mistake names the key; the secret is never echoed."""
        self.assertRefused({"secret": SECRET}, "urls", "is required")
        self.assertRefused({"urls": ["stun:x"], "secret": SECRET}, "urls", "not a turn:")
        self.assertRefused({"urls": [3], "secret": SECRET}, "urls", "must be a string")
        self.assertRefused({"urls": URLS}, "secret", "exactly one")
        self.assertRefused({"urls": URLS, "secret": SECRET, "secret_file": "/x"},
                           "secret", "exactly one")
        self.assertRefused({"urls": URLS, "secret": ""}, "secret", "empty")
        self.assertRefused({"urls": URLS, "secret": SECRET, "ttl": 59}, "ttl", "at least 60")
        self.assertRefused({"urls": URLS, "secret": SECRET, "port": 1}, "port", "unknown key")
        self.assertRefused({"urls": URLS, "secret_file": "/nonexistent/turn-secret"},
                           "secret_file", "cannot read")
        text = self.assertRefused({"urls": URLS, "secret": ["north-wind-Qx7"]},
                                  "secret", "must be a string")
        self.assertNotIn(SECRET, text)
        empty = self.mktemp()
        open(empty, "w").close()
        self.assertRefused({"urls": URLS, "secret_file": empty}, "secret_file", "empty")


class JoinResponseTests(unittest.TestCase):
    """A real server's C{CONFERENCE_JOIN_response}."""

    @asyncTest
    async def test_iceServers(self):
        """
        With C{[ice.turn]}, every join response carries that member's own
        credential, valid for C{ttl} seconds from now; the secret appears in
        no frame and no log line (L{tests.test_zz_secrets} checks too).
        """
        secret = "turn-secret-" + base64.b32encode(os.urandom(10)).decode()
        helpers.SECRETS.add(secret)
        turn = TurnSettings(urls=tuple(URLS), secret=secret.encode(), ttl=3600)
        config = testConfig(ice=IceSettings(host_addresses=("127.0.0.1",), turn=turn))
        s = await Server(config=config).start()
        clients = []
        try:
            before = int(time.time())
            alice, joined = await createAndJoin(s.url, conferenceID="turn-room")
            clients.append(alice)
            bob, joinedBob = await join(s.url, conferenceID="turn-room")
            clients.append(bob)
            after = int(time.time())
            for response in (joined, joinedBob):
                (entry,) = response["iceServers"]
                self.assertEqual(entry["urls"], URLS)
                expiry, member = entry["username"].split(":")
                self.assertEqual(member, response["memberID"])
                self.assertTrue(before + 3600 <= int(expiry) <= after + 3600, entry)
                expected = base64.b64encode(hmac.new(secret.encode(), entry["username"].encode(),
                                                     hashlib.sha1).digest()).decode()
                self.assertEqual(entry["credential"], expected)
            self.assertNotEqual(joined["iceServers"], joinedBob["iceServers"])
        finally:
            for c in clients:
                await c.close()
            await s.stop()
        self.assertNotIn(secret, "\n".join(helpers.TRANSCRIPT))
        self.assertNotIn(secret, "\n".join(helpers.LOGLINES))

    @asyncTest
    async def test_reload(self):
        """A reload takes new TURN settings for the next joins (a rotated secret)."""
        s = await Server().start()
        clients = []
        try:
            c, joined = await createAndJoin(s.url, conferenceID="reload-room")
            clients.append(c)
            self.assertNotIn("iceServers", joined)
            turn = TurnSettings(urls=(URLS[1],), secret=b"rotated-secret-9", ttl=600)
            s.service.reload(testConfig(ice=IceSettings(host_addresses=("127.0.0.1",),
                                                         turn=turn)))
            c2, joined = await join(s.url, conferenceID="reload-room")
            clients.append(c2)
            (entry,) = joined["iceServers"]
            self.assertEqual(entry["urls"], [URLS[1]])
            self.assertEqual(entry["credential"],
                             credentials(turn, joined["memberID"],
                                         int(entry["username"].split(":")[0]) - 600)[1])
        finally:
            for c in clients:
                await c.close()
            await s.stop()

    @asyncTest
    async def test_noTurn(self):
        """Without C{[ice.turn]} the response has no C{iceServers}."""
        s = await Server().start()
        try:
            c, joined = await createAndJoin(s.url, conferenceID="plain-room")
            await c.close()
        finally:
            await s.stop()
        self.assertEqual(joined["status"], 200)
        self.assertNotIn("iceServers", joined)
