# -*- test-case-name: tests.test_rtcp -*-
"""
Tests for L{ahoyconference.media.rtcp} (the REMB policy and the NACK budget),
L{ahoyconference.media.peers.SubscriptionTable} (subscriptions indexed by
publisher) and L{ahoyconference.media.ice.RemoteNetworks}, without sockets.
The same rules over real UDP: L{tests.test_packet_path}.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from ahoyconference.config import IceSettings
from ahoyconference.media import ice
from ahoyconference.media.nackbudget import (
    NACK_BURST,
    NACK_FLOOR,
    NACK_REPEAT_WINDOW,
    NACK_SHARE,
    RetransmitBudget,
)
from ahoyconference.media.peers import Publisher, Subscription, SubscriptionTable
from ahoyconference.media.rtcp import REMB_FLOOR, RtcpPolicy
from ahoyconference.media.simulcast import LOWER_LAYERS_KBPS


def subscription(subscriberID: str, publisherID: str, remb: int | None = None,
                 when: float = 0.0) -> Subscription:
    """A subscription without a peer connection, with a video output and a REMB."""
    sub = Subscription(None, subscriberID, publisherID, ("video",))
    sub.outs["video"] = object()
    sub.remb, sub.rembTime = remb, when
    return sub


class RembPolicyTests(TestCase):
    """L{RtcpPolicy.bitrateFor}: cap, floor, outliers, freshness."""

    def setUp(self):
        self.clock = Clock()
        self.table = SubscriptionTable()
        pub = Publisher("pub")
        pub.cap = 1000
        self.streams = {}
        self.policy = RtcpPolicy(self.clock, {"pub": pub}, self.streams, self.table.of, None,
                                 lambda reason: None)

    def add(self, remb: int | None):
        sub = subscription(f"s{len(self.table)}", "pub", remb, self.clock.seconds())
        self.table[(sub.subscriberID, "pub")] = sub
        return sub

    def test_simulcast(self):
        """
        A simulcast publisher: the cap plus the lower layers' share, unless
        nobody asked for its top layer: then what the wanted ones need.
        """

        class Layers:
            layers = ["l", "m", "h"]
            top = 2
            measured = 300_000

            def wantedQuality(self):
                return self.top

            def budget(self, top):
                return self.measured

        layers = Layers()
        self.streams[("pub", "video")] = type("Stream", (), {"layers": layers})()
        self.add(200_000)  # the subscribers' estimates do not matter
        full = 1_000_000 + LOWER_LAYERS_KBPS * 1000
        self.assertEqual(self.policy.bitrateFor("pub"), full)
        layers.top = 0
        self.assertEqual(self.policy.bitrateFor("pub"), 300_000)
        layers.measured = None  # not measured yet
        self.assertEqual(self.policy.bitrateFor("pub"), full)
        layers.measured, layers.top = 10_000_000, 1
        self.assertEqual(self.policy.bitrateFor("pub"), full)
        layers.top = -1  # no subscriber
        self.assertEqual(self.policy.bitrateFor("pub"), full)

    def test_capWithoutEstimates(self):
        """No estimates: the cap."""
        self.assertEqual(self.policy.bitrateFor("pub"), 1_000_000)
        self.add(None)
        self.assertEqual(self.policy.bitrateFor("pub"), 1_000_000)

    def test_floor(self):
        """One subscriber at 10 kbit/s cannot take the room below REMB_FLOOR."""
        self.add(800_000)
        self.add(10_000)
        self.assertEqual(self.policy.bitrateFor("pub"), REMB_FLOOR)
        self.add(400_000)
        self.assertEqual(self.policy.bitrateFor("pub"), REMB_FLOOR)

    def test_lowestTenthIgnored(self):
        """From five estimates on, the lowest tenth (at least one) is ignored."""
        for remb in (900_000, 800_000, 700_000, 600_000):
            self.add(remb)
        liar = self.add(200_000)
        self.assertEqual(self.policy.bitrateFor("pub"), 600_000)
        for _ in range(5):
            self.add(950_000)
        self.assertEqual(self.policy.bitrateFor("pub"), 600_000)  # 10 estimates: 1 ignored
        liar.remb = 2_000_000
        self.assertEqual(self.policy.bitrateFor("pub"), 700_000)

    def test_staleIgnored(self):
        """Estimates older than REMB_FRESH seconds do not count."""
        self.add(300_000)
        self.clock.advance(6)
        self.assertEqual(self.policy.bitrateFor("pub"), 1_000_000)

    def test_otherPublishersIgnored(self):
        """Only the publisher's own subscriptions count."""
        other = subscription("x", "other", 10_000)
        self.table[("x", "other")] = other
        self.add(500_000)
        self.assertEqual(self.policy.bitrateFor("pub"), 500_000)


