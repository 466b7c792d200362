"""
Issue 14, over a real socket: every frame is answered even when its
C{messageType} or C{transactionID} holds a lone UTF-16 surrogate
(protocol.md 4.1), and neither conference passwords nor the page's cookies
and credentials reach a log line or a traceback.
"""

from __future__ import annotations

from ahoyconference.policy import PasswordPolicy
from tests.helpers import LOGLINES, Client, asyncTest, createAndJoin, join
from tests.test_api import APITestCase


def envelope(messageType: str, transactionID: str, extra: str = "") -> str:
    """A frame written by hand: JSON escapes as a client would send them."""
    return f'{{"messageType":"{messageType}","transactionID":"{transactionID}"{extra}}}'


class LoneSurrogateTests(APITestCase):
    """JSON may spell "\\ud800"; the answer gives it back the same way."""

    @asyncTest
    async def test_everyFrameAnswered(self):
        s = await self.server()
        alice, _ = await createAndJoin(s.url, "room", "alice")
        self.clients.append(alice)
        bob, _ = await join(s.url, "room", "bob")
        self.clients.append(bob)
        start = len(LOGLINES)
        lone = "\ud800"
        cases = [
            # (frame, expected messageType, transactionID, status)
            (envelope("CONFERENCE_JOIN_request", "\\ud800"), "CONFERENCE_JOIN_response", lone, 400),
            (envelope("CHAT_MESSAGE_request", "a\\udfffb", ',"message":{"text":"hi"}'),
             "CHAT_MESSAGE_response", "a\udfffb", 200),
            (envelope("X\\ud800_request", "t1"), "X\ud800_response", "t1", 501),
            (envelope("\\udc00", "t2"), "ERROR_response", "t2", 501),
            (envelope("\\ud800_request", "\\ud800"), "\ud800_response", lone, 501),
            (envelope("CHAT_MESSAGE_request", "t3", ',"message":{"text":"x\\ud800"}'),
             "CHAT_MESSAGE_response", "t3", 400),
            (envelope("MEDIA_MUTE_request", "t4", ',"memberID":"\\ud800"'),
             "MEDIA_MUTE_response", "t4", 400),
        ]
        for frame, rtype, tid, status in cases:
            await alice.sendRaw(frame)
            r = await alice.expect(rtype, transactionID=tid)
            self.assertEqual(r["status"], status, frame)
        # Only the one good chat reached bob.
        seen = [m for m in await bob.quiet(0.3) if m["messageType"] == "CHAT_MESSAGE_indication"]
        self.assertEqual([m["message"]["text"] for m in seen], ["hi"])
        logged = LOGLINES[start:]
        self.assertFalse([line for line in logged if "UnicodeEncodeError" in line
                          or "Unhandled error" in line], logged)
        # The refusals are counted (and logged at debug level, as any 501).
        self.assertEqual(s.service.counters["errors"][501], 3)
        for line in logged:
            line.encode("utf-8")
        r = await alice.request("CHAT_MESSAGE_request", message={"text": "still fine"})
        self.assertEqual(r["status"], 200)


COOKIE = "session=cookie-secret-4711"
BEARER = "Bearer bearer-secret-0815"


class RevealingPolicy(PasswordPolicy):
    """A buggy policy whose exception message holds the client and the settings."""

    def mayCreate(self, client, settings):
        if settings.conferenceID == "boom":
            raise RuntimeError(f"cannot decide for {client!r} on {settings!r}")
        return None


class SecretsTests(APITestCase):
    """Passwords, cookies and Authorization: never in a log line or traceback."""

    @asyncTest
    async def test_noSecretInLogsOrTracebacks(self):
        s = await self.server(policy=RevealingPolicy())
        start = len(LOGLINES)
        client = await Client.connect(s.url, additional_headers={
            "Cookie": COOKIE, "Authorization": BEARER, "X-Other": "kept"})
        self.clients.append(client)
        r = await client.request("CONFERENCE_CREATE_request", conferenceID="boom",
                                 password="speaker-pass-1", moderatorPassword="moderator-pass-2",
                                 listenerPassword="listener-pass-3")
        self.assertEqual(r["status"], 503)  # the policy failed: logged with its traceback
        r = await client.request("CONFERENCE_CREATE_request", conferenceID="fine",
                                 password="speaker-pass-1", moderatorPassword="moderator-pass-2")
        self.assertEqual(r["status"], 200)
        logged = "\n".join(LOGLINES[start:])
        self.assertIn("RuntimeError: cannot decide for ClientInfo(", logged)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        session = next(iter(s.service.sessions))
        stored = repr(session.client) + repr(s.service.conferences["fine"].settings) + str(
            s.service.conferences["fine"].settings)
        for secret in ("cookie-secret-4711", "bearer-secret-0815", "speaker-pass-1",
                       "moderator-pass-2", "listener-pass-3"):
            self.assertNotIn(secret, logged)
            self.assertNotIn(secret, stored)
        self.assertEqual(session.client.headers.get("x-other"), "kept")
        self.assertNotIn("cookie", session.client.headers)
        self.assertNotIn("authorization", session.client.headers)
        self.assertIn("password=<set>", stored)
        self.assertIn("listenerPassword=<none>", stored)
