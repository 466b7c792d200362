"""
The rules of a room (L{ahoyconference.conference}), without I/O: sharing,
the video cap, mute and its events (protocol.md 4.4, 4.5, 4.10).
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from ahoyconference.conference import Conference, Member
from ahoyconference.interfaces import ClientInfo, ConferenceSettings, ProtocolError, Role


class Sink:
    """A member's sink that keeps what it was sent."""

    def __init__(self):
        self.sent: list[dict] = []

    def sendEncoded(self, data: bytes) -> None:
        self.sent.append(json.loads(data))

    def disconnect(self) -> None:
        pass


def room(maxVideoBitrate=None):
    conf = Conference(ConferenceSettings("r", "r", maxVideoBitrate=maxVideoBitrate), Clock(), 10)
    members = []
    for name, role in (("mod", Role.MODERATOR), ("spk", Role.SPEAKER)):
        m = Member(name, role, ClientInfo("127.0.0.1"), Sink())
        conf.add(m)
        members.append(m)
    for m in members:
        m.sink.sent.clear()
    return conf, members


class ShareTests(TestCase):

    def test_share(self):
        """Sharing a kind unmutes it unless a moderator muted it; stopped kinds come back."""
        conf, (mod, spk) = room()
        self.assertEqual(conf.share(spk, {"audio": True, "video": True}), [])
        self.assertEqual(spk.muted, {"audio": False, "video": False})
        conf.mute(mod, spk, {"video": True})
        self.assertEqual(conf.share(spk, {"audio": True, "video": False}), ["video"])
        conf.share(spk, {"audio": True, "video": True})
        self.assertTrue(spk.muted["video"])  # the moderator's mute sticks
        self.assertEqual(spk.sharing, {"audio": True, "video": True})

    def test_videoCap(self):
        self.assertEqual(room()[0].videoCap(800), 800)
        self.assertEqual(room(300)[0].videoCap(800), 300)
        self.assertEqual(room(300)[0].videoCap(200), 200)


class MuteTests(TestCase):

    def test_events(self):
        """
        A change of mute: one MEDIA_indication, then one MEDIA_event per kind
        that changed; no change: nothing at all.
        """
        conf, (mod, spk) = room()
        conf.mute(spk, spk, {"audio": False, "video": True})
        sent = [m["messageType"] + ":" + m.get("event", "") for m in mod.sink.sent]
        self.assertEqual(sent, ["MEDIA_indication:", "MEDIA_event:audio_unmute"])
        mod.sink.sent.clear()
        conf.mute(spk, spk, {"audio": False})
        self.assertEqual(mod.sink.sent, [])

    def test_forced(self):
        """A moderator's mute stops forwarding; the member cannot lift it (403)."""
        conf, (mod, spk) = room()
        self.assertEqual(conf.mute(mod, spk, {"audio": True}), [("audio", False)])
        self.assertRaises(ProtocolError, conf.mute, spk, spk, {"audio": False})
        self.assertEqual(conf.mute(mod, spk, {"audio": False}), [("audio", True)])

    def test_speaking(self):
        """Speaking is a MEDIA_event, never a MEDIA_indication, and only on a change."""
        conf, (mod, spk) = room()
        conf.setSpeaking(spk, True)
        conf.setSpeaking(spk, True)
        conf.setSpeaking(spk, False)
        self.assertEqual([(m["messageType"], m["event"]) for m in mod.sink.sent],
                         [("MEDIA_event", "start_speaking"), ("MEDIA_event", "stop_speaking")])


class MemberListTests(TestCase):
    """
    A join response's member list is kept between joins (a webinar's first
    minute is a thousand joins) and made again whenever a member's state
    changes: every joiner sees the room as it is.
    """

    def join(self, conf, name, role=Role.LISTENER):
        m = Member(name, role, ClientInfo("192.0.2.7"), Sink())
        return m, {d["name"]: d for d in json.loads(str(conf.add(m)["members"]))}

    def test_followsChanges(self):
        conf, (mod, spk) = room()
        _, listed = self.join(conf, "a")
        self.assertEqual(set(listed), {"mod", "spk"})
        self.assertEqual(listed["spk"]["audio"]["muted"], True)
        conf.share(spk, {"audio": True, "video": True})
        _, listed = self.join(conf, "b")
        self.assertEqual(set(listed), {"mod", "spk", "a"})
        self.assertEqual(listed["spk"]["audio"]["muted"], False)
        conf.setSpeaking(spk, True)
        _, listed = self.join(conf, "c")
        self.assertTrue(listed["spk"]["audio"]["speaking"])
        conf.mute(mod, spk, {"audio": True})
        _, listed = self.join(conf, "d")
        self.assertEqual(listed["spk"]["audio"], {"available": False, "muted": True,
                                                  "speaking": False})
        spk.available["video"] = True
        spk.touch()
        _, listed = self.join(conf, "e")
        self.assertTrue(listed["spk"]["video"]["available"])
        conf.remove(spk)
        _, listed = self.join(conf, "f")
        self.assertEqual(set(listed), {"mod", "a", "b", "c", "d", "e"})

    def test_addressesOnlyForModerators(self):
        """A moderator's list holds addresses, a listener's does not, whatever came first."""
        conf, _ = room()
        _, listed = self.join(conf, "l1")
        self.assertNotIn("ip", listed["mod"])
        _, listed = self.join(conf, "m2", Role.MODERATOR)
        self.assertEqual(listed["l1"]["ip"], "192.0.2.7")
        _, listed = self.join(conf, "l3")
        self.assertNotIn("ip", listed["m2"])
        self.assertEqual(set(listed), {"mod", "spk", "l1", "m2"})