class RetransmitBudgetTests(TestCase):
    """L{RetransmitBudget}: share, floor, burst and repeats."""

    def test_bound(self):
        """
        However many NACKs, the bytes resent over T seconds stay under
        NACK_BURST + NACK_FLOOR * T + NACK_SHARE * received.
        """
        budget = RetransmitBudget(0.0, 0)
        spent, now, received = 0, 0.0, 0
        seq = 0
        for _ in range(1000):  # 10 s of a 1 Mbit/s stream, NACKed 100 times a second
            now += 0.01
            received += 1250
            budget.refill(now, received)
            for _ in range(100):
                seq = (seq + 1) & 0xFFFF
                if budget.mayResend(now, seq, 1200):
                    spent += 1200
        bound = NACK_BURST + NACK_FLOOR * now + NACK_SHARE * received
        self.assertLessEqual(spent, bound)
        self.assertGreater(spent, 0.9 * (NACK_FLOOR * now + NACK_SHARE * received))
        self.assertGreater(budget.refused["budget"], 90_000)

    def test_repeat(self):
        """The same sequence number again within the window: refused; after it: resent."""
        budget = RetransmitBudget(0.0, 0)
        self.assertTrue(budget.mayResend(0.0, 7, 1000))
        self.assertFalse(budget.mayResend(NACK_REPEAT_WINDOW / 2, 7, 1000))
        self.assertEqual(budget.refused["repeat"], 1)
        self.assertTrue(budget.mayResend(NACK_REPEAT_WINDOW * 1.5, 7, 1000))
        self.assertTrue(budget.mayResend(0.0, 7 + 1024, 1000))  # same slot, other number

    def test_burstCapped(self):
        """A quiet minute saves up no more than NACK_BURST."""
        budget = RetransmitBudget(0.0, 0)
        budget.refill(60.0, 10_000_000)
        self.assertEqual(budget.tokens, NACK_BURST)


