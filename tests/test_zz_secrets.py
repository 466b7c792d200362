"""
No secret leaks: every frame the suite's clients received and every log line
of the test process are searched for every password and token the suite
sent (of six characters or more: shorter ones are common substrings) —
the invite tokens of tests.test_plugins among them, as join passwords.  Named
C{zz} so that trial runs it after the other modules of a full run; it also
runs a scenario of its own, so that it is never vacuous.
"""

from __future__ import annotations

from twisted.trial import unittest

from tests import helpers
from tests.helpers import Server, asyncTest, createAndJoin, join


class SecretsTests(unittest.TestCase):
    """Passwords and tokens never appear in responses, indications or logs."""

    @asyncTest
    async def test_noSecretAnywhere(self):
        s = await Server().start()
        clients = []
        try:
            mod, _ = await createAndJoin(
                s.url, conferenceID="secret-room", moderatorPassword="mod-pw-Zq81x",
                password="speak-pw-Yt55c", listenerPassword="listen-pw-Kp09a",
                joinPassword="mod-pw-Zq81x")
            clients.append(mod)
            for password in ("speak-pw-Yt55c", "listen-pw-Kp09a", "wrong-pw-Hh33b"):
                c, r = await join(s.url, conferenceID="secret-room", password=password)
                clients.append(c)
            await mod.request("CONFERENCE_DESCRIPTION_request", description="d")
            await mod.request("CHAT_MESSAGE_request", message={"text": "hello"})
        finally:
            for c in clients:
                await c.close()
            await s.stop()
        secrets = set(helpers.SECRETS)
        self.assertTrue({"mod-pw-Zq81x", "speak-pw-Yt55c", "listen-pw-Kp09a",
                         "wrong-pw-Hh33b"} <= secrets)
        haystacks = {"a frame": helpers.TRANSCRIPT, "a log line": helpers.LOGLINES}
        self.assertGreater(len(helpers.TRANSCRIPT), 5)
        self.assertGreater(len(helpers.LOGLINES), 5)
        for where, texts in haystacks.items():
            blob = "\n".join(texts)
            for secret in secrets:
                self.assertNotIn(secret, blob, f"{secret!r} appeared in {where}")
