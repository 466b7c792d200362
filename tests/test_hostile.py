"""
Hostile input over the real socket (protocol.md 4.1): over a thousand
malformed or hostile messages, then the conference state must be exactly as
before and the server must still serve everyone.
"""

from __future__ import annotations

import asyncio
import json
import random

import websockets
from twisted.trial import unittest

from ahoyconference.config import Limits
from ahoyconference.messages import REQUESTS
from tests.helpers import Client, Server, asyncTest, createAndJoin, join, testConfig

KNOWN_STATUSES = {400, 403, 404, 409, 470, 486, 488, 501, 503}


def snapshot(service) -> dict:
    """Everything a client could observe of the conferences."""
    return {
        cid: {
            "description": conf.description,
            "locked": conf.locked,
            "members": sorted(
                (m.memberID, m.name, int(m.role), tuple(sorted(m.muted.items())),
                 tuple(sorted(m.forced.items()))) for m in conf.members.values()),
        }
        for cid, conf in service.conferences.items()
    }


def hostileFrames(rng: random.Random, memberID: str, count: int) -> list:
    """Malformed frames: junk, deep JSON, wrong types, unknown types, stray responses."""
    # (No 0: it is a valid flag, protocol.md 4.10, and a listener may announce a mute.)
    wrongValues = [None, True, False, -1, 2**63, 1.5, float("nan"), "", "x" * 3000, [],
                   {}, [[[]]], {"a": {"b": {}}}, "\u0000\ud7ff\uffff", "💥" * 100]
    frames: list = [
        b"\xff\xfe\x00" * 10, "", "{", "}", "null", "[]", "1e999999", "-" * 100,
        "[" * 100000 + "]" * 100000, '{"a":' * 5000 + "1" + "}" * 5000,
        '{"messageType": "CONFERENCE_CREATE_request", "transactionID": "t", "maxMember": '
        + "9" * 5000 + "}",
        json.dumps({"messageType": "CHAT_MESSAGE_request", "transactionID": "big",
                    "message": {"text": "x" * 300_000}}),
        '{"messageType": "CONFERENCE_KICK_request", "messageType": "CONFERENCE_LEAVE_request"}',
        json.dumps({"messageType": "SDP_response", "transactionID": memberID, "status": 200,
                    "sdp": "v=0"}),
        json.dumps({"messageType": "MEDIA_RECEIVE_response", "transactionID": "x",
                    "status": 200, "sdp": "v=0"}),
    ]
    types = list(REQUESTS) + ["FOO_request", "CONFERENCE_JOIN_indication", "ERROR_response", ""]
    while len(frames) < count:
        mtype = rng.choice(types)
        body: dict = {"messageType": rng.choice([mtype, mtype.lower(), 5, None])}
        if rng.random() < 0.8:
            body["transactionID"] = rng.choice([f"h{len(frames)}", 5, None, ["x"]])
        fields = list(REQUESTS.get(mtype, {})) + ["members", "message", "memberID"]
        for name in rng.sample(fields, k=min(len(fields), rng.randint(0, 4))):
            body[name] = rng.choice(wrongValues)
        if mtype == "CONFERENCE_JOIN_request":  # may target the room, always with a wrong password
            body["conferenceID"] = rng.choice(["room", "nope", 5])
            body["password"] = rng.choice(["wrong", 0, None])
        if mtype == "CONFERENCE_CREATE_request":
            body["conferenceID"] = rng.choice(["room", 5, "", None])  # 486 or 400, never new
        if mtype == "CONFERENCE_LEAVE_request":
            continue  # a valid leave would change the state on purpose
        frames.append(rng.choice([json.dumps(body, allow_nan=True),
                                  json.dumps(body)[: rng.randint(0, 40)]]))
    return frames


class HostileInputTests(unittest.TestCase):
    """1,200 hostile frames from a joined listener and an unjoined client."""

    @asyncTest
    async def test_hostileMessagesChangeNothing(self):
        server = await Server(config=testConfig(limits=Limits(
            max_message_bytes=1 << 20, max_chat_bytes=65536, join_rate=0, chat_rate=0,
            max_conferences_per_client=0, max_connections_per_ip=0, password_failures=0,
        ))).start()
        clients = []
        try:
            mod, _ = await createAndJoin(server.url, moderatorPassword="m", password="s",
                                         joinPassword="m")
            speaker, rs = await join(server.url, password="s")
            attacker, ra = await join(server.url, password="")  # a listener
            stranger = await Client.connect(server.url)
            clients += [mod, speaker, attacker, stranger]
            self.assertEqual(ra["status"], 200)
            await mod.quiet()
            await speaker.quiet()
            before = snapshot(server.service)

            rng = random.Random(20261125)
            frames = hostileFrames(rng, rs["memberID"], 1200)
            self.assertGreaterEqual(len(frames), 1000)
            for i, frame in enumerate(frames):
                target = attacker if i % 2 else stranger
                await target.sendRaw(frame)
            # A 10 MB frame, over the frame cap: that connection alone is closed.
            bomber = await Client.connect(server.url)
            clients.append(bomber)
            try:
                await bomber.sendRaw("x" * (10 * 1024 * 1024))
            except websockets.ConnectionClosed:
                pass  # the server cut it off mid-frame, as it should
            await asyncio.wait_for(bomber.closed, 10)
            # Every readable request got exactly one response with a known error status.
            marker = await attacker.request("CHAT_MESSAGE_request", message={"text": "done"})
            self.assertEqual(marker["status"], 200)
            await stranger.request("CONFERENCE_CREATE_request", conferenceID="room")
            for c in (attacker, stranger):
                statuses = {m.get("status") for m in c.received if "status" in m}
                self.assertTrue(statuses <= KNOWN_STATUSES, statuses)
                for m in c.received:
                    self.assertTrue(m["messageType"].endswith("_response") or
                                    m["messageType"].endswith("_indication"), m)
            self.assertEqual(snapshot(server.service), before)
            # The others saw nothing but the attacker's one real chat message.
            seen = [m["messageType"] for m in await speaker.quiet(0.3)]
            self.assertEqual(seen, ["CHAT_MESSAGE_indication"])
            # And the server still serves.
            r = await speaker.request("CHAT_MESSAGE_request", message={"text": "alive"})
            self.assertEqual(r["status"], 200)
            got = await mod.expect("CHAT_MESSAGE_indication", message={"text": "alive"})
            self.assertEqual(got["from"]["memberID"], rs["memberID"])
            newcomer, rn = await join(server.url, password="s")
            clients.append(newcomer)
            self.assertEqual(rn["status"], 200)
            self.assertNotIn(500, server.service.counters["errors"])
        finally:
            for c in clients:
                await c.close()
            await server.stop()