class SubscriptionTableTests(TestCase):
    """L{SubscriptionTable}: the two indexes follow the table."""

    def check(self, table):
        byPublisher = {}
        for (_, publisherID), sub in table.items():
            byPublisher.setdefault(publisherID, set()).add(sub)
        for publisherID, subs in byPublisher.items():
            self.assertEqual(set(table.of(publisherID)), subs)
        members = {m for key in table for m in key}
        for member in members:
            self.assertEqual(set(table.keysOf(member)), {k for k in table if member in k})

    def test_indexes(self):
        """Add, replace, delete, pop and clear keep both indexes right."""
        table = SubscriptionTable()
        subs = {}
        for a in range(5):
            for b in range(5):
                if a != b:
                    subs[(f"m{a}", f"m{b}")] = table[(f"m{a}", f"m{b}")] = subscription(
                        f"m{a}", f"m{b}")
        self.check(table)
        table[("m0", "m1")] = subscription("m0", "m1")
        self.check(table)
        del table[("m1", "m0")]
        self.assertIs(table.pop(("m2", "m3")), subs[("m2", "m3")])
        self.assertIsNone(table.pop(("m2", "m3"), None))
        self.assertRaises(KeyError, table.pop, ("m2", "m3"))
        self.check(table)
        for key in table.keysOf("m4"):
            del table[key]
        self.assertEqual(table.of("m4"), [])
        self.assertEqual(table.keysOf("m4"), [])
        self.check(table)
        table.clear()
        self.assertEqual((len(table), table.of("m1"), table.keysOf("m1")), (0, [], []))

    def test_costPerPublisher(self):
        """
        Through the engine: the REMB of every publisher and the departure of
        a member read only the subscriptions concerned.  With 100 publishers
        of 40 subscribers each, a round of REMBs reads each subscription once
        (a scan of the table per publisher would read 400,000), and a member
        leaving reads only its own.
        """
        from ahoyconference.media.engine import AiortcMediaEngine
        from tests.test_media_engine import RecordingListener

        reads = []

        class Counted(Subscription):
            @property
            def publisherID(self):
                reads.append(1)
                return self._publisherID

            @publisherID.setter
            def publisherID(self, value):
                self._publisherID = value

        engine = AiortcMediaEngine(RecordingListener(), IceSettings(), Clock())
        for p in range(100):
            for s in range(40):
                sub = Counted(None, f"s{s}", f"p{p}", ("video",))
                sub.outs["video"] = object()
                sub.remb = 500_000
                engine._subscriptions[(f"s{s}", f"p{p}")] = sub
        del reads[:]
        for p in range(100):
            self.assertEqual(engine._rtcp.bitrateFor(f"p{p}"), 500_000)
        self.assertLessEqual(len(reads), 100 * 40)
        del reads[:]
        self.assertEqual(len(engine._subscriptions.keysOf("p7")), 40)
        self.assertEqual(reads, [])


class RemoteNetworksTests(TestCase):
    """L{ice.RemoteNetworks}: C{[ice] allowed_remote_networks}."""

    LAN = [ipaddress.ip_network("192.168.1.0/24"), ipaddress.ip_network("fd00:1::/64")]

    def networks(self, *entries, hosts=()):
        return ice.RemoteNetworks(IceSettings(host_addresses=hosts,
                                              allowed_remote_networks=entries), local=self.LAN)

    def test_default(self):
        """Public addresses and our own subnets; not other private networks, nor names."""
        allowed = self.networks(*ice.DEFAULT_ALLOWED).allowed
        for address in ("8.8.8.8", "2001:4860::1", "192.168.1.77", "fd00:1::9",
                        "::ffff:8.8.8.8"):
            self.assertTrue(allowed(address), address)
        for address in ("10.0.0.1", "192.168.2.1", "172.16.0.1", "fd00:2::1", "169.254.1.1",
                        "100.64.0.1", "192.0.2.1", "127.0.0.1", "host.local", "", "::ffff:10.0.0.1"):
            self.assertFalse(allowed(address), address)

    def test_cidr(self):
        """Configured networks; without "public", the Internet is out."""
        allowed = self.networks("10.0.0.0/8").allowed
        self.assertTrue(allowed("10.20.30.40"))
        self.assertFalse(allowed("8.8.8.8"))
        self.assertFalse(allowed("192.168.1.77"))

    def test_bad(self):
        """A typo is a ValueError naming the entry."""
        e = self.assertRaises(ValueError, ice.parseNetworks, ["public", "10.0.0.0/33"])
        self.assertIn("10.0.0.0/33", str(e))

    def test_localFromInterfaces(self):
        """C{"local"} with loopback host addresses is loopback's network (the tests' case)."""
        allowed = ice.RemoteNetworks(IceSettings(host_addresses=("127.0.0.1",))).allowed
        self.assertTrue(allowed("127.0.0.1"))
        self.assertFalse(allowed("10.0.0.1"))
        networks = ice.interfaceNetworks(("127.0.0.1",))
        self.assertIn(ipaddress.ip_network("127.0.0.0/8"), networks)
